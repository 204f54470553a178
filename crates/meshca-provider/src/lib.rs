//! The CA provider plug-in boundary and the built-in provider.
//!
//! A provider is where CA keys live and signatures happen. The CA manager in
//! `meshca-server` drives it; the provider never touches the store or HTTP.
//! The trait has Consul's shape (generate a CA chain, sign leaves and
//! intermediates, cross-sign, secondary-datacenter CSR handling) so that
//! rotation and the Vault provider plug in without changing callers.
//!
//! Architecture Invariant: every certificate a provider returns has been
//! re-parsed and checked ([`verify`]) before it is returned.

pub mod builtin;
pub mod crosssign;
pub mod profile;
pub mod verify;

use meshca_core::csr::ValidatedCsr;
use meshca_core::{CaConfig, KeySpec, ProviderKind, SecretBytes, TrustDomain};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

pub use builtin::BuiltinProvider;

/// How the caller must react to a provider failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider does not implement this operation (a capability, not a bug).
    #[error("the {provider} CA provider does not support {operation}")]
    Unsupported {
        provider: &'static str,
        operation: &'static str,
    },
    /// No CA has been generated or restored yet.
    #[error("the CA provider is not initialised")]
    NotInitialised,
    /// The caller supplied something unusable (e.g. a bring-your-own root).
    #[error("{0}")]
    InvalidInput(String),
    /// The backing system (e.g. Vault) is unreachable or refused.
    #[error("CA provider unavailable: {0}")]
    Unavailable(String),
    /// Key generation or signing failed, or a certificate failed the
    /// provider's own post-signing check.
    #[error("CA provider error: {0}")]
    Internal(String),
}

impl ProviderError {
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }
}

/// What a provider needs to create a new CA.
#[derive(Debug, Clone)]
pub struct CaRequest {
    pub cluster_id: Uuid,
    pub trust_domain: TrustDomain,
    pub config: CaConfig,
    pub now: OffsetDateTime,
}

/// A CA a provider generated (or restored): the root, the certificate that
/// signs leaves, and what must be persisted to restore it later.
#[derive(Debug, Clone)]
pub struct CaMaterial {
    pub root_pem: String,
    pub signing_pem: String,
    pub key_spec: KeySpec,
    /// Key handle → PKCS#8 DER. Empty for providers that keep keys elsewhere.
    pub private_keys: BTreeMap<String, SecretBytes>,
    /// Public bookkeeping the provider needs to restore itself.
    pub provider_state: BTreeMap<String, String>,
}

/// A leaf to sign: the validated CSR plus the validity and serial the CA
/// manager chose. The provider builds the certificate from its own template;
/// only the public key and names come from the request.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    pub csr: ValidatedCsr,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub serial: Vec<u8>,
}

/// The CA provider plug-in boundary (object safe). Methods are synchronous and
/// may be slow (key generation, network); callers run them off the async
/// runtime. Optional operations return [`ProviderError::Unsupported`].
pub trait CaProvider: Send + Sync + 'static {
    fn kind(&self) -> ProviderKind;

    /// Whether [`CaProvider::cross_sign_ca`] works: a capability flag read
    /// before a rotation, so that a provider that cannot cross-sign fails the
    /// configuration change cleanly instead of mid-rotation.
    fn supports_cross_signing(&self) -> bool;

    /// Creates a new root and its signing intermediate and makes them this
    /// provider's active CA (Consul's `GenerateCAChain`).
    fn generate_ca(&self, req: &CaRequest) -> Result<CaMaterial, ProviderError>;

    /// Makes previously generated (and persisted) material active again
    /// after a restart, without creating keys.
    fn restore(&self, material: &CaMaterial) -> Result<(), ProviderError>;

    /// The certificate that signs leaves now (PEM).
    fn active_signing_cert(&self) -> Result<String, ProviderError>;

    /// Signs a leaf (PEM), checked against the SVID profile and chain.
    fn sign_leaf(&self, req: &LeafRequest) -> Result<String, ProviderError>;

    /// Signs a secondary datacenter's intermediate CSR with the root (PEM).
    fn sign_intermediate(
        &self,
        csr_pem: &str,
        now: OffsetDateTime,
    ) -> Result<String, ProviderError>;

    /// Signs another CA's certificate with this provider's root, keeping its
    /// subject, key, SKID and SANs (rotation step 2).
    fn cross_sign_ca(
        &self,
        cert_pem: &str,
        not_after: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<String, ProviderError>;

    /// Creates a new signing intermediate (new key, same root) for renewal at
    /// half-life. Returns the material to persist; it becomes active only
    /// when the caller passes it to [`CaProvider::restore`] after committing.
    fn renew_intermediate(&self, req: &CaRequest) -> Result<CaMaterial, ProviderError>;

    /// Secondary datacenters: a CSR for a new intermediate key (PEM).
    fn generate_intermediate_csr(&self) -> Result<String, ProviderError>;

    /// Secondary datacenters: install an intermediate signed by the primary.
    fn set_intermediate(&self, pem: &str) -> Result<(), ProviderError>;

    /// Public bookkeeping to persist (key handles, paths).
    fn state(&self) -> BTreeMap<String, String>;

    /// Releases external resources when the provider is replaced.
    fn cleanup(&self) -> Result<(), ProviderError>;
}
