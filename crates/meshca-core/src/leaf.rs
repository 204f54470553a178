//! Leaf certificate rules: validity window, renewal point, and the check every
//! freshly signed leaf passes before it leaves the CA.

use crate::duration::GoDuration;
use crate::serial::Serial;
use crate::spiffe::SpiffeId;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// How far NotBefore is back-dated, to absorb clock skew between peers.
pub const BACKDATE: Duration = Duration::minutes(1);

/// The validity window of a leaf issued at `now`: NotBefore = now − 1 min,
/// NotAfter = NotBefore + ttl, never past the issuer's NotAfter.
pub fn leaf_validity(
    now: OffsetDateTime,
    ttl: GoDuration,
    issuer_not_after: OffsetDateTime,
) -> (OffsetDateTime, OffsetDateTime) {
    let not_before = now - BACKDATE;
    let not_after = std::cmp::min(not_before + ttl.as_time(), issuer_not_after);
    (not_before, not_after)
}

/// When a holder should fetch a new leaf: `fraction` of the way through its
/// lifetime. Callers draw `fraction` uniformly from [0.6, 0.9] so that a fleet
/// spreads its renewals instead of arriving at once.
pub fn renewal_point(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    fraction: f64,
) -> OffsetDateTime {
    let fraction = fraction.clamp(0.0, 1.0);
    let life = not_after - not_before;
    not_before + life * fraction
}

/// The lower and upper bound of the renewal fraction (60–90%, as Consul's agent).
pub const RENEW_FRACTION: (f64, f64) = (0.6, 0.9);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("issued leaf violates the SVID profile: {0}")]
pub struct LeafProfileError(pub String);

fn fail<T>(msg: impl Into<String>) -> Result<T, LeafProfileError> {
    Err(LeafProfileError(msg.into()))
}

/// Re-reads a leaf the CA just signed and checks it against the SVID profile:
/// exactly one URI SAN equal to `expected`, CA:false, digitalSignature,
/// serverAuth+clientAuth, no keyCertSign, AKID = `issuer_key_id`, and a
/// validity window inside the issuer's. This is a self-check against CA bugs,
/// not input validation.
///
/// The serial is checked here too (it must be the one the provider
/// reported), so that a leaf is parsed once on the hot path.
pub fn check_issued_leaf(
    der: &[u8],
    expected: &SpiffeId,
    issuer_key_id: &[u8],
    reported_serial: &Serial,
) -> Result<(), LeafProfileError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| LeafProfileError(e.to_string()))?;
    if !rest.is_empty() {
        return fail("trailing data");
    }
    if Serial::from_bytes(cert.raw_serial()).ok().as_ref() != Some(reported_serial) {
        return fail(format!(
            "the provider reported serial {reported_serial} for a certificate with another serial"
        ));
    }
    if cert.is_ca() {
        return fail("leaf is a CA");
    }
    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .map_err(|e| LeafProfileError(e.to_string()))?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !matches!(uris[..], [only] if expected.is_uri(only)) {
        return fail(format!("URI SANs {uris:?}, expected [{expected}]"));
    }
    match cert
        .key_usage()
        .map_err(|e| LeafProfileError(e.to_string()))?
    {
        Some(ku) if ku.value.digital_signature() && !ku.value.key_cert_sign() => {}
        _ => return fail("key usage must include digitalSignature and not keyCertSign"),
    }
    match cert
        .extended_key_usage()
        .map_err(|e| LeafProfileError(e.to_string()))?
    {
        Some(eku) if eku.value.server_auth && eku.value.client_auth => {}
        _ => return fail("extended key usage must be serverAuth and clientAuth"),
    }
    let akid = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        });
    if akid != Some(issuer_key_id) {
        return fail("authority key identifier does not name the issuer");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn validity_is_backdated_and_capped_by_the_issuer() {
        let now = datetime!(2030-01-01 12:00 UTC);
        let far = datetime!(2040-01-01 00:00 UTC);
        let (nb, na) = leaf_validity(now, GoDuration::from_hours(72), far);
        assert_eq!(nb, datetime!(2030-01-01 11:59 UTC));
        assert_eq!(na, nb + Duration::hours(72));
        let soon = datetime!(2030-01-02 00:00 UTC);
        let (_, capped) = leaf_validity(now, GoDuration::from_hours(72), soon);
        assert_eq!(capped, soon);
    }

    #[test]
    fn renewal_point_is_the_fraction_of_the_lifetime() {
        let nb = datetime!(2030-01-01 00:00 UTC);
        let na = nb + Duration::hours(100);
        assert_eq!(renewal_point(nb, na, 0.6), nb + Duration::hours(60));
        assert_eq!(renewal_point(nb, na, 0.9), nb + Duration::hours(90));
        assert_eq!(renewal_point(nb, na, 7.0), na);
    }

    #[test]
    fn garbage_is_not_a_valid_leaf() {
        let td = crate::spiffe::TrustDomain::for_cluster(&uuid::Uuid::nil());
        let id = SpiffeId::server(&td, "dc1").expect("valid id");
        assert!(check_issued_leaf(
            b"\x30\x03\x02\x01\x01",
            &id,
            b"k",
            &Serial::from_bytes(&[1]).unwrap()
        )
        .is_err());
    }
}
