//! meshca's persistent state: the [`Store`] trait every backend implements,
//! the sealing of secrets at rest, and [`Records`], the typed view the CA
//! engine reads and writes.
//!
//! Three layers, from the disk up:
//!
//! 1. A backend ([`MemoryStore`] here; the sled backend in the
//!    `meshca-store-sled` crate) stores raw records: byte values under
//!    `<namespace>/<name>` keys, changed only by an all-or-nothing [`Txn`]
//!    that bumps one global, strictly increasing index.
//! 2. [`Sealer`] holds the data key (itself sealed under the operator's
//!    [`StoreKey`]) and seals a record's bytes with AES-256-GCM, binding the
//!    record's key and the data key's ID as associated data. It sits above
//!    the backend, so every backend stores only sealed secrets.
//! 3. [`Records`] maps the CA state onto records (`ca/roots` and
//!    `ca/provider` in plain JSON, `ca/config` and `ca/keys` sealed) and
//!    commits a CA change as one transaction guarded by the index it read.
//!
//! Every backend passes the shared suite in `conformance` (cargo feature
//! `conformance`).
//!
//! Architecture Invariant: this crate opens no database; a storage engine
//! lives in its own crate. Architecture Invariant: no private key reaches a
//! backend unsealed.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod fs;
mod key;
mod memory;
mod records;
pub mod schema;
pub mod seal;
mod sealer;
pub mod snapshot_file;
mod watch;

pub use key::{StoreKey, StoreKeyId, KEY_FILE_NAME, KEY_ID_LEN, KEY_LEN, KEY_LENS};
pub use memory::MemoryStore;
pub use records::{Records, SnapshotContents};
pub use seal::KeyCheck;
pub use sealer::Sealer;
pub use watch::Watchers;

/// What went wrong in the store, grouped by how the caller reacts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store changed since the caller read it (a check of the
    /// transaction failed); reload and retry. `expected`/`actual` are the
    /// global indexes when the failed check was on the index itself, and
    /// both the current index when it was on another record.
    #[error("{}", conflict_message(*expected, *actual))]
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
    /// A record key the store cannot hold (no namespace, or the index
    /// record, which only the backend writes): a bug in the caller.
    #[error("invalid record key {0:?}")]
    InvalidRecordKey(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// The store holds less than what was acknowledged to clients: it was
    /// rolled back, damaged or replaced since the last successful write.
    #[error(
        "the store is older than the last acknowledged write (index {found} < {acknowledged}): \
         it was rolled back, damaged or replaced since meshca last wrote it. Refusing to serve \
         an older CA: restore the data directory from a snapshot or backup taken at or after \
         index {acknowledged}"
    )]
    RolledBack { found: u64, acknowledged: u64 },
    /// A write did not reach the disk (disk full, I/O error). The store
    /// stays usable: the next operation retries against the disk.
    #[error("store write failed: {0}")]
    WriteFailed(String),
    #[error("store I/O error: {0}")]
    Io(String),
}

fn conflict_message(expected: u64, actual: u64) -> String {
    if expected == actual {
        format!("a record this write depends on changed (store index {actual})")
    } else {
        format!("store index is {actual}, expected {expected}")
    }
}

impl StoreError {
    /// A [`StoreError::WriteFailed`] naming what the operating system
    /// reported, in its own words ("no space left on device"), without the
    /// error number or Rust's debug form: the text reaches operators in
    /// `/v1/health` and in 503 bodies.
    pub fn write_failed(err: &std::io::Error) -> Self {
        Self::WriteFailed(describe_io_error(err))
    }
}

/// The usual operating-system wording of an I/O error, from its kind.
///
/// Errors that went through sled lose their OS error number (sled clones an
/// `io::Error` into its debug text), but keep their kind; naming the kind
/// gives the same text whichever way the error came.
pub fn describe_io_error(err: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let text = match err.kind() {
        K::StorageFull => "no space left on device",
        K::QuotaExceeded => "disk quota exceeded",
        K::ReadOnlyFilesystem => "read-only file system",
        K::FileTooLarge => "file too large",
        K::PermissionDenied => "permission denied",
        K::NotFound => "no such file or directory",
        K::Interrupted => "interrupted system call",
        K::WriteZero => "write returned zero bytes",
        K::UnexpectedEof => "unexpected end of file",
        other => return other.to_string(),
    };
    text.to_string()
}

/// One condition of a [`Txn`]: the record `key` holds exactly `expected`
/// (`None`: the record is absent).
///
/// The index record ([`schema::INDEX`]) can be checked like any other: it
/// holds the global index as 8 big-endian bytes, so a check on it makes a
/// commit compare-and-swap on the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub key: String,
    pub expected: Option<Vec<u8>>,
}

impl Check {
    /// Whether a record holding `actual` (`None`: absent) satisfies this check.
    pub fn holds(&self, actual: Option<&[u8]>) -> bool {
        self.expected.as_deref() == actual
    }

    /// The [`StoreError::Conflict`] for this check failing at `index`.
    pub fn conflict(&self, index: u64) -> StoreError {
        let expected = match (&self.expected, self.key == schema::INDEX) {
            (Some(raw), true) => schema::decode_u64(raw).unwrap_or(index),
            _ => index,
        };
        StoreError::Conflict {
            expected,
            actual: index,
        }
    }
}

/// One change of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put(key, _) | Op::Delete(key) => key,
        }
    }
}

/// An all-or-nothing change: if every check holds, every op is applied and
/// the global index moves up by one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub checks: Vec<Check>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check that `key` holds `expected` (`None`: absent).
    pub fn check(mut self, key: &str, expected: Option<&[u8]>) -> Self {
        self.checks.push(Check {
            key: key.to_string(),
            expected: expected.map(<[u8]>::to_vec),
        });
        self
    }

    /// Adds a check that the global index is `index`.
    pub fn check_index(self, index: u64) -> Self {
        self.check(schema::INDEX, Some(&schema::encode_u64(index)))
    }

    pub fn put(mut self, key: &str, value: Vec<u8>) -> Self {
        self.ops.push(Op::Put(key.to_string(), value));
        self
    }

    pub fn delete(mut self, key: &str) -> Self {
        self.ops.push(Op::Delete(key.to_string()));
        self
    }

    /// Refuses keys a backend cannot hold and ops on the index record.
    /// Backends call this before applying a transaction.
    pub fn validate(&self) -> Result<(), StoreError> {
        for check in &self.checks {
            schema::validate_key(&check.key)?;
        }
        for op in &self.ops {
            schema::validate_key(op.key())?;
            if op.key() == schema::INDEX {
                return Err(StoreError::InvalidRecordKey(format!(
                    "{} is maintained by the store and cannot be written",
                    schema::INDEX
                )));
            }
        }
        Ok(())
    }
}

/// Refuses snapshot records a backend cannot hold, and the index record
/// (a snapshot carries the index apart). Backends call this before restoring.
pub fn validate_snapshot(snapshot: &Snapshot) -> Result<(), StoreError> {
    for (key, _) in &snapshot.records {
        schema::validate_key(key)?;
        if key == schema::INDEX {
            return Err(StoreError::InvalidRecordKey(format!(
                "{key} cannot be restored: the store sets the index"
            )));
        }
    }
    Ok(())
}

/// A consistent copy of every record (the index record excluded) and the
/// index it was taken at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub index: u64,
    /// In key order.
    pub records: Vec<(String, Vec<u8>)>,
}

/// Who leads the servers sharing a store: the one that runs the CA's
/// background changes (rotation, renewal, pruning) and takes the writes
/// that need one writer. A store one server owns (sled) is always led by
/// that server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Leadership {
    /// The leader's API address as it advertised it; `None` while none is
    /// elected.
    pub leader: Option<String>,
    /// Whether this server is the leader.
    pub is_me: bool,
}

impl Leadership {
    /// This server, alone: always the leader.
    pub fn alone(me: &str) -> Self {
        Self {
            leader: Some(me.to_string()),
            is_me: true,
        }
    }
}

/// A storage backend: raw records under `<namespace>/<name>` keys, changed
/// only by all-or-nothing transactions at a global index.
///
/// Object safe and synchronous: callers on an async runtime run these calls
/// in `spawn_blocking` (a commit waits for the disk). Implementations must:
///
/// - make a commit atomic (all ops or none) and durable before `Ok`;
/// - bump the global index by exactly one per successful commit, never
///   reuse an index, and report the index record ([`schema::INDEX`]) as 8
///   big-endian bytes from `get`, `scan` and checks (0 for an empty store);
/// - read consistently: a `scan` or `snapshot` never shows half a commit;
/// - keep working after a failed write: the error is returned, reported by
///   `health`, and a later operation tries the disk again.
///
/// Nothing here is advisory. Every implementation passes the suite in
/// `conformance`.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Records whose key starts with `prefix`, in key order.
    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Global index: 0 for an empty store, +1 per successful commit.
    fn index(&self) -> Result<u64, StoreError>;
    /// All-or-nothing: if every check holds, apply every op and bump the
    /// index; durable before `Ok`. A failed check is
    /// [`StoreError::Conflict`] and changes nothing. Returns the new index.
    fn commit(&self, txn: &Txn) -> Result<u64, StoreError>;
    /// A consistent copy of every record plus the index.
    fn snapshot(&self) -> Result<Snapshot, StoreError>;
    /// Atomically replaces every record with the snapshot's; the index
    /// becomes `max(current, snapshot) + 1`, so it never goes back.
    fn restore(&self, snapshot: &Snapshot) -> Result<u64, StoreError>;
    /// A receiver whose value is the index of the last commit (or restore)
    /// that wrote a key under `prefix`; it changes only for those. Its first
    /// value is the index when the prefix was first watched.
    fn watch(&self, prefix: &str) -> tokio::sync::watch::Receiver<u64>;
    /// `Ok` while writes succeed; the last write error otherwise, until a
    /// write succeeds again (for `/v1/health`).
    fn health(&self) -> Result<(), StoreError>;
}
