//! The engine's errors, grouped by how a caller must react. The HTTP server
//! maps each variant to a status in one place; nothing here knows HTTP.

use meshca_core::config::ConfigError;
use meshca_core::csr::CsrError;
use meshca_core::rotation::PlanError;
use meshca_provider::ProviderError;
use meshca_store::StoreError;

/// How a caller reacts to a [`CaError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// The request is wrong: fix it, do not retry as is.
    FixRequest,
    /// Another change is in progress: retry after it.
    RetryLater,
    /// A dependency (store, provider) cannot serve now: retry later.
    Unavailable,
    /// A bug or corrupt data: nothing the caller can do.
    Bug,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
    #[error(transparent)]
    InvalidCsr(#[from] CsrError),
    /// The request cannot be honoured as asked (e.g. a root already trusted).
    #[error("{0}")]
    Rejected(String),
    /// A request only the primary datacenter serves (Consul's wording).
    #[error("not the primary datacenter")]
    NotPrimary,
    #[error("Provider State is read-only. It must be omitted or identical to the current value")]
    ProviderStateReadOnly,
    #[error("The current CA Provider does not support cross-signing. You can try again with ForceWithoutCrossSigningSet but this may cause disruption - see documentation for more.")]
    CrossSigningUnsupported,
    /// The requester may not have what it asked for; the text says which
    /// permission it lacks.
    #[error("Permission denied: {0}")]
    Denied(String),
    /// Another writer holds the CA (Consul's wording).
    #[error("CA is already in state \"{0}\"")]
    Busy(&'static str),
    /// The store could not read or write; memory is as it was before.
    #[error("{0}")]
    Store(StoreError),
    /// The provider or the signing certificate cannot serve now.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl CaError {
    pub fn reaction(&self) -> Reaction {
        match self {
            Self::InvalidConfig(_)
            | Self::InvalidCsr(_)
            | Self::Rejected(_)
            | Self::ProviderStateReadOnly
            | Self::NotPrimary
            | Self::CrossSigningUnsupported
            | Self::Denied(_) => Reaction::FixRequest,
            Self::Busy(_) => Reaction::RetryLater,
            Self::Store(_) | Self::Unavailable(_) => Reaction::Unavailable,
            Self::Internal(_) => Reaction::Bug,
        }
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<ProviderError> for CaError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::InvalidInput(m) => Self::Rejected(m),
            ProviderError::Unsupported { .. } => Self::Rejected(e.to_string()),
            ProviderError::Unavailable(_) => Self::Unavailable(e.to_string()),
            ProviderError::Internal(m) => Self::Internal(m),
        }
    }
}

impl From<StoreError> for CaError {
    fn from(e: StoreError) -> Self {
        match e {
            // Another writer committed first.
            StoreError::Conflict { .. } => Self::Busy("RECONFIGURING"),
            // A record key the engine made is malformed: a bug, not the disk.
            StoreError::InvalidRecordKey(_) => Self::Internal(e.to_string()),
            other => Self::Store(other),
        }
    }
}

impl From<PlanError> for CaError {
    fn from(e: PlanError) -> Self {
        Self::Internal(e.0)
    }
}
