//! Validation of certificate signing requests (SPEC §3). Every rule here has
//! a passing and a failing test.
//!
//! STUB: signatures fixed, bodies to be completed.

use crate::spiffe::{SpiffeId, TrustDomain};
use std::net::IpAddr;

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
/// nothing else the requester asked for can reach the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedCsr {
    pub spiffe_id: SpiffeId,
    pub spki_der: Vec<u8>,
    pub key_type: CsrKeyType,
    pub dns_sans: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
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
}

/// Checks `pem` against every rule of SPEC §3 and returns what may be signed.
pub fn validate_csr(pem: &str, policy: &CsrPolicy) -> Result<ValidatedCsr, CsrError> {
    let _ = policy;
    if pem.len() > policy.max_pem_bytes {
        return Err(CsrError::TooLarge);
    }
    Err(CsrError::Malformed("not implemented".into()))
}
