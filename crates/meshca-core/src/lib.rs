//! The pure domain core of meshca.
//!
//! Everything here is deterministic given its inputs: SPIFFE identities, the CA
//! configuration and its TTL rules, key specifications, certificate profile
//! checks and CSR validation. Nothing in this crate performs I/O, spawns tasks or
//! reads the clock; callers pass `now` in.
//!
//! Architecture Invariant: this crate never depends on tokio, axum or sled, and
//! never calls `SystemTime::now()` (the only clock read lives in
//! [`clock::SystemClock`]).

pub mod acl;
pub mod clock;
pub mod config;
pub mod csr;
pub mod duration;
pub mod keyspec;
pub mod leaf;
pub mod rotation;
pub mod secondary;
pub mod secret;
pub mod serial;
pub mod spiffe;
pub mod state;
pub mod x509;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{CaConfig, ConfigError, ProviderKind};
pub use duration::GoDuration;
pub use keyspec::KeySpec;
pub use secret::SecretBytes;
pub use serial::Serial;
pub use spiffe::{Segment, ServiceName, SpiffeId, TrustDomain};
