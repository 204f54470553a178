//! Post-signing checks: every certificate a provider returns is parsed again
//! and its chain verified with rustls-webpki before anyone sees it.

use crate::ProviderError;
use meshca_core::SpiffeId;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

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
        webpki::ALL_VERIFICATION_ALGS,
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
    leaf: &[u8],
    expected: &SpiffeId,
    issuer_key_id: &[u8],
    intermediates: &[Vec<u8>],
    roots: &[Vec<u8>],
    at: OffsetDateTime,
) -> Result<(), ProviderError> {
    meshca_core::leaf::check_issued_leaf(leaf, expected, issuer_key_id)
        .map_err(ProviderError::internal)?;
    verify_chain(leaf, intermediates, roots, at)
}
