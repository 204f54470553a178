//! Post-signing checks: every certificate a provider returns is parsed again
//! and its chain verified with rustls-webpki before anyone sees it.

use crate::{ProviderError, SignedLeaf};
use meshca_core::SpiffeId;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

/// The signature algorithms chains are verified with: aws-lc-rs's, named
/// one by one. `webpki::ALL_VERIFICATION_ALGS` lists ring's first whenever
/// another crate in the build enables webpki's `ring` feature (reqwest's
/// rustls does), and ring's P-256 verification then ran on every leaf.
pub static VERIFICATION_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = {
    use webpki::aws_lc_rs as a;
    &[
        a::ECDSA_P256_SHA256,
        a::ECDSA_P256_SHA384,
        a::ECDSA_P256_SHA512,
        a::ECDSA_P384_SHA256,
        a::ECDSA_P384_SHA384,
        a::ECDSA_P384_SHA512,
        a::ECDSA_P521_SHA256,
        a::ECDSA_P521_SHA384,
        a::ECDSA_P521_SHA512,
        a::ED25519,
        a::RSA_PKCS1_2048_8192_SHA256,
        a::RSA_PKCS1_2048_8192_SHA384,
        a::RSA_PKCS1_2048_8192_SHA512,
        a::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
        a::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
        a::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
        a::RSA_PKCS1_3072_8192_SHA384,
        a::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        a::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        a::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    ]
};

fn unix_time(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(t.unix_timestamp()).unwrap_or(0),
    ))
}

/// Verifies that `leaf` chains through `intermediates` to one of `roots` at
/// `at` (for client authentication; see the comment on server auth).
pub fn verify_chain(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    roots: &[Vec<u8>],
    at: OffsetDateTime,
) -> Result<(), ProviderError> {
    let root_ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|r| CertificateDer::from(r.as_slice()))
        .collect();
    let anchors = root_ders
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map_err(ProviderError::internal))
        .collect::<Result<Vec<_>, _>>()?;
    let inters: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf_der = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(ProviderError::internal)?;
    // One path build: the leaf's serverAuth+clientAuth EKUs are asserted by
    // the SVID profile check, and nothing else in path validation depends
    // on the usage, so verifying for both would only repeat the signatures.
    ee.verify_for_usage(
        VERIFICATION_ALGS,
        &anchors,
        &inters,
        unix_time(at),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| match e {
        // The CA's own name constraints exclude a requested name: the
        // request is at fault, not the CA.
        webpki::Error::NameConstraintViolation => ProviderError::InvalidInput(
            "a name in the request is outside the CA's name constraints".into(),
        ),
        e => ProviderError::Internal(format!("issued chain does not verify: {e}")),
    })?;
    Ok(())
}

/// The full self-check of a freshly issued leaf: SVID profile, then chain.
pub fn check_leaf(
    signed: &SignedLeaf,
    expected: &SpiffeId,
    issuer_key_id: &[u8],
    intermediates: &[Vec<u8>],
    roots: &[Vec<u8>],
    at: OffsetDateTime,
) -> Result<(), ProviderError> {
    meshca_core::leaf::check_issued_leaf(&signed.der, expected, issuer_key_id, &signed.serial)
        .map_err(ProviderError::internal)?;
    verify_chain(&signed.der, intermediates, roots, at)
}

/// The check of an intermediate CA a provider signed (its own signing
/// intermediate, or a secondary datacenter's): a CA with pathLen 0 and
/// exactly the trust domain's URI SAN, carrying `spki_der`, signed by
/// `root_der` and not outliving it.
pub fn check_signed_intermediate(
    der: &[u8],
    spki_der: &[u8],
    root_der: &[u8],
    trust_domain: &meshca_core::TrustDomain,
) -> Result<(), ProviderError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let bad = |m: &str| ProviderError::Internal(format!("the signed intermediate {m}"));
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| bad(&format!("does not parse: {e}")))?;
    let (_, root) =
        X509Certificate::from_der(root_der).map_err(|e| bad(&format!("has no root: {e}")))?;
    match cert.basic_constraints().ok().flatten() {
        Some(bc) if bc.value.ca && bc.value.path_len_constraint == Some(0) => {}
        _ => return Err(bad("is not a CA with pathLen 0")),
    }
    let uris = meshca_core::x509::uri_sans(&cert).map_err(|e| bad(&e))?;
    if uris != [trust_domain.ca_uri()] {
        return Err(bad("does not carry exactly the trust domain's URI SAN"));
    }
    if cert.public_key().raw != spki_der {
        return Err(bad("carries another key than requested"));
    }
    cert.verify_signature(Some(root.public_key()))
        .map_err(|e| bad(&format!("is not signed by the root: {e}")))?;
    if cert.validity().not_after > root.validity().not_after {
        return Err(bad("outlives the root"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::request;
    use crate::{BuiltinProvider, CaProvider};
    use meshca_core::rotation::first_cert_der;
    use meshca_core::x509::cert_facts;
    use meshca_core::KeySpec;

    #[tokio::test]
    async fn a_signed_intermediate_must_be_a_path_len_0_ca_with_the_key_asked_under_the_root() {
        let req = request(KeySpec::EcP256);
        let p = BuiltinProvider::new();
        let (m, other) = (
            p.generate_ca(&req).await.unwrap(),
            p.generate_ca(&req).await.unwrap(),
        );
        let der = |pem: &str| first_cert_der(pem).unwrap();
        let (int, root) = (der(&m.signing_pem), der(&m.root_pem));
        let spki = cert_facts(&int).unwrap().spki_der;
        let td = &req.trust_domain;
        check_signed_intermediate(&int, &spki, &root, td).unwrap();
        let other_spki = cert_facts(&der(&other.signing_pem)).unwrap().spki_der;
        for (what, result, needle) in [
            (
                "another key",
                check_signed_intermediate(&int, &other_spki, &root, td),
                "another key",
            ),
            (
                "another root",
                check_signed_intermediate(&int, &spki, &der(&other.root_pem), td),
                "not signed by the root",
            ),
            (
                "a root (no pathLen)",
                check_signed_intermediate(&root, &spki, &root, td),
                "pathLen 0",
            ),
            (
                "another trust domain",
                check_signed_intermediate(
                    &int,
                    &spki,
                    &root,
                    &meshca_core::TrustDomain::for_cluster(&uuid::Uuid::from_u128(9)),
                ),
                "URI SAN",
            ),
        ] {
            let err = result.unwrap_err().to_string();
            assert!(err.contains(needle), "{what}: {err}");
        }
    }
}
