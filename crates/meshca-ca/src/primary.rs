//! What a secondary datacenter needs from its primary, as a plug-in
//! boundary: the primary's roots (a blocking query, so that a rotation in
//! the primary reaches the secondary at once) and signing the secondary's
//! intermediate. The engine speaks to this trait; the HTTP client that
//! implements it lives at the edge (`meshca-server`).

use crate::CaError;
use async_trait::async_trait;
use meshca_core::TrustDomain;
use std::time::Duration;

/// One of the primary's roots, as its roots endpoint publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryRoot {
    pub id: String,
    pub root_cert: String,
    /// The primary's chain for this root: cross-signed certificate first.
    pub intermediate_certs: Vec<String>,
    pub active: bool,
}

/// The primary's trust bundle at `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryRoots {
    pub index: u64,
    pub trust_domain: TrustDomain,
    pub active_root_id: String,
    pub roots: Vec<PrimaryRoot>,
}

impl PrimaryRoots {
    pub fn active(&self) -> Option<&PrimaryRoot> {
        self.roots.iter().find(|r| r.active)
    }
}

/// The primary datacenter, seen from a secondary.
#[async_trait]
pub trait Primary: Send + Sync + 'static {
    /// The primary's roots once their index is above `after` (or when
    /// `wait` has passed: then the current ones).
    async fn roots(&self, after: u64, wait: Duration) -> Result<PrimaryRoots, CaError>;

    /// The primary's signature over our intermediate CSR (PEM in, PEM out).
    /// A refusal by the primary is `Rejected` with its message; an
    /// unreachable primary is `Unavailable`.
    async fn sign_intermediate(&self, csr_pem: &str) -> Result<String, CaError>;
}
