//! Post-signing checks: every certificate a provider returns is parsed again
//! and its chain verified with rustls-webpki before anyone sees it.

use crate::{ProviderError, SignedLeaf};
use aws_lc_rs::signature::ParsedPublicKey;
use meshca_core::SpiffeId;
use rustls_pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, SignatureVerificationAlgorithm,
    TrustAnchor, UnixTime,
};
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

/// The key that signs the leaves, parsed once, for the self-check of each
/// leaf it signs: through webpki's own algorithms aws-lc decoded the point
/// and checked it on the curve again for every leaf (parsing it once saved
/// 13 k instructions of a /sign's 2 000 k). It serves the signature algorithm
/// the CA signs leaves with for its key type; any other key or algorithm
/// goes to webpki's.
pub(crate) struct SignerKey {
    webpki: &'static dyn SignatureVerificationAlgorithm,
    subject_public_key: Vec<u8>,
    parsed: ParsedPublicKey,
}

impl SignerKey {
    /// For the `subjectPublicKey` bits of the signing certificate; `None`
    /// for a key type the CA does not sign leaves with.
    pub(crate) fn new(subject_public_key: &[u8]) -> Option<Self> {
        use aws_lc_rs::signature as aws;
        use webpki::aws_lc_rs as w;
        let kinds: [(
            &'static dyn SignatureVerificationAlgorithm,
            &'static dyn aws::VerificationAlgorithm,
        ); 3] = [
            (w::ECDSA_P256_SHA256, &aws::ECDSA_P256_SHA256_ASN1),
            (w::ECDSA_P384_SHA384, &aws::ECDSA_P384_SHA384_ASN1),
            (
                w::RSA_PKCS1_2048_8192_SHA256,
                &aws::RSA_PKCS1_2048_8192_SHA256,
            ),
        ];
        // A key parses for its own type only.
        kinds.into_iter().find_map(|(webpki, aws)| {
            let parsed = ParsedPublicKey::new(aws, subject_public_key).ok()?;
            Some(Self {
                webpki,
                subject_public_key: subject_public_key.to_vec(),
                parsed,
            })
        })
    }
}

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerKey")
            .field("webpki", &self.webpki)
            .finish_non_exhaustive()
    }
}

impl SignatureVerificationAlgorithm for SignerKey {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        if public_key == self.subject_public_key {
            self.parsed
                .verify_sig(message, signature)
                .map_err(|_| InvalidSignature)
        } else {
            self.webpki.verify_signature(public_key, message, signature)
        }
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.webpki.public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.webpki.signature_alg_id()
    }

    fn fips(&self) -> bool {
        self.webpki.fips()
    }
}

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
    verify_chain_with(VERIFICATION_ALGS, leaf, intermediates, roots, at)
}

/// [`verify_chain`] with the signature algorithms `algs`, in the order
/// webpki tries them.
fn verify_chain_with(
    algs: &[&dyn SignatureVerificationAlgorithm],
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    roots: &[Vec<u8>],
    at: OffsetDateTime,
) -> Result<(), ProviderError> {
    let anchors = roots
        .iter()
        .map(|r| trust_anchor(r))
        .collect::<Result<Vec<_>, _>>()?;
    verify_to_anchors(algs, leaf, intermediates, &anchors, at)
}

/// The trust anchor a root certificate makes, kept apart from its DER.
pub(crate) fn trust_anchor(root_der: &[u8]) -> Result<TrustAnchor<'static>, ProviderError> {
    webpki::anchor_from_trusted_cert(&CertificateDer::from(root_der))
        .map(|a| a.to_owned())
        .map_err(ProviderError::internal)
}

fn verify_to_anchors(
    algs: &[&dyn SignatureVerificationAlgorithm],
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    anchors: &[TrustAnchor<'_>],
    at: OffsetDateTime,
) -> Result<(), ProviderError> {
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
        algs,
        anchors,
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

/// The full self-check of a freshly issued leaf: SVID profile, then chain,
/// with the issuer's key already parsed when there is one and the trust
/// anchor made once, when the signer was published.
pub(crate) fn check_leaf(
    signed: &SignedLeaf,
    expected: &SpiffeId,
    issuer_key_id: &[u8],
    issuer_key: Option<&SignerKey>,
    intermediates: &[Vec<u8>],
    anchors: &[TrustAnchor<'_>],
    at: OffsetDateTime,
) -> Result<(), ProviderError> {
    meshca_core::leaf::check_issued_leaf(&signed.der, expected, issuer_key_id, &signed.serial)
        .map_err(ProviderError::internal)?;
    let mut algs: Vec<&dyn SignatureVerificationAlgorithm> =
        Vec::with_capacity(VERIFICATION_ALGS.len() + 1);
    algs.extend(issuer_key.map(|k| k as &dyn SignatureVerificationAlgorithm));
    algs.extend_from_slice(VERIFICATION_ALGS);
    verify_to_anchors(&algs, &signed.der, intermediates, anchors, at)
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

    /// The root's key, and what it signed: the signing certificate's TBS
    /// and signature.
    async fn root_key_and_signed(spec: KeySpec) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let m = BuiltinProvider::new()
            .generate_ca(&request(spec))
            .await
            .unwrap();
        let (root, signing) = (
            first_cert_der(&m.root_pem).unwrap(),
            first_cert_der(&m.signing_pem).unwrap(),
        );
        let (_, root) = X509Certificate::from_der(&root).unwrap();
        let (_, signing) = X509Certificate::from_der(&signing).unwrap();
        (
            root.public_key().subject_public_key.data.to_vec(),
            signing.tbs_certificate.as_ref().to_vec(),
            signing.signature_value.data.to_vec(),
        )
    }

    #[tokio::test]
    async fn a_signer_key_parsed_once_verifies_as_webpki_does() {
        for spec in [KeySpec::EcP256, KeySpec::EcP384, KeySpec::Rsa2048] {
            let (key, tbs, sig) = root_key_and_signed(spec).await;
            let signer = SignerKey::new(&key).unwrap_or_else(|| panic!("{spec:?}: no signer key"));
            signer.verify_signature(&key, &tbs, &sig).unwrap();
            let mut altered = tbs.clone();
            altered[tbs.len() / 2] ^= 1;
            assert!(
                signer.verify_signature(&key, &altered, &sig).is_err(),
                "{spec:?}"
            );

            // Another key of the same type goes to webpki's algorithm.
            let (other_key, other_tbs, other_sig) = root_key_and_signed(spec).await;
            signer
                .verify_signature(&other_key, &other_tbs, &other_sig)
                .unwrap();
            assert!(
                signer.verify_signature(&other_key, &tbs, &sig).is_err(),
                "{spec:?}"
            );
        }
        assert!(SignerKey::new(b"not a key").is_none());
    }

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
