//! meshca's single-machine store: a [`Store`] in a sled database.
//!
//! A data directory holds the database directory `store/` (sled's files and
//! the key check) and, beside it, the high-water mark `store.mark`. A
//! record key `<namespace>/<name>` is the key `<name>` in the sled tree
//! `<namespace>`, so the schema-1 layout (trees `meta` and `ca`) reads as
//! records without being copied; the global index is the key `index` of
//! the tree `meta`, as it always was.
//!
//! Every commit is one sled transaction, then `flush` and an explicit fsync
//! of the files and directories (sled's flush does not fsync on Linux), then
//! the high-water mark; only then is it acknowledged. A write that fails
//! (disk full, I/O error) leaves the store usable: the database is dropped
//! and reopened from disk on the next operation, because sled 0.34 keeps
//! failing every write after its first I/O error. On open, a store older
//! than its mark, or different at the same index, is refused.
//!
//! Architecture Invariant: this is the only crate that opens sled. It never
//! sees a secret unsealed: records arrive sealed from `meshca-store`.

mod durability;
mod key_check;
mod mark;

#[cfg(test)]
mod disk_full_tests;

pub use key_check::KEY_CHECK_FILE_NAME;
pub use mark::MARK_FILE_NAME;

use durability::PathError;
use mark::{Digest, Mark, MarkFile};
use meshca_store::{
    fs, schema, validate_snapshot, Op, Sealer, Snapshot, Store, StoreError, StoreKey, Txn, Watchers,
};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::watch;

/// Name of the database directory inside the data directory.
pub const DB_DIR_NAME: &str = "store";

/// Whether `data_dir` already holds a store (its database directory or its
/// high-water mark), so that a caller never creates a new store key for
/// data sealed under an old one.
pub fn holds_store(data_dir: &Path) -> bool {
    data_dir.join(DB_DIR_NAME).exists() || data_dir.join(MARK_FILE_NAME).exists()
}

/// The sled tree and key of the global index (the record `meta/index`).
const META_TREE: &str = "meta";
const INDEX_NAME: &str = "index";
/// sled's own tree, which holds no record of ours.
const SLED_DEFAULT_TREE: &[u8] = b"__sled__default";

/// A [`Store`] in a sled database, in a data directory.
pub struct SledStore {
    db_dir: PathBuf,
    mark_path: PathBuf,
    /// Commits take it for writing, reads for reading: a scan or snapshot
    /// never sees half a commit, and only one commit runs at a time.
    inner: RwLock<Inner>,
    watchers: Watchers,
    /// The error of the last failed write, until a write succeeds.
    last_write_error: Mutex<Option<StoreError>>,
    /// Tests only: the next write fails with this error kind after the sled
    /// transaction, standing in for a full disk where one cannot be mounted.
    #[cfg(test)]
    inject_write_failure: Mutex<Option<std::io::ErrorKind>>,
}

struct Inner {
    /// `None` after a failed write: the next operation reopens from disk.
    db: Option<sled::Db>,
    /// The mark file and the store key that authenticates it; replaced
    /// when the store key changes ([`SledStore::rekey`]).
    mark: MarkFile,
    /// The index and digest of the last acknowledged commit.
    index: u64,
    digest: Digest,
    /// A handle that failed inside sled was leaked (see `write_changes`)
    /// and keeps its lock on the `db` file: the next open needs a new one.
    leaked_handle_locks_db_file: bool,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("db_dir", &self.db_dir)
            .finish_non_exhaustive()
    }
}

/// Why a write did not complete, before it becomes a [`StoreError`].
enum WriteError {
    Sled(sled::Error),
    Path(PathError),
    Mark(std::io::Error),
}

impl WriteError {
    fn into_store_error(self) -> StoreError {
        match self {
            WriteError::Sled(sled::Error::Io(e)) => StoreError::write_failed(&e),
            WriteError::Sled(e @ sled::Error::Corruption { .. }) => {
                StoreError::Corrupt(e.to_string())
            }
            WriteError::Sled(e) => StoreError::WriteFailed(e.to_string()),
            WriteError::Path(e) => StoreError::write_failed(&e.error),
            WriteError::Mark(e) => StoreError::write_failed(&e),
        }
    }

    fn detail(&self) -> String {
        match self {
            WriteError::Sled(e) => format!("sled: {e}"),
            WriteError::Path(e) => format!("syncing {e}"),
            WriteError::Mark(e) => format!("writing the high-water mark: {e}"),
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store in `data_dir`, sealed with `key`.
    ///
    /// Before sled opens the database (which writes to it), refuses a
    /// wrong key (`WrongKey`, via the key check) and a missing database
    /// where the high-water mark says a CA was (`RolledBack`): the
    /// directory is left as it was. After opening, refuses a store older
    /// than its mark (`RolledBack`) or different from it at the same index
    /// (`Corrupt`). Directories are created 0700, files made 0600.
    pub fn open(data_dir: &Path, key: &StoreKey) -> Result<Self, StoreError> {
        Self::open_with_keys(data_dir, key, None, &[key])
    }

    /// Opens the store while its store key changes from `old_key` to `key`:
    /// the store may still be under `old_key`, or, after a change cut
    /// short by a crash, partly under `key` already. Refuses, before sled
    /// opens, a store whose key check names neither key. The caller
    /// re-seals the data keys, then calls [`SledStore::rekey`].
    pub fn open_rekeying(
        data_dir: &Path,
        key: &StoreKey,
        old_key: &StoreKey,
    ) -> Result<Self, StoreError> {
        let db_dir = data_dir.join(DB_DIR_NAME);
        match key_check::read_id(&db_dir)? {
            Some(id) if &id == old_key.id() => {
                Self::open_with_keys(data_dir, old_key, None, &[key, old_key])
            }
            Some(id) if &id != key.id() => Err(StoreError::WrongKey(format!(
                "{} is sealed with store key {id}, which is neither the new store key ({}) nor \
                 the old one ({}); give the key the store is sealed with as the old key",
                db_dir.display(),
                key.id(),
                old_key.id()
            ))),
            // The key check names the new key (the change got that far), or
            // there is none: the mark may still be under the old key.
            _ => Self::open_with_keys(data_dir, key, Some(old_key), &[key, old_key]),
        }
    }

    /// [`SledStore::open`] with `key` for the key check and the mark, the
    /// mark also read under `mark_fallback` (then rewritten under `key`),
    /// and the data keys sealed under any of `data_keys_by`.
    fn open_with_keys(
        data_dir: &Path,
        key: &StoreKey,
        mark_fallback: Option<&StoreKey>,
        data_keys_by: &[&StoreKey],
    ) -> Result<Self, StoreError> {
        let db_dir = data_dir.join(DB_DIR_NAME);
        key_check::verify(&db_dir, key)?;
        let mark_file = MarkFile::new(data_dir, key);
        let (mark, fallback) = match (mark_file.read(), mark_fallback) {
            (Ok(mark), _) => (mark, None),
            (Err(e), Some(other)) => {
                let other = MarkFile::new(data_dir, other);
                match other.read() {
                    Ok(mark) => (mark, Some(other)),
                    Err(_) => return Err(e),
                }
            }
            (Err(e), None) => return Err(e),
        };
        if let Some(mark) = &mark {
            if mark.index > 0 && !db_dir.join("db").exists() {
                return Err(StoreError::RolledBack {
                    found: 0,
                    acknowledged: mark.index,
                });
            }
        }
        fs::create_private_dir_all(&db_dir)
            .map_err(|e| StoreError::Io(format!("creating {}: {e}", db_dir.display())))?;
        let (db, index, digest) = open_db(&db_dir, &mark_file)?;
        // Without its key check file (lost, or a store from before it), the
        // data key record is the first thing that can tell a wrong key; it
        // must, before this open writes a key check or a mark for that key.
        verify_data_keys(&db, index, data_keys_by)?;
        let rewrite = match &fallback {
            // The mark is under the old key: vet against the digest under
            // that key, then move the mark to the new one.
            Some(old) => {
                let mut old_digest = Digest::default();
                for (k, v) in records(&db, "")? {
                    old_digest.add(&old.term(&k, &v));
                }
                mark::vet(mark.as_ref(), index, old_digest, mark_file.path())?;
                true
            }
            None => mark::vet(mark.as_ref(), index, digest, mark_file.path())?,
        };
        key_check::ensure(&db_dir, key)?;
        db.flush().map_err(|e| open_error(&db_dir, e))?;
        durability::sync_tree(&db_dir).map_err(|e| StoreError::Io(format!("syncing {e}")))?;
        if rewrite {
            mark_file.write(&Mark { index, digest }).map_err(|e| {
                StoreError::Io(format!("writing {}: {e}", mark_file.path().display()))
            })?;
        }
        Ok(Self {
            db_dir,
            mark_path: mark_file.path().to_path_buf(),
            inner: RwLock::new(Inner {
                db: Some(db),
                mark: mark_file,
                index,
                digest,
                leaked_handle_locks_db_file: false,
            }),
            watchers: Watchers::new(),
            last_write_error: Mutex::new(None),
            #[cfg(test)]
            inject_write_failure: Mutex::new(None),
        })
    }

    /// Moves this backend's own files to the store key `key`, after the
    /// data keys were re-sealed under it: the key check first, then the
    /// high-water mark (its digest recomputed under the new key). Each is
    /// replaced atomically; after a crash in between,
    /// [`SledStore::open_rekeying`] with both keys finishes the change.
    pub fn rekey(&self, key: &StoreKey) -> Result<(), StoreError> {
        let mut inner = self.write_ready()?;
        let db = inner
            .db
            .as_ref()
            .ok_or_else(|| StoreError::Io("the store is not open".into()))?;
        let data_dir = self.db_dir.parent().unwrap_or(Path::new("."));
        let mark_file = MarkFile::new(data_dir, key);
        let mut digest = Digest::default();
        for (k, v) in records(db, "")? {
            digest.add(&mark_file.term(&k, &v));
        }
        key_check::replace(&self.db_dir, key)?;
        let index = inner.index;
        mark_file
            .write(&Mark { index, digest })
            .map_err(|e| StoreError::Io(format!("writing {}: {e}", mark_file.path().display())))?;
        inner.mark = mark_file;
        inner.digest = digest;
        Ok(())
    }

    /// The database directory (`<data dir>/store`).
    pub fn db_dir(&self) -> &Path {
        &self.db_dir
    }

    /// The high-water mark file (`<data dir>/store.mark`).
    pub fn mark_path(&self) -> &Path {
        &self.mark_path
    }

    /// The state for a write, reopening the database first if a write failed.
    fn write_ready(&self) -> Result<RwLockWriteGuard<'_, Inner>, StoreError> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if inner.db.is_none() {
            self.reopen(&mut inner)?;
        }
        Ok(inner)
    }

    /// The state for a read, reopening the database first if a write failed.
    fn read_ready(&self) -> Result<RwLockReadGuard<'_, Inner>, StoreError> {
        loop {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            if inner.db.is_some() {
                return Ok(inner);
            }
            drop(inner);
            drop(self.write_ready()?);
        }
    }

    /// Opens the database again from disk (the failed handle is gone
    /// already), vetting it against the mark like `open`. The failed commit
    /// either reached the disk whole (the store is one ahead of the mark)
    /// or not at all (it equals the mark).
    fn reopen(&self, inner: &mut Inner) -> Result<(), StoreError> {
        if inner.leaked_handle_locks_db_file {
            replace_db_file(&self.db_dir).map_err(|e| {
                tracing::error!(detail = %e, "store reopen failed");
                StoreError::write_failed(&e.error)
            })?;
            inner.leaked_handle_locks_db_file = false;
        }
        let mark = inner.mark.read()?;
        let (db, index, digest) = open_db(&self.db_dir, &inner.mark).map_err(|e| match e {
            StoreError::Io(why) => StoreError::WriteFailed(why),
            other => other,
        })?;
        if mark::vet(mark.as_ref(), index, digest, inner.mark.path())? {
            inner
                .mark
                .write(&Mark { index, digest })
                .map_err(|e| StoreError::write_failed(&e))?;
        }
        tracing::warn!(
            index,
            previous = inner.index,
            "store reopened from disk after a failed write"
        );
        inner.db = Some(db);
        inner.index = index;
        inner.digest = digest;
        inner.leaked_handle_locks_db_file = false;
        Ok(())
    }

    /// Applies `changes` (final values by record key) at `new_index`, makes
    /// them durable and advances the mark; on failure drops the database so
    /// the next operation reopens it.
    fn write_changes(
        &self,
        inner: &mut Inner,
        changes: BTreeMap<String, Option<Vec<u8>>>,
        new_index: u64,
    ) -> Result<u64, StoreError> {
        let db = inner
            .db
            .as_ref()
            .ok_or_else(|| StoreError::Io("the store is not open".into()))?;
        let mut digest = inner.digest;
        for (key, value) in &changes {
            if let Some(old) = get_in(db, inner.index, key)? {
                digest.sub(&inner.mark.term(key, &old));
            }
            if let Some(new) = value {
                digest.add(&inner.mark.term(key, new));
            }
        }
        let by_tree = group_by_tree(&changes)?;
        let written = apply(db, &by_tree, new_index)
            .map_err(WriteError::Sled)
            .and_then(|()| self.injected_failure())
            .and_then(|()| db.flush().map(drop).map_err(WriteError::Sled))
            .and_then(|()| durability::sync_tree(&self.db_dir).map_err(WriteError::Path))
            .and_then(|()| {
                inner
                    .mark
                    .write(&Mark {
                        index: new_index,
                        digest,
                    })
                    .map_err(WriteError::Mark)
            });
        if let Err(e) = written {
            tracing::error!(
                index = new_index,
                detail = %e.detail(),
                "store write failed; the database is reopened from disk before the next operation"
            );
            // The handle goes: its in-memory state may hold the failed
            // commit, which must not be read back as if it landed.
            if let Some(db) = inner.db.take() {
                if matches!(e, WriteError::Sled(_)) {
                    // After an I/O error inside sled 0.34, flushing the
                    // database (which its Drop does) can block forever while
                    // holding sled's process-wide lock, stopping every sled
                    // transaction in the process. So the handle is leaked,
                    // never flushed or dropped; its memory is lost until
                    // the process exits. Its lock on the `db` file stays,
                    // so `reopen` opens a copy of that file instead.
                    std::mem::forget(db);
                    inner.leaked_handle_locks_db_file = true;
                } else {
                    drop(db);
                }
            }
            let err = e.into_store_error();
            *self
                .last_write_error
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(err.clone());
            return Err(err);
        }
        inner.index = new_index;
        inner.digest = digest;
        *self
            .last_write_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.watchers
            .notify(new_index, changes.keys().map(String::as_str));
        Ok(new_index)
    }

    #[cfg(test)]
    fn injected_failure(&self) -> Result<(), WriteError> {
        let kind = self
            .inject_write_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match kind {
            Some(kind) => Err(WriteError::Sled(sled::Error::Io(kind.into()))),
            None => Ok(()),
        }
    }

    #[cfg(not(test))]
    fn injected_failure(&self) -> Result<(), WriteError> {
        Ok(())
    }
}

impl Store for SledStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        schema::validate_key(key)?;
        let inner = self.read_ready()?;
        let db = inner
            .db
            .as_ref()
            .ok_or_else(|| StoreError::Io("the store is not open".into()))?;
        get_in(db, inner.index, key)
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let inner = self.read_ready()?;
        let db = inner
            .db
            .as_ref()
            .ok_or_else(|| StoreError::Io("the store is not open".into()))?;
        let mut found = records(db, prefix)?;
        if schema::INDEX.starts_with(prefix) {
            found.push((
                schema::INDEX.to_string(),
                schema::encode_u64(inner.index).to_vec(),
            ));
            found.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(found)
    }

    fn index(&self) -> Result<u64, StoreError> {
        Ok(self.read_ready()?.index)
    }

    fn commit(&self, txn: &Txn) -> Result<u64, StoreError> {
        txn.validate()?;
        let mut inner = self.write_ready()?;
        let db = inner
            .db
            .as_ref()
            .ok_or_else(|| StoreError::Io("the store is not open".into()))?;
        for check in &txn.checks {
            if !check.holds(get_in(db, inner.index, &check.key)?.as_deref()) {
                return Err(check.conflict(inner.index));
            }
        }
        let new_index = inner
            .index
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("the global index is exhausted".into()))?;
        let mut changes = BTreeMap::new();
        for op in &txn.ops {
            match op {
                Op::Put(key, value) => changes.insert(key.clone(), Some(value.clone())),
                Op::Delete(key) => changes.insert(key.clone(), None),
            };
        }
        self.write_changes(&mut inner, changes, new_index)
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let inner = self.read_ready()?;
        let db = inner
            .db
            .as_ref()
            .ok_or_else(|| StoreError::Io("the store is not open".into()))?;
        Ok(Snapshot {
            index: inner.index,
            records: records(db, "")?,
        })
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<u64, StoreError> {
        validate_snapshot(snapshot)?;
        let mut inner = self.write_ready()?;
        let db = inner
            .db
            .as_ref()
            .ok_or_else(|| StoreError::Io("the store is not open".into()))?;
        let new_index = inner
            .index
            .max(snapshot.index)
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("the global index is exhausted".into()))?;
        let current: BTreeMap<String, Vec<u8>> = records(db, "")?.into_iter().collect();
        let wanted: BTreeMap<String, Vec<u8>> = snapshot.records.iter().cloned().collect();
        let mut changes = BTreeMap::new();
        for key in current.keys().chain(wanted.keys()) {
            if current.get(key) != wanted.get(key) {
                changes.insert(key.clone(), wanted.get(key).cloned());
            }
        }
        self.write_changes(&mut inner, changes, new_index)
    }

    fn watch(&self, prefix: &str) -> watch::Receiver<u64> {
        // The lock orders this against commits, which notify under it.
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        self.watchers.subscribe(prefix, inner.index)
    }

    fn health(&self) -> Result<(), StoreError> {
        match &*self
            .last_write_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }
}

/// Replaces sled's `db` file by a copy of itself: same content, new inode,
/// which a leaked handle's lock (held on the old inode) does not cover.
/// Atomic (a copy, fsynced, renamed over the original) and durable; a
/// crash in between leaves the original or the complete copy. Needs free
/// space for the copy: on a full disk it fails, and the next operation
/// tries again.
fn replace_db_file(db_dir: &Path) -> Result<(), PathError> {
    let original = db_dir.join("db");
    let copy = db_dir.join("db.reopen");
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |error| PathError { path, error }
    };
    let copied = (|| {
        let mut from = std::fs::File::open(&original)?;
        let mut to = fs::create_private_file(&copy, false)?;
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()
    })();
    if let Err(e) = copied {
        // A partial copy only takes space; the original is intact.
        let _ = std::fs::remove_file(&copy);
        return Err(at(&copy)(e));
    }
    std::fs::rename(&copy, &original).map_err(at(&original))?;
    fs::sync_parent_dir(&original).map_err(at(db_dir))
}

/// Refuses store keys that do not open the data keys: the registry (which
/// names the store key that sealed it) or the one data key of schemas 1
/// and 2, sealed under any of `keys`.
fn verify_data_keys(db: &sled::Db, index: u64, keys: &[&StoreKey]) -> Result<(), StoreError> {
    if let Some(record) = get_in(db, index, schema::DATA_KEYS)? {
        let sealed_by = Sealer::registry_store_key_id(&record)?;
        return match keys.iter().find(|k| k.id() == &sealed_by) {
            Some(key) => Sealer::from_registry(&record, key).map(drop),
            None => Err(StoreError::WrongKey(format!(
                "the data is sealed with store key {sealed_by}, but the key given is {}; start \
                 with the store key this data directory was created with",
                keys.iter()
                    .map(|k| k.id().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))),
        };
    }
    if let Some(record) = get_in(db, index, schema::DATA_KEY)? {
        let mut first_error = None;
        for key in keys {
            match Sealer::from_record(&record, key) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    Ok(())
}

/// Opens sled in `db_dir` and reads the index and the digest of every record.
fn open_db(db_dir: &Path, mark: &MarkFile) -> Result<(sled::Db, u64, Digest), StoreError> {
    let db = open_sled(db_dir)?;
    let index = match tree_if_exists(&db, META_TREE)? {
        Some(meta) => match meta.get(INDEX_NAME).map_err(read_error)? {
            Some(raw) => schema::decode_u64(&raw)
                .ok_or_else(|| StoreError::Corrupt(format!("{} is not a u64", schema::INDEX)))?,
            None => 0,
        },
        None => 0,
    };
    let mut digest = Digest::default();
    for (key, value) in records(&db, "")? {
        digest.add(&mark.term(&key, &value));
    }
    Ok((db, index, digest))
}

/// Opens sled, waiting a moment for its file lock. sled releases the lock
/// of a dropped database from its background threads, a little after the
/// drop, so reopening in the same process can find it still held; another
/// process holding it for longer gets a message saying so.
fn open_sled(db_dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::Config::new().path(db_dir).open() {
            Ok(db) => return Ok(db),
            // sled reports the lock as ErrorKind::Other with this text.
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::Io(format!(
                        "the store at {} is in use by another process (its lock is held)",
                        db_dir.display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(open_error(db_dir, e)),
        }
    }
}

fn open_error(db_dir: &Path, err: sled::Error) -> StoreError {
    match err {
        sled::Error::Corruption { .. } => StoreError::Corrupt(format!(
            "the database in {} is damaged (sled found corrupted data in its files); restore \
             the data directory from a snapshot or backup",
            db_dir.display()
        )),
        other => StoreError::Io(format!("opening store at {}: {other}", db_dir.display())),
    }
}

fn read_error(err: sled::Error) -> StoreError {
    match err {
        sled::Error::Corruption { .. } => StoreError::Corrupt(err.to_string()),
        sled::Error::Io(e) => StoreError::Io(meshca_store::describe_io_error(&e)),
        other => StoreError::Io(other.to_string()),
    }
}

/// The tree `name`, if the database has one: reading must not create trees.
fn tree_if_exists(db: &sled::Db, name: &str) -> Result<Option<sled::Tree>, StoreError> {
    if db.tree_names().iter().any(|n| n == name.as_bytes()) {
        db.open_tree(name).map(Some).map_err(read_error)
    } else {
        Ok(None)
    }
}

/// The record `key`; the index record from `index`.
fn get_in(db: &sled::Db, index: u64, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    if key == schema::INDEX {
        return Ok(Some(schema::encode_u64(index).to_vec()));
    }
    let (namespace, name) = schema::split_key(key)?;
    match tree_if_exists(db, namespace)? {
        Some(tree) => Ok(tree.get(name).map_err(read_error)?.map(|v| v.to_vec())),
        None => Ok(None),
    }
}

/// Every record under `prefix` but the index record, in key order.
fn records(db: &sled::Db, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut found = Vec::new();
    for tree_name in db.tree_names() {
        if &tree_name[..] == SLED_DEFAULT_TREE {
            continue;
        }
        let namespace = std::str::from_utf8(&tree_name)
            .ok()
            .filter(|ns| schema::validate_key(&format!("{ns}/x")).is_ok())
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "the database holds a tree that is no record namespace: {:?}",
                    String::from_utf8_lossy(&tree_name)
                ))
            })?;
        let head = format!("{namespace}/");
        // The part of the prefix inside this namespace, or skip the tree.
        let within = if let Some(rest) = prefix.strip_prefix(head.as_str()) {
            rest
        } else if head.starts_with(prefix) {
            ""
        } else {
            continue;
        };
        let tree = db.open_tree(&tree_name).map_err(read_error)?;
        for item in tree.scan_prefix(within) {
            let (name, value) = item.map_err(read_error)?;
            let name = std::str::from_utf8(&name).map_err(|_| {
                StoreError::Corrupt(format!("a key in tree {namespace} is not UTF-8"))
            })?;
            let key = format!("{head}{name}");
            if key != schema::INDEX {
                found.push((key, value.to_vec()));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Changes grouped by sled tree, the `meta` tree always present (the index
/// is written with every commit): `(tree, [(name, value or delete)])`.
type ByTree = BTreeMap<String, Vec<(String, Option<Vec<u8>>)>>;

fn group_by_tree(changes: &BTreeMap<String, Option<Vec<u8>>>) -> Result<ByTree, StoreError> {
    let mut by_tree = ByTree::new();
    by_tree.entry(META_TREE.to_string()).or_default();
    for (key, value) in changes {
        let (namespace, name) = schema::split_key(key)?;
        by_tree
            .entry(namespace.to_string())
            .or_default()
            .push((name.to_string(), value.clone()));
    }
    Ok(by_tree)
}

/// One sled transaction: every change and the new index, or nothing.
fn apply(db: &sled::Db, by_tree: &ByTree, new_index: u64) -> Result<(), sled::Error> {
    let trees: Vec<sled::Tree> = by_tree
        .keys()
        .map(|name| db.open_tree(name))
        .collect::<Result<_, _>>()?;
    let meta = by_tree
        .keys()
        .position(|name| name == META_TREE)
        .unwrap_or_default();
    let result = trees
        .as_slice()
        .transaction(|views: &Vec<TransactionalTree>| {
            for (view, changes) in views.iter().zip(by_tree.values()) {
                for (name, value) in changes {
                    match value {
                        Some(value) => view.insert(name.as_bytes(), value.as_slice())?,
                        None => view.remove(name.as_bytes())?,
                    };
                }
            }
            views[meta].insert(INDEX_NAME, &schema::encode_u64(new_index))?;
            Ok::<(), ConflictableTransactionError<()>>(())
        });
    match result {
        Ok(()) => Ok(()),
        Err(TransactionError::Storage(e)) => Err(e),
        // The closure never aborts.
        Err(TransactionError::Abort(())) => Err(sled::Error::ReportableBug(
            "a store transaction aborted without a reason".into(),
        )),
    }
}
