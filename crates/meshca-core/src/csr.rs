//! Validation of certificate signing requests. Every rule here has
//! a passing and a failing test.
//!
//! The rules run in this order, and the first failure is returned:
//!
//! 1. size: more than `max_pem_bytes` of text → [`CsrError::TooLarge`];
//! 2. armour: exactly one `CERTIFICATE REQUEST` PEM block, only whitespace
//!    around it, strict base64 → [`CsrError::BadPem`];
//! 3. structure: a PKCS#10 v1 request in strict DER (it decodes with the
//!    `x509-cert` crate's DER rules and re-encodes to the same bytes), with
//!    no trailing bytes, no duplicate attributes or requested extensions,
//!    and every extension this module reads decodable →
//!    [`CsrError::Malformed`];
//! 4. key allow-list: EC P-256/P-384 (uncompressed point on the curve) or
//!    RSA 2048..=4096 bits with an odd exponent ≥ 3 → [`CsrError::KeyNotAllowed`];
//! 5. proof of possession: the request's own signature verifies under its key
//!    with an allowed algorithm (no SHA-1) → [`CsrError::BadSignature`];
//! 6. basicConstraints CA:true or keyUsage keyCertSign requested →
//!    [`CsrError::RequestsCa`];
//! 7. SANs: count, then per entry email / IP / unsupported type / bad DNS name;
//! 8. exactly one URI SAN, a valid SPIFFE ID of our trust domain and datacenter.
//!
//! The key check runs before the signature check: both must pass, and the key
//! check gives the useful answer for keys the verifier does not even support
//! (RSA-1024, P-224, P-521, DSA), which would otherwise be reported as a bad
//! signature. It is also the cheaper of the two.
//!
//! Nothing else the requester asked for (subject, EKU, other extensions or
//! attributes) is read: the leaf is built from a fixed template.

use crate::spiffe::{SpiffeId, TrustDomain};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use x509_parser::asn1_rs::Tag;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

/// What a CSR may ask for.
#[derive(Debug, Clone)]
pub struct CsrPolicy {
    pub trust_domain: TrustDomain,
    pub datacenter: String,
    /// Largest accepted PEM text, in bytes.
    pub max_pem_bytes: usize,
    /// Largest accepted number of SAN entries of all kinds.
    pub max_sans: usize,
    pub allow_ip_sans: bool,
}

impl CsrPolicy {
    pub fn new(trust_domain: TrustDomain, datacenter: impl Into<String>) -> Self {
        Self {
            trust_domain,
            datacenter: datacenter.into(),
            max_pem_bytes: 64 * 1024,
            max_sans: 100,
            allow_ip_sans: false,
        }
    }
}

/// The public key of an accepted CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrKeyType {
    EcP256,
    EcP384,
    Rsa { bits: usize },
}

impl CsrKeyType {
    pub fn is_rsa(&self) -> bool {
        matches!(self, Self::Rsa { .. })
    }
}

/// A CSR that passed every rule. Only the public key and the names survive:
/// nothing else the requester asked for can reach the certificate. The fields
/// are private: a value exists only after [`validate_csr`] or
/// [`ValidatedCsr::for_public_key`] checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedCsr {
    spiffe_id: SpiffeId,
    spki_der: Vec<u8>,
    key_type: CsrKeyType,
    dns_sans: Vec<String>,
    ip_sans: Vec<IpAddr>,
    /// The DER request that carried the key, for providers that sign only
    /// requests (Vault); `None` for a key the CA generated without one.
    csr_der: Option<Vec<u8>>,
}

impl ValidatedCsr {
    /// A request for `spiffe_id` with a key the CA generated itself (the
    /// agent leaf endpoint): no CSR, but the key passes the same allow-list.
    pub fn for_public_key(spiffe_id: SpiffeId, spki_der: &[u8]) -> Result<Self, CsrError> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| CsrError::Malformed(format!("public key: {e}")))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed(
                "trailing bytes after the public key".into(),
            ));
        }
        let key_type = check_key(&spki)?;
        Ok(Self {
            spiffe_id,
            spki_der: spki_der.to_vec(),
            key_type,
            dns_sans: Vec::new(),
            ip_sans: Vec::new(),
            csr_der: None,
        })
    }

    /// The same request carried by `der`, a CSR the caller made with this
    /// request's key (for providers that sign only CSRs). Its public key
    /// must be this request's; its names are not used, the validated ones
    /// are.
    pub fn with_csr_der(mut self, der: Vec<u8>) -> Result<Self, CsrError> {
        let (_, csr) = X509CertificationRequest::from_der(&der)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if csr.certification_request_info.subject_pki.raw != self.spki_der.as_slice() {
            return Err(CsrError::Malformed(
                "the CSR carries another public key".into(),
            ));
        }
        self.csr_der = Some(der);
        Ok(self)
    }

    /// The DER CSR that carried the key, if there was one.
    pub fn csr_der(&self) -> Option<&[u8]> {
        self.csr_der.as_deref()
    }

    /// The same request with DNS and IP SANs added (a server certificate
    /// the CA issues for itself names the host names and addresses it is
    /// reached at). Host names follow the rules `validate_csr` applies.
    pub fn with_names(mut self, dns: &[String], ips: &[IpAddr]) -> Result<Self, CsrError> {
        for name in dns {
            if !is_valid_dns_name(name) {
                return Err(CsrError::BadDnsName(quote(name)));
            }
        }
        self.dns_sans.extend(dns.iter().cloned());
        self.ip_sans.extend(ips.iter().copied());
        Ok(self)
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The DER SubjectPublicKeyInfo the certificate will carry.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    pub fn key_type(&self) -> CsrKeyType {
        self.key_type
    }

    pub fn dns_sans(&self) -> &[String] {
        &self.dns_sans
    }

    pub fn ip_sans(&self) -> &[IpAddr] {
        &self.ip_sans
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is too large")]
    TooLarge,
    #[error("CSR is not valid PEM: {0}")]
    BadPem(String),
    #[error("CSR could not be parsed: {0}")]
    Malformed(String),
    #[error("CSR signature is invalid")]
    BadSignature,
    #[error("CSR key is not allowed: {0}")]
    KeyNotAllowed(String),
    #[error("CSR SAN contains an invalid number of URIs: {0}")]
    UriCount(usize),
    #[error("CSR SAN does not allow specifying email addresses")]
    Email,
    #[error("CSR SAN does not allow specifying IP addresses")]
    IpAddress,
    #[error("CSR contains too many SANs: {0}")]
    TooManySans(usize),
    #[error("CSR SAN contains an unsupported name type")]
    UnsupportedSan,
    #[error("CSR SAN contains an invalid DNS name: {0}")]
    BadDnsName(String),
    #[error("{0}")]
    BadSpiffeId(String),
    #[error("SPIFFE ID in CSR from a different trust domain: {got}, we are {want}")]
    WrongTrustDomain { got: String, want: String },
    #[error("SPIFFE ID in CSR from a different datacenter: {got}, we are {want}")]
    WrongDatacenter { got: String, want: String },
    #[error("CSR requests a CA certificate")]
    RequestsCa,
    #[error("CSR must request an intermediate CA: basicConstraints CA:true with pathLen 0")]
    NotIntermediate,
    #[error("CSR must carry exactly one SAN, the URI {0}")]
    IntermediateSan(String),
}

/// The PEM label of a PKCS#10 request (RFC 7468 §7).
pub const CSR_PEM_LABEL: &str = "CERTIFICATE REQUEST";
const PEM_BEGIN: &str = "-----BEGIN ";
const PEM_END: &str = "-----END ";
/// What ends a BEGIN or END line's label.
const PEM_DASHES: &str = "-----";
/// The END line of a [`CSR_PEM_LABEL`] block.
const PEM_END_LINE: &str = "-----END CERTIFICATE REQUEST-----";
/// Whitespace in PEM (RFC 7468 §2): nothing else is skipped.
const PEM_WHITESPACE: [char; 4] = [' ', '\t', '\r', '\n'];

/// Longest accepted DNS name, in bytes.
const MAX_DNS_NAME_LEN: usize = 253;
/// Longest accepted DNS label, in bytes.
const MAX_DNS_LABEL_LEN: usize = 63;
/// Accepted RSA modulus sizes, in bits.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 4096;

/// Checks `pem` against every rule above and returns what may be signed.
///
/// Never inlined, so that profiles and `scripts/bench/instructions.py`
/// can name the validation's share of a request in an LTO build too (one
/// call per request costs nothing measurable).
#[inline(never)]
pub fn validate_csr(pem: &str, policy: &CsrPolicy) -> Result<ValidatedCsr, CsrError> {
    let der = armoured_der(pem, policy.max_pem_bytes)?;
    let csr = parse_strict(&der)?;
    let info = &csr.certification_request_info;
    let requested = RequestedExtensions::collect(&csr)?;
    let key_type = checked_key(&csr)?;

    // 6. No CA certificates.
    if requested.requests_ca {
        return Err(CsrError::RequestsCa);
    }

    // 7. SANs.
    if requested.sans.len() > policy.max_sans {
        return Err(CsrError::TooManySans(requested.sans.len()));
    }
    let mut uris = Vec::new();
    let mut dns_sans = Vec::new();
    let mut ip_sans = Vec::new();
    for name in &requested.sans {
        match name {
            GeneralName::URI(uri) => uris.push(*uri),
            GeneralName::RFC822Name(_) => return Err(CsrError::Email),
            GeneralName::IPAddress(bytes) => {
                if !policy.allow_ip_sans {
                    return Err(CsrError::IpAddress);
                }
                ip_sans.push(parse_ip(bytes)?);
            }
            GeneralName::DNSName(dns) => {
                if !is_valid_dns_name(dns) {
                    return Err(CsrError::BadDnsName(quote(dns)));
                }
                dns_sans.push((*dns).to_string());
            }
            GeneralName::Invalid(_, _) => {
                return Err(CsrError::Malformed(
                    "a SAN entry could not be decoded".to_string(),
                ))
            }
            GeneralName::OtherName(..)
            | GeneralName::X400Address(_)
            | GeneralName::DirectoryName(_)
            | GeneralName::EDIPartyName(_)
            | GeneralName::RegisteredID(_) => return Err(CsrError::UnsupportedSan),
        }
    }

    // 8. Exactly one URI: a SPIFFE ID of ours.
    let [uri] = uris.as_slice() else {
        return Err(CsrError::UriCount(uris.len()));
    };
    let spiffe_id: SpiffeId = uri
        .parse()
        .map_err(|e: crate::spiffe::SpiffeError| CsrError::BadSpiffeId(e.to_string()))?;
    if spiffe_id.trust_domain() != &policy.trust_domain {
        return Err(CsrError::WrongTrustDomain {
            got: spiffe_id.trust_domain().to_string(),
            want: policy.trust_domain.to_string(),
        });
    }
    if spiffe_id.datacenter() != policy.datacenter {
        return Err(CsrError::WrongDatacenter {
            got: spiffe_id.datacenter().to_string(),
            want: policy.datacenter.clone(),
        });
    }

    Ok(ValidatedCsr {
        spiffe_id,
        spki_der: info.subject_pki.raw.to_vec(),
        key_type,
        dns_sans,
        ip_sans,
        csr_der: Some(der),
    })
}

/// Rules 1 and 2: size, before any other work, then the armour.
fn armoured_der(pem: &str, max_pem_bytes: usize) -> Result<Vec<u8>, CsrError> {
    if pem.len() > max_pem_bytes {
        return Err(CsrError::TooLarge);
    }
    decode_pem(pem)
}

/// Rule 3: a PKCS#10 v1 request in strict DER without trailing bytes.
fn parse_strict(der: &[u8]) -> Result<X509CertificationRequest<'_>, CsrError> {
    check_strict_der(der)?;
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| CsrError::Malformed(format!("not a PKCS#10 request ({e})")))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    let version = csr.certification_request_info.version.0;
    if version != 0 {
        return Err(CsrError::Malformed(format!(
            "unsupported version {version}"
        )));
    }
    Ok(csr)
}

/// Rules 4 and 5: the key allow-list (see the module documentation for
/// why it runs first), then proof of possession.
fn checked_key(csr: &X509CertificationRequest<'_>) -> Result<CsrKeyType, CsrError> {
    let key_type = check_key(&csr.certification_request_info.subject_pki)?;
    check_signature(csr)?;
    Ok(key_type)
}

/// A secondary datacenter's request for an intermediate CA, validated: the
/// primary signs only its key; the certificate comes from the primary's
/// intermediate template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedIntermediateCsr {
    spki_der: Vec<u8>,
    csr_der: Vec<u8>,
}

impl ValidatedIntermediateCsr {
    /// A request the CA made for a new intermediate key of its own (in a
    /// remote provider): rules 3–5 apply; what it asks for does not, since
    /// the certificate comes from our template anyway.
    pub fn of_own_key(der: Vec<u8>) -> Result<Self, CsrError> {
        let csr = parse_strict(&der)?;
        checked_key(&csr)?;
        let spki_der = csr.certification_request_info.subject_pki.raw.to_vec();
        Ok(Self {
            spki_der,
            csr_der: der,
        })
    }

    /// The DER SubjectPublicKeyInfo the intermediate will carry.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The request itself, for providers that sign only CSRs (Vault).
    pub fn csr_der(&self) -> &[u8] {
        &self.csr_der
    }
}

/// Checks a secondary datacenter's intermediate CSR with rules 1–5 above,
/// then: basicConstraints CA:true with pathLen 0 requested, and exactly one
/// SAN, the URI `spiffe://<trust domain>`.
pub fn validate_intermediate_csr(
    pem: &str,
    trust_domain: &TrustDomain,
    max_pem_bytes: usize,
) -> Result<ValidatedIntermediateCsr, CsrError> {
    let der = armoured_der(pem, max_pem_bytes)?;
    let csr = parse_strict(&der)?;
    let requested = RequestedExtensions::collect(&csr)?;
    checked_key(&csr)?;
    if requested.basic_constraints != Some((true, Some(0))) {
        return Err(CsrError::NotIntermediate);
    }
    let want = trust_domain.ca_uri();
    if !matches!(requested.sans.as_slice(), [GeneralName::URI(u)] if *u == want) {
        return Err(CsrError::IntermediateSan(want));
    }
    let spki_der = csr.certification_request_info.subject_pki.raw.to_vec();
    Ok(ValidatedIntermediateCsr {
        spki_der,
        csr_der: der,
    })
}

/// x509-parser, which reads the fields, tolerates wrong tags on parts it
/// does not interpret (the outer SEQUENCE, the signature algorithm's OID):
/// such a request was signed although openssl and Python's `cryptography`
/// reject it. A second, strict DER decoder decides whether the bytes are a
/// well-formed request at all, and re-encoding must give the same bytes.
fn check_strict_der(der: &[u8]) -> Result<(), CsrError> {
    use x509_cert::der::{Decode as _, Encode as _};
    let req = x509_cert::request::CertReq::from_der(der)
        .map_err(|e| CsrError::Malformed(format!("not a DER-encoded PKCS#10 request ({e})")))?;
    let again = req
        .to_der()
        .map_err(|e| CsrError::Malformed(format!("not a DER-encoded PKCS#10 request ({e})")))?;
    if again != der {
        return Err(CsrError::Malformed(
            "not in canonical DER (it does not re-encode to the same bytes)".into(),
        ));
    }
    check_signature_parameters(&req.algorithm)
}

/// The signature algorithm's parameters, which the signature does not
/// cover, must be what the algorithm defines: absent for ECDSA (RFC 5758),
/// NULL for RSA PKCS #1 v1.5 (RFC 4055), a SEQUENCE for RSASSA-PSS.
/// Unknown algorithms are refused later, by the signature check.
fn check_signature_parameters(
    alg: &x509_cert::spki::AlgorithmIdentifierOwned,
) -> Result<(), CsrError> {
    use x509_cert::der::oid::ObjectIdentifier as Oid;
    use x509_cert::der::{Tag, Tagged as _};
    const ECDSA: [Oid; 2] = [
        Oid::new_unwrap("1.2.840.10045.4.3.2"), // ecdsa-with-SHA256
        Oid::new_unwrap("1.2.840.10045.4.3.3"), // ecdsa-with-SHA384
    ];
    const RSA_PKCS1: [Oid; 3] = [
        Oid::new_unwrap("1.2.840.113549.1.1.11"), // sha256WithRSAEncryption
        Oid::new_unwrap("1.2.840.113549.1.1.12"), // sha384WithRSAEncryption
        Oid::new_unwrap("1.2.840.113549.1.1.13"), // sha512WithRSAEncryption
    ];
    const RSASSA_PSS: Oid = Oid::new_unwrap("1.2.840.113549.1.1.10");
    let tag = alg.parameters.as_ref().map(|p| p.tag());
    let ok = if ECDSA.contains(&alg.oid) {
        tag.is_none()
    } else if RSA_PKCS1.contains(&alg.oid) {
        tag == Some(Tag::Null)
    } else if alg.oid == RSASSA_PSS {
        tag == Some(Tag::Sequence)
    } else {
        true
    };
    if ok {
        Ok(())
    } else {
        Err(CsrError::Malformed(format!(
            "the signature algorithm {} has parameters its definition does not allow",
            alg.oid
        )))
    }
}

/// Decodes exactly one `CERTIFICATE REQUEST` PEM block with nothing but
/// whitespace around it, and a strictly canonical base64 body: the
/// standard alphabet, canonical padding, no non-zero trailing bits
/// (`pem_armour_is_strict` pins that), whitespace only between
/// characters, no blank line and no RFC 1421 headers.
///
/// The framing is done here, not by the `pem` crate: it is laxer (text
/// around the block, any Unicode whitespace in the body, headers, an empty
/// body) and slow for this one block per request (it compares byte by
/// byte and copies the body char by char: the whole armour took 47 k of a
/// /sign's instructions, 19 k now). The base64 is the `base64` crate's.
fn decode_pem(text: &str) -> Result<Vec<u8>, CsrError> {
    let bad = |m: &str| CsrError::BadPem(m.to_string());
    let text = text.trim_matches(PEM_WHITESPACE);
    if text.is_empty() {
        return Err(bad("empty input"));
    }
    let blocks = text.matches(PEM_BEGIN).count();
    if blocks == 0 {
        return Err(bad(
            "no PEM block found: send the request PEM-encoded, starting with \
             -----BEGIN CERTIFICATE REQUEST-----",
        ));
    }
    if blocks > 1 {
        return Err(CsrError::BadPem(format!(
            "expected exactly one PEM block, found {blocks}"
        )));
    }
    if !text.starts_with(PEM_BEGIN) {
        return Err(bad("unexpected text before the PEM block"));
    }
    // Every allowed character is ASCII, so the first byte that is not
    // allowed starts the character to name (byte by byte: about 5 k
    // instructions fewer per request than decoding UTF-8 first).
    if let Some(at) = text.bytes().position(|b| !is_pem_byte(b)) {
        let c = text[at..].chars().next().unwrap_or_default();
        return Err(CsrError::BadPem(format!(
            "invalid character {} in the PEM text",
            quote(&c.to_string())
        )));
    }
    let (label, body, rest) = pem_frame(&text[PEM_BEGIN.len()..])?;
    // With the characters above, a header block can only be a base64 body
    // cut in two by a blank line.
    if body.contains("\n\n") || body.contains("\r\n\r\n") {
        return Err(bad("blank line inside the base64 body"));
    }
    let der = decode_base64_body(body)?;
    if label != CSR_PEM_LABEL {
        return Err(CsrError::BadPem(format!(
            "expected a {CSR_PEM_LABEL} block, found {}",
            quote(label)
        )));
    }
    if !rest.is_empty() || !text.ends_with(PEM_END_LINE) {
        return Err(bad("unexpected text after the PEM block"));
    }
    if der.is_empty() {
        return Err(bad("empty base64 body"));
    }
    Ok(der)
}

/// The label, the body and what follows the END line of the block that
/// `after_begin` (the text after `-----BEGIN `) starts.
fn pem_frame(after_begin: &str) -> Result<(&str, &str, &str), CsrError> {
    let unterminated =
        || CsrError::BadPem("the BEGIN or END line is missing or unterminated".into());
    let (label, after_label) = after_begin
        .split_once(PEM_DASHES)
        .ok_or_else(unterminated)?;
    let (body, after_end) = after_label.split_once(PEM_END).ok_or_else(unterminated)?;
    let (end_label, rest) = after_end.split_once(PEM_DASHES).ok_or_else(unterminated)?;
    if label.is_empty() || end_label.is_empty() {
        return Err(CsrError::BadPem(
            "the BEGIN or END line has no label".into(),
        ));
    }
    if label != end_label {
        return Err(CsrError::BadPem(
            "the END label does not match the BEGIN label".into(),
        ));
    }
    Ok((label, body.trim_start_matches(PEM_WHITESPACE), rest))
}

/// The bytes of a PEM body: its base64 with the whitespace between
/// characters dropped.
fn decode_base64_body(body: &str) -> Result<Vec<u8>, CsrError> {
    use base64::Engine as _;
    let mut packed = Vec::with_capacity(body.len());
    packed.extend(
        body.bytes()
            .filter(|b| !PEM_WHITESPACE.contains(&char::from(*b))),
    );
    base64::engine::general_purpose::STANDARD
        .decode(&packed)
        .map_err(|e| CsrError::BadPem(format!("invalid base64 body: {e}")))
}

/// What may appear in a request's PEM text: the base64 alphabet and `=`,
/// PEM whitespace, and the dashes and upper-case letters of the BEGIN and
/// END lines.
fn is_pem_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(b, b'+' | b'/' | b'=' | b'-')
        || PEM_WHITESPACE.contains(&char::from(b))
}

/// What this module reads from the request's extensionRequest attribute.
struct RequestedExtensions<'a> {
    requests_ca: bool,
    /// The requested basicConstraints: CA flag and path length.
    basic_constraints: Option<(bool, Option<u32>)>,
    sans: Vec<&'a GeneralName<'a>>,
}

impl<'a> RequestedExtensions<'a> {
    fn collect(csr: &'a X509CertificationRequest<'a>) -> Result<Self, CsrError> {
        let info = &csr.certification_request_info;
        // Rejects duplicate attributes, in particular two extensionRequests.
        info.attributes_map()
            .map_err(|_| CsrError::Malformed("duplicate attributes".to_string()))?;

        let mut out = Self {
            requests_ca: false,
            basic_constraints: None,
            sans: Vec::new(),
        };
        let mut seen: HashSet<&Oid<'_>> = HashSet::new();
        for attr in info.iter_attributes() {
            let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() else {
                continue;
            };
            for ext in &req.extensions {
                if !seen.insert(&ext.oid) {
                    return Err(CsrError::Malformed(format!(
                        "extension {} requested twice",
                        ext.oid.to_id_string()
                    )));
                }
                match ext.parsed_extension() {
                    ParsedExtension::ParseError { .. } => {
                        return Err(CsrError::Malformed(format!(
                            "requested extension {} could not be decoded",
                            ext.oid.to_id_string()
                        )))
                    }
                    ParsedExtension::BasicConstraints(bc) => {
                        out.requests_ca |= bc.ca;
                        out.basic_constraints = Some((bc.ca, bc.path_len_constraint));
                    }
                    ParsedExtension::KeyUsage(ku) => out.requests_ca |= ku.key_cert_sign(),
                    ParsedExtension::SubjectAlternativeName(san) => {
                        out.sans.extend(san.general_names.iter());
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

/// The key spec of a DER public key on the allow-list (a CA certificate's
/// key, such as a primary datacenter's root).
pub fn key_spec_of(spki_der: &[u8]) -> Result<crate::KeySpec, CsrError> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| CsrError::Malformed(format!("public key: {e}")))?;
    let bad = |e: crate::keyspec::KeySpecError| CsrError::KeyNotAllowed(e.to_string());
    match check_key(&spki)? {
        CsrKeyType::EcP256 => Ok(crate::KeySpec::EcP256),
        CsrKeyType::EcP384 => Ok(crate::KeySpec::EcP384),
        CsrKeyType::Rsa { bits } => {
            crate::KeySpec::from_type_and_bits("rsa", u32::try_from(bits).unwrap_or(0)).map_err(bad)
        }
    }
}

/// The key allow-list: EC P-256/P-384 and RSA 2048..=4096.
fn check_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<CsrKeyType, CsrError> {
    let not_allowed = CsrError::KeyNotAllowed;
    let alg = &spki.algorithm.algorithm;
    if spki.subject_public_key.unused_bits != 0 {
        return Err(not_allowed(
            "the public key BIT STRING has unused bits".to_string(),
        ));
    }
    let key: &[u8] = &spki.subject_public_key.data;

    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let Some(curve) = spki
            .algorithm
            .parameters
            .as_ref()
            .filter(|p| p.tag() == Tag::Oid)
            .and_then(|p| p.as_oid().ok())
        else {
            return Err(not_allowed(
                "EC keys must name their curve (P-256 or P-384)".to_string(),
            ));
        };
        let (key_type, point_len) = if curve == OID_EC_P256 {
            (CsrKeyType::EcP256, 65)
        } else if curve == OID_NIST_EC_P384 {
            (CsrKeyType::EcP384, 97)
        } else {
            return Err(not_allowed(format!(
                "EC curve {} is not allowed (P-256 and P-384 are)",
                oid_name(&curve)
            )));
        };
        if key.len() != point_len || key.first() != Some(&0x04) {
            return Err(not_allowed(
                "the EC public key must be an uncompressed point".to_string(),
            ));
        }
        let on_curve = match key_type {
            CsrKeyType::EcP256 => p256::PublicKey::from_sec1_bytes(key).is_ok(),
            _ => p384::PublicKey::from_sec1_bytes(key).is_ok(),
        };
        if !on_curve {
            return Err(not_allowed(
                "the EC public key is not a valid point on its curve".to_string(),
            ));
        }
        Ok(key_type)
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        // RFC 3279: the parameters MUST be NULL (tolerate absent).
        if let Some(params) = &spki.algorithm.parameters {
            if params.tag() != Tag::Null || !params.data.is_empty() {
                return Err(not_allowed(
                    "rsaEncryption parameters must be NULL".to_string(),
                ));
            }
        }
        check_rsa_key(key).map(|bits| CsrKeyType::Rsa { bits })
    } else {
        Err(not_allowed(format!(
            "key algorithm {} is not allowed (EC P-256/P-384 and RSA 2048-4096 are)",
            oid_name(alg)
        )))
    }
}

/// Checks a PKCS#1 RSAPublicKey and returns its modulus size in bits.
fn check_rsa_key(pkcs1: &[u8]) -> Result<usize, CsrError> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::traits::PublicKeyParts;
    use x509_parser::public_key::RSAPublicKey;

    let not_allowed = |m: &str| CsrError::KeyNotAllowed(m.to_string());
    // Cheap checks on the raw integers first, with precise messages, so that
    // a huge modulus is never loaded into a big integer.
    let key = match RSAPublicKey::from_der(pkcs1) {
        Ok(([], key)) => key,
        _ => return Err(not_allowed("the RSA public key could not be decoded")),
    };
    let modulus = strip_leading_zeros(key.modulus);
    let modulus_bits = match modulus.first() {
        Some(top) => modulus.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    };
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&modulus_bits) {
        return Err(CsrError::KeyNotAllowed(format!(
            "RSA key size {modulus_bits} bits is not allowed ({RSA_MIN_BITS} to {RSA_MAX_BITS} are)"
        )));
    }
    if modulus.last().is_none_or(|b| b & 1 == 0) {
        return Err(not_allowed("the RSA modulus is even"));
    }
    let exponent = strip_leading_zeros(key.exponent);
    let exponent_odd = exponent.last().is_some_and(|b| b & 1 == 1);
    let exponent_small = exponent.len() <= 1 && exponent.first().is_none_or(|b| *b < 3);
    if !exponent_odd || exponent_small {
        return Err(not_allowed(
            "the RSA public exponent must be odd and at least 3",
        ));
    }

    // Then the strict DER decoder and the rsa crate's own checks (negative
    // integers, exponent ≤ 2^33 - 1, exponent < modulus).
    let key = rsa::RsaPublicKey::from_pkcs1_der(pkcs1)
        .map_err(|e| CsrError::KeyNotAllowed(format!("invalid RSA public key: {e}")))?;
    let bits = key.n().bits();
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(CsrError::KeyNotAllowed(format!(
            "RSA key size {bits} bits is not allowed ({RSA_MIN_BITS} to {RSA_MAX_BITS} are)"
        )));
    }
    Ok(bits)
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.get(zeros..).unwrap_or_default()
}

/// Proof of possession: the request is signed by the key it carries, with an
/// allowed signature algorithm.
fn check_signature(csr: &X509CertificationRequest<'_>) -> Result<(), CsrError> {
    let alg = &csr.signature_algorithm.algorithm;
    let allowed = [
        OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384,
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
        OID_PKCS1_RSASSAPSS,
    ];
    if !allowed.contains(alg) || csr.signature_value.unused_bits != 0 {
        return Err(CsrError::BadSignature);
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)
}

fn parse_ip(bytes: &[u8]) -> Result<IpAddr, CsrError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Ok(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Ok(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        Err(CsrError::Malformed(format!(
            "IP address SAN of {} bytes",
            bytes.len()
        )))
    }
}

/// A host name: labels of 1..=63 letters, digits and inner hyphens, at most
/// 253 bytes, optionally starting with a single `*.` wildcard label.
fn is_valid_dns_name(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_DNS_NAME_LEN {
        return false;
    }
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty() && rest.split('.').all(is_valid_dns_label)
}

fn is_valid_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_DNS_LABEL_LEN
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// A readable name for an OID: its registered short name, or dotted form.
fn oid_name(oid: &Oid<'_>) -> String {
    x509_parser::objects::oid2sn(oid, x509_parser::objects::oid_registry())
        .map(str::to_string)
        .unwrap_or_else(|_| oid.to_id_string())
}

use crate::spiffe::quote;

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SignatureAlgorithm, SigningKey,
    };
    use std::sync::OnceLock;

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    // ----- keys ----------------------------------------------------------

    fn key(slot: &'static OnceLock<KeyPair>, alg: &'static SignatureAlgorithm) -> &'static KeyPair {
        slot.get_or_init(|| KeyPair::generate_for(alg).expect("keygen"))
    }
    fn p256() -> &'static KeyPair {
        static K: OnceLock<KeyPair> = OnceLock::new();
        key(&K, &rcgen::PKCS_ECDSA_P256_SHA256)
    }
    fn p256_other() -> &'static KeyPair {
        static K: OnceLock<KeyPair> = OnceLock::new();
        key(&K, &rcgen::PKCS_ECDSA_P256_SHA256)
    }
    fn p384() -> &'static KeyPair {
        static K: OnceLock<KeyPair> = OnceLock::new();
        key(&K, &rcgen::PKCS_ECDSA_P384_SHA384)
    }
    fn p521() -> &'static KeyPair {
        static K: OnceLock<KeyPair> = OnceLock::new();
        key(&K, &rcgen::PKCS_ECDSA_P521_SHA512)
    }
    fn ed25519() -> &'static KeyPair {
        static K: OnceLock<KeyPair> = OnceLock::new();
        key(&K, &rcgen::PKCS_ED25519)
    }
    fn rsa2048() -> &'static KeyPair {
        static K: OnceLock<KeyPair> = OnceLock::new();
        key(&K, &rcgen::PKCS_RSA_SHA256)
    }
    fn rsa2048_sha512() -> KeyPair {
        KeyPair::from_pkcs8_der_and_sign_algo(
            &rsa2048().serialize_der().into(),
            &rcgen::PKCS_RSA_SHA512,
        )
        .expect("re-import")
    }
    fn rsa4096() -> &'static KeyPair {
        static K: OnceLock<KeyPair> = OnceLock::new();
        K.get_or_init(|| {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
                .expect("keygen")
        })
    }

    /// A CSPRNG for the `rsa` crate, fed by aws-lc-rs.
    struct AwsRng;
    impl rsa::rand_core::RngCore for AwsRng {
        fn next_u32(&mut self) -> u32 {
            let mut b = [0u8; 4];
            self.fill_bytes(&mut b);
            u32::from_le_bytes(b)
        }
        fn next_u64(&mut self) -> u64 {
            let mut b = [0u8; 8];
            self.fill_bytes(&mut b);
            u64::from_le_bytes(b)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            aws_lc_rs::rand::fill(dest).expect("rng");
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl rsa::rand_core::CryptoRng for AwsRng {}

    const SHA256_DIGEST_INFO: &[u8] = &[
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    const SHA1_DIGEST_INFO: &[u8] = &[
        0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
    ];

    /// An RSA key of any size (aws-lc-rs refuses < 2048), signing with
    /// PKCS#1 v1.5 + SHA-256 through the `rsa` crate. Tests only.
    struct RsaCrateKey {
        key: rsa::RsaPrivateKey,
        pkcs1: Vec<u8>,
    }
    impl RsaCrateKey {
        fn new(key: rsa::RsaPrivateKey) -> Self {
            use rsa::pkcs1::EncodeRsaPublicKey;
            let pkcs1 = key
                .to_public_key()
                .to_pkcs1_der()
                .expect("pkcs1")
                .as_bytes()
                .to_vec();
            Self { key, pkcs1 }
        }
        fn sign_with(&self, digest_info: &[u8], hash: &[u8]) -> Vec<u8> {
            let padding = rsa::Pkcs1v15Sign {
                hash_len: Some(hash.len()),
                prefix: digest_info.into(),
            };
            self.key.sign(padding, hash).expect("rsa sign")
        }
    }
    impl PublicKeyData for RsaCrateKey {
        fn der_bytes(&self) -> &[u8] {
            &self.pkcs1
        }
        fn algorithm(&self) -> &'static SignatureAlgorithm {
            &rcgen::PKCS_RSA_SHA256
        }
    }
    impl SigningKey for RsaCrateKey {
        fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
            let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg);
            Ok(self.sign_with(SHA256_DIGEST_INFO, h.as_ref()))
        }
    }
    fn rsa1024() -> &'static RsaCrateKey {
        static K: OnceLock<RsaCrateKey> = OnceLock::new();
        K.get_or_init(|| RsaCrateKey::new(rsa::RsaPrivateKey::new(&mut AwsRng, 1024).expect("gen")))
    }

    /// A "key" with arbitrary public key bytes and a junk signature, for
    /// public keys no library will sign with.
    struct FakeKey {
        public: Vec<u8>,
        alg: &'static SignatureAlgorithm,
    }
    impl PublicKeyData for FakeKey {
        fn der_bytes(&self) -> &[u8] {
            &self.public
        }
        fn algorithm(&self) -> &'static SignatureAlgorithm {
            self.alg
        }
    }
    impl SigningKey for FakeKey {
        fn sign(&self, _: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
            Ok(vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01])
        }
    }

    // ----- CSRs made with rcgen -----------------------------------------

    fn policy() -> CsrPolicy {
        CsrPolicy::new(TD.parse().expect("td"), "dc1")
    }
    fn web() -> String {
        format!("spiffe://{TD}/ns/default/dc/dc1/svc/web")
    }
    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().expect("ia5"))
    }
    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.try_into().expect("ia5"))
    }
    fn email(s: &str) -> SanType {
        SanType::Rfc822Name(s.try_into().expect("ia5"))
    }

    fn csr_with(
        k: &impl SigningKey,
        sans: Vec<SanType>,
        f: impl FnOnce(&mut CertificateParams),
    ) -> String {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = sans;
        f(&mut p);
        p.serialize_request(k).expect("csr").pem().expect("pem")
    }
    fn csr(k: &impl SigningKey, sans: Vec<SanType>) -> String {
        csr_with(k, sans, |_| {})
    }
    fn web_csr(k: &impl SigningKey) -> String {
        csr(k, vec![uri(&web())])
    }
    fn uri_csr(u: &str) -> String {
        csr(p256(), vec![uri(u)])
    }

    fn der_of(pem_text: &str) -> Vec<u8> {
        ::pem::parse(pem_text).expect("pem").into_contents()
    }
    fn pem_of(der: &[u8]) -> String {
        ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der.to_vec()))
    }
    fn pem_with_label(label: &str, der: &[u8]) -> String {
        ::pem::encode(&::pem::Pem::new(label, der.to_vec()))
    }

    // ----- CSRs built by hand -------------------------------------------

    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = body.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let be = n.to_be_bytes();
            let skip = be.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (be.len() - skip) as u8);
            out.extend_from_slice(&be[skip..]);
        }
        out.extend_from_slice(body);
        out
    }
    fn seq(parts: &[&[u8]]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }
    fn set(parts: &[&[u8]]) -> Vec<u8> {
        tlv(0x31, &parts.concat())
    }
    fn oid(dotted: &str) -> Vec<u8> {
        let arcs: Vec<u64> = dotted.split('.').map(|a| a.parse().expect("arc")).collect();
        let mut body = vec![(arcs[0] * 40 + arcs[1]) as u8];
        for &arc in &arcs[2..] {
            let mut groups = vec![(arc & 0x7f) as u8];
            let mut rest = arc >> 7;
            while rest > 0 {
                groups.push(0x80 | (rest & 0x7f) as u8);
                rest >>= 7;
            }
            body.extend(groups.iter().rev());
        }
        tlv(0x06, &body)
    }
    fn bits(data: &[u8]) -> Vec<u8> {
        tlv(0x03, &[&[0u8][..], data].concat())
    }
    fn octets(data: &[u8]) -> Vec<u8> {
        tlv(0x04, data)
    }
    fn int(data: &[u8]) -> Vec<u8> {
        tlv(0x02, data)
    }
    fn ext(oid_s: &str, value: &[u8]) -> Vec<u8> {
        seq(&[&oid(oid_s), &octets(value)])
    }
    fn san_ext(names: &[Vec<u8>]) -> Vec<u8> {
        let refs: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        ext("2.5.29.17", &seq(&refs))
    }
    fn ext_req(exts: &[Vec<u8>]) -> Vec<u8> {
        let refs: Vec<&[u8]> = exts.iter().map(Vec::as_slice).collect();
        seq(&[&oid("1.2.840.113549.1.9.14"), &set(&[&seq(&refs)])])
    }
    fn gn_uri(s: &str) -> Vec<u8> {
        tlv(0x86, s.as_bytes())
    }
    fn ec_spki(curve: &str, point: &[u8]) -> Vec<u8> {
        seq(&[
            &seq(&[&oid("1.2.840.10045.2.1"), &oid(curve)]),
            &bits(point),
        ])
    }
    fn p256_spki() -> Vec<u8> {
        p256().subject_public_key_info()
    }
    const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";

    struct Raw {
        version: u8,
        spki: Vec<u8>,
        attrs: Vec<Vec<u8>>,
        sig_alg: &'static str,
    }
    impl Raw {
        fn new(attrs: Vec<Vec<u8>>) -> Self {
            Self {
                version: 0,
                spki: p256_spki(),
                attrs,
                sig_alg: ECDSA_SHA256,
            }
        }
        fn info(&self) -> Vec<u8> {
            let attrs = self.attrs.concat();
            seq(&[
                &int(&[self.version]),
                &seq(&[]),
                &self.spki,
                &tlv(0xa0, &attrs),
            ])
        }
        fn assemble(&self, info: &[u8], sig: &[u8]) -> Vec<u8> {
            // RSA PKCS #1 v1.5 identifiers carry NULL parameters; ECDSA none.
            let alg = if self.sig_alg.starts_with("1.2.840.113549.1.1.") {
                seq(&[&oid(self.sig_alg), &tlv(0x05, &[])])
            } else {
                seq(&[&oid(self.sig_alg)])
            };
            seq(&[info, &alg, &bits(sig)])
        }
        /// Signed with `k` (whatever key `spki` holds).
        fn signed_by(&self, k: &impl SigningKey) -> Vec<u8> {
            let info = self.info();
            let sig = k.sign(&info).expect("sign");
            self.assemble(&info, &sig)
        }
        fn signed(&self) -> Vec<u8> {
            self.signed_by(p256())
        }
        fn pem(&self) -> String {
            pem_of(&self.signed())
        }
    }
    fn raw_sans(names: Vec<Vec<u8>>) -> String {
        Raw::new(vec![ext_req(&[san_ext(&names)])]).pem()
    }

    // ----- the table ------------------------------------------------------

    #[derive(Debug)]
    enum Want {
        Ok,
        /// Exactly this error.
        Is(CsrError),
        /// An error of this variant (by its Debug name).
        Kind(&'static str),
    }

    fn variant(e: &CsrError) -> String {
        let dbg = format!("{e:?}");
        dbg.split(['(', ' ', '{'])
            .next()
            .unwrap_or_default()
            .to_string()
    }

    fn check_with(
        name: &str,
        input: &str,
        policy: &CsrPolicy,
        want: &Want,
    ) -> Option<ValidatedCsr> {
        let got = validate_csr(input, policy);
        match (&got, want) {
            (Ok(_), Want::Ok) => {}
            (Err(e), Want::Is(w)) if e == w => {}
            (Err(e), Want::Kind(k)) if variant(e) == *k => {}
            _ => panic!("case {name:?}: want {want:?}, got {got:?}"),
        }
        got.ok()
    }

    fn check(cases: Vec<(&str, String, Want)>) -> usize {
        let p = policy();
        let n = cases.len();
        for (name, input, want) in cases {
            check_with(name, &input, &p, &want);
        }
        n
    }

    fn intermediate_csr(sans: Vec<SanType>, ca: IsCa) -> String {
        csr_with(p256(), sans, |p| p.is_ca = ca)
    }

    #[test]
    fn an_intermediate_csr_must_ask_for_a_path_len_0_ca_for_our_trust_domain() {
        use rcgen::BasicConstraints::{Constrained, Unconstrained};
        let td: TrustDomain = TD.parse().unwrap();
        let ca_uri = || uri(&td.ca_uri());
        let check = |pem: &str| validate_intermediate_csr(pem, &td, 64 * 1024);
        let good = intermediate_csr(vec![ca_uri()], IsCa::Ca(Constrained(0)));
        let ok = check(&good).unwrap();
        assert_eq!(ok.spki_der(), p256().subject_public_key_info());
        assert_eq!(ok.csr_der(), der_of(&good));
        for (what, pem, want) in [
            (
                "no CA",
                intermediate_csr(vec![ca_uri()], IsCa::NoCa),
                CsrError::NotIntermediate,
            ),
            (
                "unconstrained",
                intermediate_csr(vec![ca_uri()], IsCa::Ca(Unconstrained)),
                CsrError::NotIntermediate,
            ),
            (
                "pathLen 1",
                intermediate_csr(vec![ca_uri()], IsCa::Ca(Constrained(1))),
                CsrError::NotIntermediate,
            ),
            (
                "a leaf's SPIFFE ID",
                intermediate_csr(vec![uri(&web())], IsCa::Ca(Constrained(0))),
                CsrError::IntermediateSan(td.ca_uri()),
            ),
            (
                "another trust domain",
                intermediate_csr(vec![uri("spiffe://other.consul")], IsCa::Ca(Constrained(0))),
                CsrError::IntermediateSan(td.ca_uri()),
            ),
            (
                "an extra DNS SAN",
                intermediate_csr(vec![ca_uri(), dns("x.consul")], IsCa::Ca(Constrained(0))),
                CsrError::IntermediateSan(td.ca_uri()),
            ),
            (
                "no SAN",
                intermediate_csr(vec![], IsCa::Ca(Constrained(0))),
                CsrError::IntermediateSan(td.ca_uri()),
            ),
        ] {
            assert_eq!(check(&pem).unwrap_err(), want, "{what}");
        }
        // The leaf rules' earlier steps apply too: size, armour, signature.
        assert_eq!(
            validate_intermediate_csr(&good, &td, 10).unwrap_err(),
            CsrError::TooLarge
        );
        let mut tampered = der_of(&good);
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(check(&pem_of(&tampered)).is_err());
    }

    #[test]
    fn accepted_csrs() {
        let agent = format!("spiffe://{TD}/agent/client/dc/dc1/id/node-1");
        let server = format!("spiffe://{TD}/agent/server/dc/dc1");
        let gateway = format!("spiffe://{TD}/gateway/mesh/dc/dc1");
        let n = check(vec![
            ("p256 service", web_csr(p256()), Want::Ok),
            ("p384 service", web_csr(p384()), Want::Ok),
            ("rsa2048 service", web_csr(rsa2048()), Want::Ok),
            ("rsa2048 sha512", web_csr(&rsa2048_sha512()), Want::Ok),
            ("rsa4096 service", web_csr(rsa4096()), Want::Ok),
            ("agent", uri_csr(&agent), Want::Ok),
            ("server", uri_csr(&server), Want::Ok),
            ("mesh gateway", uri_csr(&gateway), Want::Ok),
            (
                "with subject CN",
                csr_with(p256(), vec![uri(&web())], |p| {
                    p.distinguished_name.push(rcgen::DnType::CommonName, "web");
                }),
                Want::Ok,
            ),
            (
                "explicit CA:false, leaf KU and EKU are ignored",
                csr_with(p256(), vec![uri(&web())], |p| {
                    p.is_ca = IsCa::ExplicitNoCa;
                    p.key_usages = vec![
                        KeyUsagePurpose::DigitalSignature,
                        KeyUsagePurpose::KeyEncipherment,
                    ];
                    p.extended_key_usages = vec![
                        ExtendedKeyUsagePurpose::ServerAuth,
                        ExtendedKeyUsagePurpose::CodeSigning,
                    ];
                }),
                Want::Ok,
            ),
            (
                "unknown extension is ignored",
                csr_with(p256(), vec![uri(&web())], |p| {
                    p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
                        &[1, 2, 3, 4],
                        vec![0x05, 0x00],
                    )];
                }),
                Want::Ok,
            ),
            (
                "CRLF line endings",
                web_csr(p256()).replace('\n', "\r\n"),
                Want::Ok,
            ),
            (
                "surrounding whitespace",
                format!("\n\n  \t{}\n\n \r\n", web_csr(p256())),
                Want::Ok,
            ),
            (
                "unwrapped body",
                {
                    let text = web_csr(p256());
                    let lines: Vec<&str> = text.lines().collect();
                    format!(
                        "{}\n{}\n{}\n",
                        lines[0],
                        lines[1..lines.len() - 1].concat(),
                        lines[lines.len() - 1]
                    )
                },
                Want::Ok,
            ),
            (
                "dns names",
                csr(
                    p256(),
                    vec![
                        uri(&web()),
                        dns("web.service.consul"),
                        dns("*.example.com"),
                        dns("EXAMPLE.com"),
                        dns("a-1.b2"),
                    ],
                ),
                Want::Ok,
            ),
        ]);
        assert_eq!(n, 15);
    }

    #[test]
    fn a_generated_key_passes_the_same_allow_list() {
        let id: SpiffeId = web().parse().expect("id");
        let v = ValidatedCsr::for_public_key(id.clone(), &p256().subject_public_key_info())
            .expect("P-256 is allowed");
        assert_eq!((v.spiffe_id(), v.key_type()), (&id, CsrKeyType::EcP256));
        assert!(v.dns_sans().is_empty() && v.ip_sans().is_empty());
        let p521 = ValidatedCsr::for_public_key(id.clone(), &p521().subject_public_key_info());
        assert!(matches!(p521, Err(CsrError::KeyNotAllowed(_))), "{p521:?}");
        let junk = ValidatedCsr::for_public_key(id, b"\x30\x00");
        assert!(matches!(
            junk,
            Err(CsrError::Malformed(_)) | Err(CsrError::KeyNotAllowed(_))
        ));
    }

    #[test]
    fn names_added_to_a_generated_key_follow_the_csr_rules() {
        let id: SpiffeId = web().parse().expect("id");
        let base = || ValidatedCsr::for_public_key(id.clone(), &p256().subject_public_key_info());
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let v = base()
            .expect("key")
            .with_names(&["server.dc1.consul".into(), "localhost".into()], &[ip])
            .expect("valid names");
        assert_eq!(v.dns_sans(), ["server.dc1.consul", "localhost"]);
        assert_eq!(v.ip_sans(), [ip]);
        let bad = base().expect("key").with_names(&["a..b".into()], &[]);
        assert!(matches!(bad, Err(CsrError::BadDnsName(_))), "{bad:?}");
    }

    #[test]
    fn accepted_csr_contents() {
        let p = policy();
        let v = validate_csr(&csr(p256(), vec![dns("web.local"), uri(&web())]), &p).expect("ok");
        assert_eq!(v.spiffe_id, web().parse::<SpiffeId>().expect("id"));
        assert_eq!(v.spki_der, p256().subject_public_key_info());
        assert_eq!(v.key_type, CsrKeyType::EcP256);
        assert!(!v.key_type.is_rsa());
        assert_eq!(v.dns_sans, vec!["web.local".to_string()]);
        assert!(v.ip_sans.is_empty());

        let v = validate_csr(&web_csr(p384()), &p).expect("ok");
        assert_eq!(v.key_type, CsrKeyType::EcP384);
        assert_eq!(v.spki_der, p384().subject_public_key_info());

        let v = validate_csr(&web_csr(rsa2048()), &p).expect("ok");
        assert_eq!(v.key_type, CsrKeyType::Rsa { bits: 2048 });
        assert!(v.key_type.is_rsa());
        let v = validate_csr(&web_csr(rsa4096()), &p).expect("ok");
        assert_eq!(v.key_type, CsrKeyType::Rsa { bits: 4096 });

        let agent: SpiffeId = format!("spiffe://{TD}/agent/client/dc/dc1/id/n1")
            .parse()
            .expect("id");
        let v = validate_csr(&uri_csr(&agent.to_string()), &p).expect("ok");
        assert_eq!(v.spiffe_id, agent);
    }

    /// Regression: requests with a wrong tag in a part the signature does
    /// not cover (the outer SEQUENCE as 0x10, the signature algorithm's OID
    /// as any tag) were accepted and signed. No single-byte tag change of a
    /// valid request may be accepted.
    #[test]
    fn no_byte_of_a_valid_request_can_be_retagged() {
        for key in [p256(), rsa2048()] {
            let good_der = der_of(&web_csr(key));
            assert!(validate_csr(&pem_of(&good_der), &policy()).is_ok());
            let mut accepted = Vec::new();
            for i in 0..good_der.len() {
                for tag in [
                    0x10u8, 0x31, 0x30, 0x04, 0x03, 0x05, 0x06, 0x13, 0x0c, 0xa0, 0x02,
                ] {
                    let mut m = good_der.clone();
                    if m[i] == tag {
                        continue;
                    }
                    m[i] = tag;
                    if validate_csr(&pem_of(&m), &policy()).is_ok() {
                        accepted.push((i, good_der[i], tag));
                    }
                }
            }
            assert!(
                accepted.is_empty(),
                "accepted (offset, was, now): {accepted:?}"
            );
        }
    }

    #[test]
    fn signature_parameters_are_what_the_algorithm_defines() {
        use x509_cert::der::{oid::ObjectIdentifier, Any, Tag};
        use x509_cert::spki::AlgorithmIdentifierOwned;
        let null = || Some(Any::null());
        let sequence = || Some(Any::new(Tag::Sequence, Vec::<u8>::new()).unwrap());
        for (oid, parameters, ok) in [
            ("1.2.840.10045.4.3.2", None, true),
            ("1.2.840.10045.4.3.3", None, true),
            ("1.2.840.10045.4.3.2", null(), false),
            ("1.2.840.113549.1.1.11", null(), true),
            ("1.2.840.113549.1.1.13", null(), true),
            ("1.2.840.113549.1.1.12", None, false),
            ("1.2.840.113549.1.1.10", sequence(), true),
            ("1.2.840.113549.1.1.10", null(), false),
            // Unknown here: refused later, by the signature check.
            ("1.2.840.113549.1.1.5", sequence(), true),
        ] {
            let alg = AlgorithmIdentifierOwned {
                oid: ObjectIdentifier::new_unwrap(oid),
                parameters,
            };
            let got = check_signature_parameters(&alg);
            assert_eq!(got.is_ok(), ok, "{oid}: {got:?}");
            if let Err(e) = got {
                assert!(e.to_string().contains(oid), "{e}");
            }
        }
    }

    #[test]
    fn strict_der_names_the_problem() {
        let mut m = der_of(&web_csr(p256()));
        m[0] = 0x10;
        let err = validate_csr(&pem_of(&m), &policy()).unwrap_err();
        assert!(matches!(err, CsrError::Malformed(_)), "{err:?}");
        assert!(err.to_string().contains("DER"), "{err}");
    }

    #[test]
    fn hostile_and_malformed_csrs() {
        let good = web_csr(p256());
        let good_der = der_of(&good);
        let body: String = good.lines().filter(|l| !l.starts_with("-----")).collect();

        let mut flipped_sig = good_der.clone();
        *flipped_sig.last_mut().expect("byte") ^= 0x01;
        let mut tampered_info = good_der.clone();
        let pos = good_der
            .windows(3)
            .position(|w| w == b"web")
            .expect("uri in der");
        tampered_info[pos + 2] = b'x'; // "wex": still a valid ID, no longer signed
        let mut trailing = good_der.clone();
        trailing.extend_from_slice(&[0, 0]);
        let truncated = &good_der[..good_der.len() - 10];

        // Wrong-key signature: key A's SPKI, signed by key B.
        let wrong_key =
            Raw::new(vec![ext_req(&[san_ext(&[gn_uri(&web())])])]).signed_by(p256_other());

        // SHA-1 signature, correct and by an allowed RSA-2048 key.
        let sha1 = {
            use rsa::pkcs8::DecodePrivateKey;
            let k = RsaCrateKey::new(
                rsa::RsaPrivateKey::from_pkcs8_der(&rsa2048().serialize_der()).expect("pkcs8"),
            );
            let raw = Raw {
                version: 0,
                spki: rsa2048().subject_public_key_info(),
                attrs: vec![ext_req(&[san_ext(&[gn_uri(&web())])])],
                sig_alg: "1.2.840.113549.1.1.5",
            };
            let info = raw.info();
            let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &info);
            raw.assemble(&info, &k.sign_with(SHA1_DIGEST_INFO, h.as_ref()))
        };
        // An ECDSA signature labelled as RSA.
        let mislabelled = Raw {
            sig_alg: "1.2.840.113549.1.1.11",
            ..Raw::new(vec![ext_req(&[san_ext(&[gn_uri(&web())])])])
        }
        .signed();

        let web_sans = || vec![ext_req(&[san_ext(&[gn_uri(&web())])])];
        let fake =
            |public: Vec<u8>, alg: &'static SignatureAlgorithm| web_csr(&FakeKey { public, alg });
        let mut big_modulus = vec![0xc5; 1024];
        big_modulus.insert(0, 0);
        let mut modulus_2048 = vec![0xc5; 256];
        modulus_2048.insert(0, 0);
        let pkcs1 = |n: &[u8], e: &[u8]| seq(&[&int(n), &int(e)]);
        let mut off_curve = vec![4u8];
        off_curve.extend_from_slice(&[0x11; 64]);
        let p256_point = p256().public_key_raw().to_vec();
        let mut compressed = vec![2 | (p256_point[64] & 1)];
        compressed.extend_from_slice(&p256_point[1..33]);
        let ext_req_oid = "1.2.840.113549.1.9.14";

        let n = check(vec![
            // 1. size
            ("huge input", "A".repeat(10 * 1024 * 1024), Want::Is(CsrError::TooLarge)),
            ("huge valid-looking PEM", format!("{good}{}", " ".repeat(64 * 1024)), Want::Is(CsrError::TooLarge)),
            // 2. armour
            ("empty string", String::new(), Want::Kind("BadPem")),
            ("only whitespace", " \n\t\r\n".into(), Want::Kind("BadPem")),
            ("raw base64 without armour", body.clone(), Want::Kind("BadPem")),
            ("raw DER", String::from_utf8_lossy(&good_der).into_owned(), Want::Kind("BadPem")),
            ("NEW CERTIFICATE REQUEST label", pem_with_label("NEW CERTIFICATE REQUEST", &good_der), Want::Kind("BadPem")),
            ("CERTIFICATE label", pem_with_label("CERTIFICATE", &good_der), Want::Kind("BadPem")),
            ("lower-case label", good.replace("CERTIFICATE REQUEST", "certificate request"), Want::Kind("BadPem")),
            ("two PEM blocks", format!("{good}{good}"), Want::Kind("BadPem")),
            ("text before the block", format!("hello\n{good}"), Want::Kind("BadPem")),
            ("text after the block", format!("{good}trailer\n"), Want::Kind("BadPem")),
            ("mismatched END label", good.replace("END CERTIFICATE REQUEST", "END CERTIFICATE"), Want::Kind("BadPem")),
            ("missing END line", good.replace("-----END CERTIFICATE REQUEST-----", ""), Want::Kind("BadPem")),
            ("garbage base64", "-----BEGIN CERTIFICATE REQUEST-----\n!!!!$$$$\n-----END CERTIFICATE REQUEST-----\n".into(), Want::Kind("BadPem")),
            ("base64 with bad length", good.replacen(&body[..4], &body[..3], 1), Want::Kind("BadPem")),
            ("base64 with inner padding", "-----BEGIN CERTIFICATE REQUEST-----\nMA==MA==\n-----END CERTIFICATE REQUEST-----\n".into(), Want::Kind("BadPem")),
            ("non-canonical base64", "-----BEGIN CERTIFICATE REQUEST-----\nMB==\n-----END CERTIFICATE REQUEST-----\n".into(), Want::Kind("BadPem")),
            ("empty body", "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n".into(), Want::Kind("BadPem")),
            ("RFC 1421 headers", good.replacen("-----\n", "-----\nProc-Type: 4,ENCRYPTED\n\n", 1), Want::Kind("BadPem")),
            ("NUL in body", good.replacen('\n', "\n\0", 1), Want::Kind("BadPem")),
            // 3. structure
            ("truncated DER", pem_of(truncated), Want::Kind("Malformed")),
            ("trailing bytes after DER", pem_of(&trailing), Want::Kind("Malformed")),
            ("random bytes", pem_of(&[0x42; 100]), Want::Kind("Malformed")),
            ("empty sequence", pem_of(&[0x30, 0x00]), Want::Kind("Malformed")),
            ("absurd length", pem_of(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00]), Want::Kind("Malformed")),
            ("version 2", Raw { version: 1, ..Raw::new(web_sans()) }.pem(), Want::Kind("Malformed")),
            ("two extensionRequest attributes", Raw::new(vec![ext_req(&[san_ext(&[gn_uri(&web())])]), ext_req(&[san_ext(&[gn_uri(&format!("spiffe://{TD}/agent/server/dc/dc1"))])])]).pem(), Want::Kind("Malformed")),
            ("SAN extension twice", Raw::new(vec![ext_req(&[san_ext(&[gn_uri(&web())]), san_ext(&[tlv(0x82, b"evil.example")])])]).pem(), Want::Kind("Malformed")),
            ("undecodable SAN extension", Raw::new(vec![ext_req(&[ext("2.5.29.17", &[0x30, 0x03, 0x86, 0x05, 0x41])])]).pem(), Want::Kind("Malformed")),
            ("undecodable basicConstraints", Raw::new(vec![ext_req(&[san_ext(&[gn_uri(&web())]), ext("2.5.29.19", &[0x30, 0x03, 0x01, 0x01])])]).pem(), Want::Kind("Malformed")),
            ("invalid UTF-8 in DNS SAN", raw_sans(vec![gn_uri(&web()), tlv(0x82, &[0xff, 0xfe, 0x41])]), Want::Kind("Malformed")),
            ("extensionRequest not a SET", Raw::new(vec![seq(&[&oid(ext_req_oid), &seq(&[])])]).pem(), Want::Kind("Malformed")),
            // 4. key allow-list
            ("Ed25519 key", web_csr(ed25519()), Want::Kind("KeyNotAllowed")),
            ("P-521 key", web_csr(p521()), Want::Kind("KeyNotAllowed")),
            ("RSA-1024 key", web_csr(rsa1024()), Want::Kind("KeyNotAllowed")),
            ("RSA-8192 key", fake(pkcs1(&big_modulus, &[1, 0, 1]), &rcgen::PKCS_RSA_SHA256), Want::Kind("KeyNotAllowed")),
            ("RSA even exponent", fake(pkcs1(&modulus_2048, &[4]), &rcgen::PKCS_RSA_SHA256), Want::Kind("KeyNotAllowed")),
            ("RSA exponent 1", fake(pkcs1(&modulus_2048, &[1]), &rcgen::PKCS_RSA_SHA256), Want::Kind("KeyNotAllowed")),
            ("RSA even modulus", {
                let mut even = modulus_2048.clone();
                *even.last_mut().expect("byte") = 0xc4;
                fake(pkcs1(&even, &[1, 0, 1]), &rcgen::PKCS_RSA_SHA256)
            }, Want::Kind("KeyNotAllowed")),
            ("RSA negative modulus", fake(pkcs1(&modulus_2048[1..], &[1, 0, 1]), &rcgen::PKCS_RSA_SHA256), Want::Kind("KeyNotAllowed")),
            ("RSA key is garbage", fake(vec![1, 2, 3], &rcgen::PKCS_RSA_SHA256), Want::Kind("KeyNotAllowed")),
            ("RSA params not NULL", Raw { spki: seq(&[&seq(&[&oid("1.2.840.113549.1.1.1"), &int(&[0])]), &bits(&pkcs1(&modulus_2048, &[1, 0, 1]))]), ..Raw::new(web_sans()) }.pem(), Want::Kind("KeyNotAllowed")),
            ("P-256 point off the curve", fake(off_curve, &rcgen::PKCS_ECDSA_P256_SHA256), Want::Kind("KeyNotAllowed")),
            ("P-256 point at infinity", fake(vec![0], &rcgen::PKCS_ECDSA_P256_SHA256), Want::Kind("KeyNotAllowed")),
            ("P-256 compressed point", fake(compressed, &rcgen::PKCS_ECDSA_P256_SHA256), Want::Kind("KeyNotAllowed")),
            ("P-256 point as P-384", fake(p256_point.clone(), &rcgen::PKCS_ECDSA_P384_SHA384), Want::Kind("KeyNotAllowed")),
            ("P-224 key", Raw { spki: ec_spki("1.3.132.0.33", &[4; 57]), ..Raw::new(web_sans()) }.pem(), Want::Kind("KeyNotAllowed")),
            ("secp256k1 key", Raw { spki: ec_spki("1.3.132.0.10", &p256_point), ..Raw::new(web_sans()) }.pem(), Want::Kind("KeyNotAllowed")),
            ("EC key without named curve", Raw { spki: seq(&[&seq(&[&oid("1.2.840.10045.2.1")]), &bits(&p256_point)]), ..Raw::new(web_sans()) }.pem(), Want::Kind("KeyNotAllowed")),
            ("EC key with explicit parameters", Raw { spki: seq(&[&seq(&[&oid("1.2.840.10045.2.1"), &seq(&[&int(&[1])])]), &bits(&p256_point)]), ..Raw::new(web_sans()) }.pem(), Want::Kind("KeyNotAllowed")),
            ("DSA key", Raw { spki: seq(&[&seq(&[&oid("1.2.840.10040.4.1"), &seq(&[&int(&[0x7f; 128]), &int(&[0x7f; 20]), &int(&[2])])]), &bits(&int(&[0x33; 128]))]), ..Raw::new(web_sans()) }.pem(), Want::Kind("KeyNotAllowed")),
            ("X25519 key", Raw { spki: seq(&[&seq(&[&oid("1.3.101.110")]), &bits(&[9; 32])]), ..Raw::new(web_sans()) }.pem(), Want::Kind("KeyNotAllowed")),
            ("key BIT STRING with unused bits", Raw { spki: seq(&[&seq(&[&oid("1.2.840.10045.2.1"), &oid("1.2.840.10045.3.1.7")]), &tlv(0x03, &[&[3u8][..], &p256_point[..64], &[p256_point[64] & 0xf8]].concat())]), ..Raw::new(web_sans()) }.pem(), Want::Kind("KeyNotAllowed")),
            ("key BIT STRING with non-DER unused bits", Raw { spki: seq(&[&seq(&[&oid("1.2.840.10045.2.1"), &oid("1.2.840.10045.3.1.7")]), &tlv(0x03, &[&[3u8][..], &p256_point[..64], &[p256_point[64] | 0x01]].concat())]), ..Raw::new(web_sans()) }.pem(), Want::Kind("Malformed")),
            // 5. proof of possession
            ("flipped signature byte", pem_of(&flipped_sig), Want::Is(CsrError::BadSignature)),
            ("tampered request info", pem_of(&tampered_info), Want::Is(CsrError::BadSignature)),
            ("signed by another key", pem_of(&wrong_key), Want::Is(CsrError::BadSignature)),
            ("SHA-1 signature", pem_of(&sha1), Want::Is(CsrError::BadSignature)),
            ("ECDSA signature labelled RSA", pem_of(&mislabelled), Want::Is(CsrError::BadSignature)),
            ("RSA-2048 key without possession", fake(pkcs1(&modulus_2048, &[1, 0, 1]), &rcgen::PKCS_RSA_SHA256), Want::Is(CsrError::BadSignature)),
            ("P-256 key without possession", fake(p256_point.clone(), &rcgen::PKCS_ECDSA_P256_SHA256), Want::Is(CsrError::BadSignature)),
            ("empty signature", pem_of(&{ let r = Raw::new(web_sans()); r.assemble(&r.info(), &[]) }), Want::Is(CsrError::BadSignature)),
            ("unknown signature algorithm", pem_of(&Raw { sig_alg: "1.2.3.4", ..Raw::new(web_sans()) }.signed()), Want::Is(CsrError::BadSignature)),
            // 6. CA requests
            ("CA:true requested", csr_with(p256(), vec![uri(&web())], |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)), Want::Is(CsrError::RequestsCa)),
            ("CA:true pathlen 0 requested", csr_with(p256(), vec![uri(&web())], |p| p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0))), Want::Is(CsrError::RequestsCa)),
            ("keyCertSign requested", csr_with(p256(), vec![uri(&web())], |p| p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign]), Want::Is(CsrError::RequestsCa)),
            // 7. SANs
            ("too many SANs", csr(p256(), std::iter::once(uri(&web())).chain((0..100).map(|i| dns(&format!("h{i}.example")))).collect()), Want::Is(CsrError::TooManySans(101))),
            ("too many URIs", csr(p256(), (0..150).map(|_| uri(&web())).collect()), Want::Is(CsrError::TooManySans(150))),
            ("email SAN", csr(p256(), vec![uri(&web()), email("a@example.com")]), Want::Is(CsrError::Email)),
            ("email SAN only", csr(p256(), vec![email("a@example.com")]), Want::Is(CsrError::Email)),
            ("IP SAN", csr(p256(), vec![uri(&web()), SanType::IpAddress("10.0.0.1".parse().expect("ip"))]), Want::Is(CsrError::IpAddress)),
            ("otherName SAN", csr(p256(), vec![uri(&web()), SanType::OtherName((vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3], rcgen::OtherNameValue::Utf8String("a@b".into())))]), Want::Is(CsrError::UnsupportedSan)),
            ("directoryName SAN", raw_sans(vec![gn_uri(&web()), tlv(0xa4, &seq(&[&set(&[&seq(&[&oid("2.5.4.3"), &tlv(0x0c, b"x")])])]))]), Want::Is(CsrError::UnsupportedSan)),
            ("registeredID SAN", raw_sans(vec![gn_uri(&web()), tlv(0x88, &oid("1.2.3.4")[2..])]), Want::Is(CsrError::UnsupportedSan)),
            ("DNS with underscore", csr(p256(), vec![uri(&web()), dns("foo_bar.example")]), Want::Kind("BadDnsName")),
            ("DNS leading hyphen", csr(p256(), vec![uri(&web()), dns("-a.example")]), Want::Kind("BadDnsName")),
            ("DNS empty label", csr(p256(), vec![uri(&web()), dns("a..example")]), Want::Kind("BadDnsName")),
            ("DNS trailing dot", csr(p256(), vec![uri(&web()), dns("a.example.")]), Want::Kind("BadDnsName")),
            ("DNS double wildcard", csr(p256(), vec![uri(&web()), dns("*.*.example")]), Want::Kind("BadDnsName")),
            ("DNS inner wildcard", csr(p256(), vec![uri(&web()), dns("a.*.example")]), Want::Kind("BadDnsName")),
            ("DNS bare wildcard", csr(p256(), vec![uri(&web()), dns("*")]), Want::Kind("BadDnsName")),
            ("DNS label of 64", csr(p256(), vec![uri(&web()), dns(&format!("{}.example", "a".repeat(64)))]), Want::Kind("BadDnsName")),
            ("DNS name of 254", csr(p256(), vec![uri(&web()), dns(&format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62)))]), Want::Kind("BadDnsName")),
            ("DNS empty", csr(p256(), vec![uri(&web()), dns("")]), Want::Kind("BadDnsName")),
            ("DNS with space", csr(p256(), vec![uri(&web()), dns("a b.example")]), Want::Kind("BadDnsName")),
            ("DNS that is a URI", csr(p256(), vec![uri(&web()), dns(&web())]), Want::Kind("BadDnsName")),
            ("DNS ok at the limits", csr(p256(), vec![uri(&web()), dns(&format!("*.{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(59)))]), Want::Ok),
            // 8. URIs and SPIFFE IDs
            ("no SAN at all", csr(p256(), vec![]), Want::Is(CsrError::UriCount(0))),
            ("DNS but no URI", csr(p256(), vec![dns("web.example")]), Want::Is(CsrError::UriCount(0))),
            ("two URIs", csr(p256(), vec![uri(&web()), uri(&format!("spiffe://{TD}/agent/server/dc/dc1"))]), Want::Is(CsrError::UriCount(2))),
            ("same URI twice", csr(p256(), vec![uri(&web()), uri(&web())]), Want::Is(CsrError::UriCount(2))),
            ("upper-case trust domain", uri_csr("spiffe://OTHER.consul/ns/default/dc/dc1/svc/web"), Want::Kind("BadSpiffeId")),
            ("upper-case scheme", uri_csr(&web().replace("spiffe", "SPIFFE")), Want::Kind("BadSpiffeId")),
            ("upper-case service", uri_csr(&web().replace("/web", "/Web")), Want::Kind("BadSpiffeId")),
            ("path traversal", uri_csr(&format!("spiffe://{TD}/ns/default/dc/dc1/svc/../../agent/server/dc/dc1")), Want::Kind("BadSpiffeId")),
            ("percent-encoded dots", uri_csr(&format!("spiffe://{TD}/ns/default/dc/dc1/svc/%2e%2e")), Want::Kind("BadSpiffeId")),
            ("query", uri_csr(&format!("{}?admin=1", web())), Want::Kind("BadSpiffeId")),
            ("fragment", uri_csr(&format!("{}#x", web())), Want::Kind("BadSpiffeId")),
            ("port", uri_csr(&format!("spiffe://{TD}:443/ns/default/dc/dc1/svc/web")), Want::Kind("BadSpiffeId")),
            ("userinfo", uri_csr(&format!("spiffe://admin@{TD}/ns/default/dc/dc1/svc/web")), Want::Kind("BadSpiffeId")),
            ("trailing slash", uri_csr(&format!("{}/", web())), Want::Kind("BadSpiffeId")),
            ("over-long ID", uri_csr(&format!("{}{}", web(), "a".repeat(3000))), Want::Kind("BadSpiffeId")),
            ("not spiffe", uri_csr("https://example.com/web"), Want::Kind("BadSpiffeId")),
            ("CA identity", uri_csr(&format!("spiffe://{TD}")), Want::Kind("BadSpiffeId")),
            ("unknown shape", uri_csr(&format!("spiffe://{TD}/ns/default/dc/dc1/svc/web/admin")), Want::Kind("BadSpiffeId")),
            ("other trust domain", uri_csr("spiffe://other.consul/ns/default/dc/dc1/svc/web"), Want::Is(CsrError::WrongTrustDomain { got: "other.consul".into(), want: TD.into() })),
            ("other datacenter", uri_csr(&format!("spiffe://{TD}/ns/default/dc/dc2/svc/web")), Want::Is(CsrError::WrongDatacenter { got: "dc2".into(), want: "dc1".into() })),
            ("other datacenter (server)", uri_csr(&format!("spiffe://{TD}/agent/server/dc/dc9")), Want::Is(CsrError::WrongDatacenter { got: "dc9".into(), want: "dc1".into() })),
        ]);
        assert!(n >= 100, "{n} cases");
    }

    #[test]
    fn policy_knobs() {
        // max_pem_bytes: exactly at the limit passes, one byte over fails.
        let good = web_csr(p256());
        let p = CsrPolicy {
            max_pem_bytes: good.len(),
            ..policy()
        };
        check_with("at size limit", &good, &p, &Want::Ok);
        let p = CsrPolicy {
            max_pem_bytes: good.len() - 1,
            ..policy()
        };
        check_with("over size limit", &good, &p, &Want::Is(CsrError::TooLarge));

        // max_sans counts every SAN, URIs included.
        let sans = |n: usize| -> String {
            csr(
                p256(),
                std::iter::once(uri(&web()))
                    .chain((1..n).map(|i| dns(&format!("h{i}.example"))))
                    .collect(),
            )
        };
        let p = CsrPolicy {
            max_sans: 3,
            ..policy()
        };
        check_with("3 SANs, max 3", &sans(3), &p, &Want::Ok);
        check_with(
            "4 SANs, max 3",
            &sans(4),
            &p,
            &Want::Is(CsrError::TooManySans(4)),
        );
        check_with("100 SANs, default max", &sans(100), &policy(), &Want::Ok);

        // allow_ip_sans.
        let ips = csr(
            p256(),
            vec![
                uri(&web()),
                SanType::IpAddress("10.0.0.1".parse().expect("ip")),
                SanType::IpAddress("::1".parse().expect("ip")),
            ],
        );
        check_with(
            "IP SANs refused",
            &ips,
            &policy(),
            &Want::Is(CsrError::IpAddress),
        );
        let p = CsrPolicy {
            allow_ip_sans: true,
            ..policy()
        };
        let v = check_with("IP SANs allowed", &ips, &p, &Want::Ok).expect("ok");
        assert_eq!(
            v.ip_sans,
            vec![
                "10.0.0.1".parse::<IpAddr>().expect("ip"),
                "::1".parse().expect("ip")
            ]
        );
        let bad_ip = raw_sans(vec![gn_uri(&web()), tlv(0x87, &[10, 0, 0, 1, 5])]);
        check_with("IP SAN of 5 bytes", &bad_ip, &p, &Want::Kind("Malformed"));
        check_with(
            "email still refused",
            &csr(p256(), vec![uri(&web()), email("a@b.c")]),
            &p,
            &Want::Is(CsrError::Email),
        );

        // Trust domain and datacenter come from the policy.
        let other_td: TrustDomain = "other.consul".parse().expect("td");
        let p = CsrPolicy::new(other_td, "dc1");
        check_with(
            "policy trust domain",
            &good,
            &p,
            &Want::Is(CsrError::WrongTrustDomain {
                got: TD.into(),
                want: "other.consul".into(),
            }),
        );
        let p = CsrPolicy::new(TD.parse().expect("td"), "east");
        check_with(
            "policy datacenter",
            &good,
            &p,
            &Want::Is(CsrError::WrongDatacenter {
                got: "dc1".into(),
                want: "east".into(),
            }),
        );
    }

    #[test]
    fn consul_error_strings() {
        assert_eq!(
            CsrError::UriCount(0).to_string(),
            "CSR SAN contains an invalid number of URIs: 0"
        );
        assert_eq!(
            CsrError::UriCount(2).to_string(),
            "CSR SAN contains an invalid number of URIs: 2"
        );
        assert_eq!(
            CsrError::Email.to_string(),
            "CSR SAN does not allow specifying email addresses"
        );
        assert_eq!(
            CsrError::WrongTrustDomain {
                got: "a.consul".into(),
                want: "b.consul".into()
            }
            .to_string(),
            "SPIFFE ID in CSR from a different trust domain: a.consul, we are b.consul"
        );
        assert_eq!(
            CsrError::WrongDatacenter {
                got: "dc2".into(),
                want: "dc1".into()
            }
            .to_string(),
            "SPIFFE ID in CSR from a different datacenter: dc2, we are dc1"
        );
        // A bad SPIFFE ID reports the parser's message.
        let e = validate_csr(&uri_csr(&format!("{}?x", web())), &policy()).expect_err("query");
        assert!(e.to_string().starts_with("invalid SPIFFE ID: "), "{e}");
        // Key errors say why.
        let e = validate_csr(&web_csr(rsa1024()), &policy()).expect_err("rsa1024");
        assert!(e.to_string().contains("1024"), "{e}");
        let e = validate_csr(&web_csr(p521()), &policy()).expect_err("p521");
        assert!(
            e.to_string().contains("secp521r1") || e.to_string().contains("1.3.132.0.35"),
            "{e}"
        );
        let e = validate_csr(&web_csr(ed25519()), &policy()).expect_err("ed25519");
        assert!(e.to_string().contains("not allowed"), "{e}");
    }

    /// No input panics: every single-byte corruption and every truncation of
    /// a valid request, in DER and in PEM.
    #[test]
    fn never_panics() {
        let p = CsrPolicy {
            allow_ip_sans: true,
            ..policy()
        };
        let good = csr(
            p256(),
            vec![
                uri(&web()),
                dns("a.example"),
                SanType::IpAddress("10.0.0.1".parse().expect("ip")),
            ],
        );
        let der = der_of(&good);
        for i in 0..der.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut d = der.clone();
                d[i] ^= mask;
                let _ = validate_csr(&pem_of(&d), &p);
            }
            let _ = validate_csr(&pem_of(&der[..i]), &p);
        }
        for i in 0..good.len() {
            if good.is_char_boundary(i) {
                let _ = validate_csr(&good[..i], &p);
                let _ = validate_csr(&good[i..], &p);
            }
        }
        assert!(validate_csr(&good, &p).is_ok());
    }

    /// The armour's base64 is strict: these cases pin what the `pem` crate
    /// must keep refusing for `decode_pem` to hold its promise.
    #[test]
    fn pem_armour_is_strict() {
        let armour = |body: &str| {
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"
            )
        };
        for (body, want) in [
            ("TWFu", &b"Man"[..]),
            ("TWE=", b"Ma"),
            ("TQ==", b"M"),
            ("TW\r\nFu TQ\t==", b"ManM"),
            ("+/+/", &[0xfb, 0xff, 0xbf]),
        ] {
            assert_eq!(decode_pem(&armour(body)).as_deref(), Ok(want), "{body:?}");
        }
        for bad in [
            "",
            "T",
            "TWF",
            "TQ=",
            "T===",
            "====",
            "TR==",
            "TWF=TWFu",
            "TW-u",
            "TW_u",
            "TWFu=",
            "TW\u{a0}Fu",
            "TW\u{b}Fu",
            "TW\u{c}Fu",
            "TWFu\n\nTWFu",
            "TWFu\0",
        ] {
            let got = decode_pem(&armour(bad));
            assert!(matches!(got, Err(CsrError::BadPem(_))), "{bad:?}: {got:?}");
        }
    }

    /// Whatever the armour accepts, the `pem` crate (laxer) reads as the
    /// same block: edits of a good request at every place, with each kind
    /// of character the armour allows or refuses.
    #[test]
    fn what_the_armour_accepts_the_pem_crate_reads_the_same() {
        let good = web_csr(p256());
        let mut accepted = 0;
        for at in 0..=good.len() {
            for edit in [
                "", "\n", "\n\n", " ", "\r\n", "-", "=", "A", "Z", ":", "\u{a0}",
            ] {
                for removed in [0, 1] {
                    let end = (at + removed).min(good.len());
                    let input = format!("{}{edit}{}", &good[..at], &good[end..]);
                    let Ok(der) = decode_pem(&input) else {
                        continue;
                    };
                    accepted += 1;
                    let read = ::pem::parse(&input).expect("the crate reads what we accept");
                    assert_eq!(read.tag(), CSR_PEM_LABEL, "{input:?}");
                    assert_eq!(read.contents(), der, "{input:?}");
                }
            }
        }
        // Whitespace edits in the body and around the block are accepted.
        assert!(accepted > good.len(), "{accepted}");
    }

    #[test]
    fn pem_errors_say_what_is_wrong() {
        let good = web_csr(p256());
        for (input, want) in [
            (String::new(), "empty input"),
            ("hello".into(), "no PEM block found"),
            (format!("{good}{good}"), "exactly one PEM block, found 2"),
            (format!("x\n{good}"), "text before the PEM block"),
            (format!("{good}x"), "text after the PEM block"),
            (
                format!("{good}-----END CERTIFICATE REQUEST-----"),
                "text after the PEM block",
            ),
            (
                good.replace("-----END CERTIFICATE REQUEST-----", ""),
                "missing or unterminated",
            ),
            (
                good.replace("END CERTIFICATE REQUEST", "END CERTIFICATE"),
                "END label does not match",
            ),
            (
                good.replace("CERTIFICATE REQUEST", "CERTIFICATE"),
                "expected a CERTIFICATE REQUEST block, found \"CERTIFICATE\"",
            ),
            (
                good.replacen("-----\n", "-----\nProc-Type: 4,ENCRYPTED\n\n", 1),
                "invalid character \":\"",
            ),
            (good.replacen("MIIB", "MI*B", 1), "invalid character \"*\""),
            // Not ASCII: named whole, not by its first byte.
            (
                good.replacen("MIIB", "MI\u{a0}B", 1),
                r#"invalid character "\u{a0}""#,
            ),
            (good.replacen("MIIB", "MIé", 1), "invalid character \"é\""),
            (good.replacen("MIIB", "MII", 1), "invalid base64 body"),
        ] {
            let got = decode_pem(&input).expect_err(want).to_string();
            assert!(got.contains(want), "{input:?}: want {want:?}, got {got:?}");
        }
    }

    #[test]
    fn dns_names() {
        for good in [
            "a",
            "a.b",
            "A.B",
            "xn--bcher-kva.example",
            "1.2.3.4",
            "*.a",
            "a-b.c",
            &"a".repeat(63),
        ] {
            assert!(is_valid_dns_name(good), "{good:?} rejected");
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "-a",
            "a-",
            "a_b",
            "*",
            "*.",
            "*.*.a",
            "a.*",
            "**.a",
            "é.a",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_dns_name(bad), "{bad:?} accepted");
        }
    }
}
