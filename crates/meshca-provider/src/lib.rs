//! The CA provider plug-in boundary and the built-in provider.
//!
//! A provider is where CA keys live and signatures happen. Two small traits
//! make the boundary, shaped so that a remote provider (Vault's PKI engine)
//! implements them as naturally as the built-in one:
//!
//! - [`CaProvider`] creates CAs and opens stored ones. It *stages*: a new
//!   root and intermediate come back as inert [`CaMaterial`]; only the CA
//!   engine, after validating, commits and publishes them.
//! - [`CaKeys`] is a handle on one CA's keys (root + signing intermediate).
//!   It is immutable: a renewed intermediate is a new handle, never a
//!   mutation of this one.
//!
//! [`Signer`] wraps a `CaKeys` with the certificates that go with it (the
//! chain appended to leaves, the SigningKeyID, NotAfter) and checks every
//! leaf after signing. The engine publishes one `Signer` value atomically
//! with the roots it belongs to.
//!
//! Every method that may do slow work (key generation, RSA signing, a
//! network round trip) is async; the built-in provider moves its CPU work
//! off the async runtime itself, a remote one awaits its I/O. Dropping the
//! future cancels the call.
//!
//! Architecture Invariant: every certificate a provider hands out has been
//! re-parsed and checked ([`verify`]) before anyone else sees it.

pub mod builtin;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod crosssign;
pub mod profile;
pub mod signer;
pub mod verify;

use async_trait::async_trait;
use meshca_core::csr::{ValidatedCsr, ValidatedIntermediateCsr};
use meshca_core::{CaConfig, KeySpec, SecretBytes, Serial, TrustDomain};
use std::collections::BTreeMap;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

pub use builtin::BuiltinProvider;
pub use meshca_core::state::CaMaterial;
pub use signer::Signer;

/// How the caller must react to a provider failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider does not implement this operation (a capability, not a bug).
    #[error("the {provider} CA provider does not support {operation}")]
    Unsupported {
        provider: &'static str,
        operation: &'static str,
    },
    /// The caller supplied something unusable (e.g. a bring-your-own root).
    #[error("{0}")]
    InvalidInput(String),
    /// The backing system (e.g. Vault) is unreachable or refused; retry later.
    #[error("CA provider unavailable: {0}")]
    Unavailable(String),
    /// Key generation or signing failed, or a certificate failed the
    /// post-signing check.
    #[error("CA provider error: {0}")]
    Internal(String),
}

impl ProviderError {
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }
}

/// What a provider needs to create a CA (or a new intermediate for one).
#[derive(Debug, Clone)]
pub struct CaRequest {
    pub cluster_id: Uuid,
    pub trust_domain: TrustDomain,
    pub config: CaConfig,
    pub now: OffsetDateTime,
}

/// A leaf to sign: the validated request plus the validity the engine chose.
/// The provider builds the certificate from its own template (only the
/// public key and the names come from the request) and picks the serial.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    pub csr: ValidatedCsr,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// A secondary datacenter's intermediate to sign with the root: its
/// validated CSR and the validity the engine chose.
#[derive(Debug, Clone)]
pub struct IntermediateRequest {
    pub csr: ValidatedIntermediateCsr,
    pub cluster_id: Uuid,
    pub trust_domain: TrustDomain,
    pub now: OffsetDateTime,
    /// Capped by the provider at its root's NotAfter.
    pub not_after: OffsetDateTime,
}

/// A key staged for an intermediate that another CA will sign: a secondary
/// datacenter's, signed by the primary's root. Inert until the engine has
/// the certificate, checks it and commits it.
#[derive(Debug, Clone)]
pub struct StagedIntermediate {
    /// The CSR to send (CA with pathLen 0, the trust domain's URI SAN).
    pub csr_pem: String,
    /// The staged key's public key, to check the signed certificate against.
    pub spki_der: Vec<u8>,
    pub key_spec: KeySpec,
    /// Key handle → PKCS#8 DER, as in [`CaMaterial`].
    pub private_keys: BTreeMap<String, SecretBytes>,
    pub provider_state: BTreeMap<String, String>,
}

impl StagedIntermediate {
    /// The material of this key once `signed_pem` (signed by the root
    /// `root_pem`) certifies it: what [`CaProvider::open`] takes.
    pub fn into_material(self, root_pem: &str, signed_pem: &str) -> CaMaterial {
        CaMaterial {
            root_pem: root_pem.to_string(),
            signing_pem: signed_pem.to_string(),
            key_spec: self.key_spec,
            private_keys: self.private_keys,
            provider_state: self.provider_state,
        }
    }
}

/// A leaf as a provider signed it, with the serial it chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedLeaf {
    pub der: Vec<u8>,
    pub serial: Serial,
}

/// Creates and opens CAs (object safe). Implementations keep no "current
/// CA": everything they make is returned as a value.
#[async_trait]
pub trait CaProvider: Send + Sync + 'static {
    /// Whether [`CaKeys::cross_sign_ca`] works: read before a rotation, so
    /// that a provider that cannot cross-sign fails the configuration change
    /// cleanly instead of mid-rotation.
    fn supports_cross_signing(&self) -> bool;

    /// Creates a new root and its signing intermediate (Consul's
    /// `GenerateCAChain`) and returns them staged: nothing becomes live.
    async fn generate_ca(&self, req: &CaRequest) -> Result<CaMaterial, ProviderError>;

    /// Stages a new intermediate key whose certificate another CA signs (a
    /// secondary datacenter's, signed by the primary's root): the key and
    /// its CSR, with the key settings of `req.config`. Material made from
    /// it holds no root key: [`CaProvider::open`] then gives keys that sign
    /// leaves only.
    async fn stage_intermediate(
        &self,
        req: &CaRequest,
    ) -> Result<StagedIntermediate, ProviderError>;

    /// Opens the keys of stored or staged material, creating none. Each key
    /// must match its certificate.
    async fn open(&self, material: &CaMaterial) -> Result<Arc<dyn CaKeys>, ProviderError>;

    /// Releases what this provider holds outside meshca once a rotation has
    /// replaced it with a provider configured by `successor`.
    async fn cleanup(&self, successor: &CaConfig) -> Result<(), ProviderError>;
}

/// One CA's keys at its provider: the root signs CA certificates, the
/// signing intermediate signs leaves. Immutable once opened.
#[async_trait]
pub trait CaKeys: Send + Sync + 'static {
    /// Signs a leaf from the template.
    async fn sign_leaf(&self, req: &LeafRequest) -> Result<SignedLeaf, ProviderError>;

    /// Signs another CA's certificate with this root, keeping its subject,
    /// key, SKID and SANs (the cross-signature of a root rotation).
    async fn cross_sign_ca(
        &self,
        cert_pem: &str,
        not_after: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<String, ProviderError>;

    /// Creates a new signing intermediate (new key, same root), staged.
    async fn renew_intermediate(&self, req: &CaRequest) -> Result<CaMaterial, ProviderError>;

    /// Signs a secondary datacenter's intermediate with this root, from our
    /// intermediate template (CA, pathLen 0, the trust domain's URI SAN, a
    /// SKID from the request's key), ending at `not_after` or the root's
    /// NotAfter, whichever comes first. Returns the PEM certificate.
    async fn sign_intermediate(&self, req: &IntermediateRequest) -> Result<String, ProviderError>;

    /// The same keys as [`LocalKeys`] when they sign in this process (a
    /// capability, `None` by default): the caller then signs and checks a
    /// leaf in one step off the async runtime instead of one per await.
    fn local(&self) -> Option<Arc<dyn LocalKeys>> {
        None
    }
}

/// Keys that sign synchronously in this process (the built-in provider's).
pub trait LocalKeys: Send + Sync + 'static {
    /// [`CaKeys::sign_leaf`], on the calling thread: call it off the async
    /// runtime.
    fn sign_leaf_now(&self, req: &LeafRequest) -> Result<SignedLeaf, ProviderError>;

    /// Whether a leaf signature takes tens of microseconds (EC keys) rather
    /// than milliseconds (RSA). Such keys sign on the async worker that
    /// took the request: handing the work to a blocking thread costs about
    /// as much as the signature itself.
    fn signs_in_microseconds(&self) -> bool;
}

/// Runs CPU-heavy provider work (key generation, signing) off the async
/// runtime's workers.
pub(crate) async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
) -> Result<T, ProviderError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| ProviderError::Internal(format!("signing task failed: {e}")))?
}
