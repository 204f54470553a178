//! Small X.509 helpers shared by the providers and the server: key
//! identifiers, colon-hex formatting, PEM encoding and certificate IDs.

use aws_lc_rs::digest;
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

/// Lower-case colon-separated hex (`31:6c:06:…`), the form Consul uses for
/// IDs, key IDs and serial numbers.
pub fn colon_hex(bytes: &[u8]) -> String {
    // One allocation: serials and key IDs are written several times for
    // every leaf (answer, audit line, journal).
    let mut text = String::with_capacity(bytes.len() * 3);
    let mut pair = [0u8; 2];
    for (i, byte) in bytes.iter().enumerate() {
        if i > 0 {
            text.push(':');
        }
        hex::encode_to_slice([*byte], &mut pair).expect("two hex digits fit two bytes");
        text.extend(pair.map(char::from));
    }
    text
}

/// SubjectKeyId as meshca computes it: SHA-256 of the DER SubjectPublicKeyInfo.
pub fn key_id(spki_der: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, spki_der).as_ref().to_vec()
}

/// A root's `ID`: SHA-1 of the certificate DER in colon-hex (Consul's choice;
/// a fingerprint, not a security boundary).
pub fn cert_id(cert_der: &[u8]) -> String {
    colon_hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der).as_ref())
}

/// PEM-encodes one certificate, ending in a newline.
pub fn cert_pem(der: &[u8]) -> String {
    pem_block("CERTIFICATE", der)
}

/// PEM-encodes a PKCS#8 private key (`PRIVATE KEY`), ending in a newline.
pub fn private_key_pem(pkcs8_der: &[u8]) -> String {
    pem_block("PRIVATE KEY", pkcs8_der)
}

/// The SubjectPublicKeyInfo (DER) of a P-256 public key given as its SEC1
/// point, which must be on the curve.
pub fn p256_spki_der(sec1_point: &[u8]) -> Result<Vec<u8>, String> {
    use p256::pkcs8::EncodePublicKey as _;
    let key = p256::PublicKey::from_sec1_bytes(sec1_point).map_err(|e| e.to_string())?;
    let der = key.to_public_key_der().map_err(|e| e.to_string())?;
    Ok(der.into_vec())
}

/// DER bytes per PEM line: 48 bytes are 64 base64 characters, the line
/// length of RFC 7468 §2, and only the last line can carry padding.
const PEM_LINE_BYTES: usize = 48;

/// One PEM block, 64 characters per line, each line ending in LF.
///
/// Written here rather than with the `pem` crate, which copies the DER
/// into its `Pem` (for a private key, a copy nobody zeroes) and formats
/// line by line through `fmt::write`: a leaf's PEM took 11.5 k
/// instructions, 8 k here. The string is sized exactly, so it never reallocates
/// (which would leave a key's text behind in the old buffer).
fn pem_block(tag: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let lines = der.len().div_ceil(PEM_LINE_BYTES);
    let body = base64::encoded_len(der.len(), true).expect("a DER blob's base64 fits in memory");
    let armour = "-----BEGIN -----\n-----END -----\n".len() + 2 * tag.len();
    let mut text = String::with_capacity(armour + body + lines);
    text.push_str("-----BEGIN ");
    text.push_str(tag);
    text.push_str("-----\n");
    for line in der.chunks(PEM_LINE_BYTES) {
        base64::engine::general_purpose::STANDARD.encode_string(line, &mut text);
        text.push('\n');
    }
    text.push_str("-----END ");
    text.push_str(tag);
    text.push_str("-----\n");
    debug_assert_eq!(text.len(), text.capacity());
    text
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("no PEM block found")]
    Missing,
    #[error("expected a PEM block of type {expected}, found {found}")]
    WrongType { expected: String, found: String },
    #[error("malformed PEM: {0}")]
    Malformed(String),
}

/// Decodes every PEM block of type `tag` in `text`, in order. Other block
/// types are an error: a bundle that mixes keys and certificates is a mistake.
pub fn decode_pem_blocks(text: &str, tag: &str) -> Result<Vec<Vec<u8>>, PemError> {
    let blocks = ::pem::parse_many(text).map_err(|e| PemError::Malformed(e.to_string()))?;
    if blocks.is_empty() {
        return Err(PemError::Missing);
    }
    blocks
        .into_iter()
        .map(|b| {
            if b.tag() == tag {
                Ok(b.into_contents())
            } else {
                Err(PemError::WrongType {
                    expected: tag.to_string(),
                    found: b.tag().to_string(),
                })
            }
        })
        .collect()
}

/// Parses a certificate and returns the facts the CA records about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub serial: Vec<u8>,
    pub subject_key_id: Option<Vec<u8>>,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
    pub is_ca: bool,
    pub spki_der: Vec<u8>,
}

/// The URI SANs of a certificate. A SAN extension that does not decode is
/// an error, not "no URIs".
pub fn uri_sans(cert: &X509Certificate<'_>) -> Result<Vec<String>, String> {
    let san = cert.subject_alternative_name().map_err(|e| e.to_string())?;
    Ok(san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The SubjectKeyIdentifier extension's value, if present.
pub fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

pub fn cert_facts(der: &[u8]) -> Result<CertFacts, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err("trailing data after certificate".into());
    }
    let skid = subject_key_id(&cert);
    Ok(CertFacts {
        serial: cert.raw_serial().to_vec(),
        subject_key_id: skid,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        is_ca: cert.is_ca(),
        spki_der: cert.public_key().raw.to_vec(),
    })
}

/// A serial number as a u64 (Consul's `CARoot.SerialNumber`); serials meshca
/// writes for roots fit by construction, foreign ones are truncated to their
/// low 64 bits.
pub fn serial_u64(serial: &[u8]) -> u64 {
    serial
        .iter()
        .rev()
        .take(8)
        .rev()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_p256_point_becomes_the_spki_rcgen_writes_and_an_off_curve_one_is_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let point = rcgen::PublicKeyData::der_bytes(&key);
        assert_eq!(p256_spki_der(point).unwrap(), spki);
        let mut off_curve = point.to_vec();
        off_curve[64] ^= 1;
        assert!(p256_spki_der(&off_curve).is_err());
    }

    /// Every length around the line and padding boundaries: the text is
    /// what the `pem` crate writes, and it reads back to the same bytes.
    #[test]
    fn pem_blocks_have_64_character_lines_and_read_back() {
        for len in 0..=200 {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = private_key_pem(&der);
            let by_the_crate = ::pem::encode_config(
                &::pem::Pem::new("PRIVATE KEY", der.clone()),
                ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
            );
            assert_eq!(text, by_the_crate, "{len} bytes");
            assert!(text.lines().all(|line| line.len() <= 64), "{len} bytes");
            assert_eq!(::pem::parse(&text).unwrap().contents(), der, "{len} bytes");
        }
    }

    #[test]
    fn colon_hex_is_lower_case_and_separated() {
        assert_eq!(colon_hex(&[0x31, 0x6c, 0x0a]), "31:6c:0a");
        assert_eq!(colon_hex(&[]), "");
        assert_eq!(colon_hex(&[0x00, 0xff]), "00:ff");
    }

    #[test]
    fn key_id_is_sha256() {
        assert_eq!(key_id(b"abc").len(), 32);
        assert_eq!(
            colon_hex(&key_id(b"abc")[..4]),
            "ba:78:16:bf" // SHA-256("abc") starts ba7816bf
        );
    }

    #[test]
    fn serial_u64_takes_the_low_bytes() {
        assert_eq!(serial_u64(&[0x01, 0x02]), 0x0102);
        assert_eq!(serial_u64(&[0xff, 0, 0, 0, 0, 0, 0, 0, 7]), 7);
    }

    #[test]
    fn pem_blocks_must_have_the_expected_type() {
        let pem = cert_pem(b"\x30\x00");
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
        assert_eq!(
            decode_pem_blocks(&pem, "CERTIFICATE").unwrap(),
            vec![b"\x30\x00".to_vec()]
        );
        assert!(matches!(
            decode_pem_blocks(&pem, "CERTIFICATE REQUEST"),
            Err(PemError::WrongType { .. })
        ));
        assert_eq!(
            decode_pem_blocks("hello", "CERTIFICATE"),
            Err(PemError::Missing)
        );
    }
}
