//! meshca's persistent state, behind the [`Store`] trait.
//!
//! The CA state is committed as one unit at a global, strictly increasing
//! index, and read back whole. [`SledStore`] is the single-machine backend:
//! one sled database per data dir, every write one transaction, fsynced before
//! it is acknowledged (sled's `flush()` alone does not fsync on Linux), and every private key sealed at rest with AES-256-GCM under
//! a data key that is itself sealed under the operator's [`StoreKey`].
//!
//! Every backend must pass the shared suite in `conformance` (cargo feature
//! `conformance`).
//!
//! Architecture Invariant: this is the only crate that opens sled, and no
//! private key reaches the disk unsealed.

#[cfg(feature = "conformance")]
pub mod conformance;
mod durability;
mod key;
mod key_check;
mod seal;
mod sled_store;

pub use key::{StoreKey, StoreKeyId, KEY_FILE_NAME};
pub use sled_store::SledStore;

use meshca_core::state::CaState;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer committed first; reload and retry.
    #[error("store index is {actual}, expected {expected}")]
    Conflict { expected: u64, actual: u64 },
    /// The store was written by a newer meshca.
    #[error("store schema version {found} is newer than this binary supports ({supported})")]
    SchemaTooNew { found: u64, supported: u64 },
    /// The store key cannot unseal the data (wrong key file).
    #[error("the store key does not match this data directory: {0}")]
    WrongKey(String),
    /// A store key file or string is malformed (length, encoding); fix the
    /// configuration rather than retry.
    #[error("invalid store key: {0}")]
    InvalidKey(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("store I/O error: {0}")]
    Io(String),
}

/// Durable storage of the CA state. Implementations must be atomic (a commit
/// is all or nothing) and durable (a commit that returned `Ok` survives a
/// power loss). Private keys in `CaState::private_keys` must be sealed at rest.
pub trait Store: Send + Sync + 'static {
    /// The stored CA state, or `None` before the CA is initialised.
    fn load_ca_state(&self) -> Result<Option<CaState>, StoreError>;

    /// Atomically replaces the CA state, provided the store's current index
    /// equals `expected_index` (0 for the first commit). On success returns
    /// the new global index (strictly greater than any before), which the
    /// caller records in `state.modify_index` — the store writes
    /// `state.modify_index = new index` itself before persisting.
    fn commit_ca_state(&self, state: &CaState, expected_index: u64) -> Result<u64, StoreError>;

    /// The current global index (0 for an empty store).
    fn current_index(&self) -> Result<u64, StoreError>;
}
