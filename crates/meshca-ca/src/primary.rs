//! What a secondary datacenter needs from its primary, as a plug-in
//! boundary: the primary's roots (a blocking query, so that a rotation in
//! the primary reaches the secondary at once) and signing the secondary's
//! intermediate. The engine speaks to this trait; the HTTP client that
//! implements it lives at the edge (`meshca-server`).

use crate::CaError;
use async_trait::async_trait;
use std::time::Duration;

pub use meshca_core::secondary::{PrimaryRoot, PrimaryRoots};

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
