//! The sled backend of [`Store`]: one database per data dir, sealed at rest.

use crate::durability;
use crate::key::StoreKey;
use crate::key_check;
use crate::seal::{DataKey, DataKeyRecord, SealedRecord};
use crate::{Store, StoreError};
use meshca_core::clock::{Clock, SystemClock};
use meshca_core::state::CaState;
use meshca_migrations::{layout, MigrationError};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional as _;
use std::fmt;
use std::path::{Path, PathBuf};

/// The associated-data name of the sealed CA state record.
const CA_STATE_RECORD: &str = "ca/state";

/// A [`Store`] in a sled database.
///
/// Layout (see `meshca_migrations::layout`): `meta` holds the schema version,
/// the global index and the data key sealed under the store key; `ca` holds
/// the CA state serialised to JSON and sealed, whole, under the data key, so
/// every private key in it is sealed.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    ca: sled::Tree,
    data_key: DataKey,
    /// The database directory to fsync after writes; `None` when in memory.
    dir: Option<PathBuf>,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("dir", &self.dir)
            .field("data_key", &self.data_key)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the database in `dir`, sealed with `key`.
    ///
    /// Refuses a store sealed with another key (`WrongKey`) before opening
    /// sled, so the directory is left byte for byte as it was (see
    /// `key_check`). Refuses a store from a newer schema (`SchemaTooNew`)
    /// before migrating or writing any record. Then applies pending migrations.
    pub fn open(dir: &Path, key: StoreKey) -> Result<Self, StoreError> {
        key_check::verify(dir, &key)?;
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| StoreError::Io(format!("opening store at {}: {e}", dir.display())))?;
        let store = Self::from_db(db, &key, Some(dir.to_path_buf()), &SystemClock)?;
        key_check::ensure(dir, &key)?;
        Ok(store)
    }

    /// An in-memory store with a random key, for `--dev`: gone when dropped.
    pub fn temporary() -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(sled_error)?;
        Self::from_db(db, &StoreKey::generate()?, None, &SystemClock)
    }

    /// Vets, migrates and unseals an opened database.
    fn from_db(
        db: sled::Db,
        key: &StoreKey,
        dir: Option<PathBuf>,
        clock: &dyn Clock,
    ) -> Result<Self, StoreError> {
        meshca_migrations::check(&db).map_err(migration_error)?;
        // The data key is unsealed before migrating, so that a wrong key the
        // key check could not catch (its file missing) still writes no
        // record. Should a migration ever move the data key record, this
        // read must learn both places.
        let existing = read_data_key(&db, key)?;
        let applied = meshca_migrations::migrate(&db).map_err(migration_error)?;
        let is_new = existing.is_none();
        let data_key = match existing {
            Some(data_key) => data_key,
            None => DataKey::generate(clock.now())?,
        };
        let store = Self {
            meta: db.open_tree(layout::META_TREE).map_err(sled_error)?,
            ca: db.open_tree(layout::CA_TREE).map_err(sled_error)?,
            db,
            data_key,
            dir,
        };
        if is_new {
            store.install_data_key(key)?;
        }
        if is_new || !applied.is_noop() {
            store.make_durable()?;
        }
        Ok(store)
    }

    /// Records this store's fresh data key, sealed under `key`.
    ///
    /// Only a store without CA state may get a new data key: state sealed
    /// under a lost data key would otherwise be silently orphaned.
    fn install_data_key(&self, key: &StoreKey) -> Result<(), StoreError> {
        let has_state = self.ca.get(layout::CA_STATE_KEY).map_err(sled_error)?;
        if has_state.is_some() {
            return Err(StoreError::Corrupt(
                "the CA state exists but its data key record is missing".into(),
            ));
        }
        let record = serde_json::to_vec(&self.data_key.seal_with(key)?)
            .map_err(|e| StoreError::Corrupt(format!("encoding the data key record: {e}")))?;
        self.meta
            .compare_and_swap(layout::DATA_KEY_KEY, None as Option<&[u8]>, Some(record))
            .map_err(sled_error)?
            .map_err(|_| StoreError::Corrupt("a data key appeared while opening".into()))
    }

    /// Flushes sled and fsyncs its files, so what was written survives a crash.
    fn make_durable(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(sled_error)?;
        match &self.dir {
            Some(dir) => durability::sync_tree(dir),
            // In memory there is nothing to sync: `--dev` promises no durability.
            None => Ok(()),
        }
    }

    /// Serialises `state` with `modify_index` set and seals it under the data key.
    fn seal_state(&self, state: &CaState, modify_index: u64) -> Result<Vec<u8>, StoreError> {
        let mut state = state.clone();
        state.modify_index = modify_index;
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(&state)
                .map_err(|e| StoreError::Corrupt(format!("encoding the CA state: {e}")))?,
        );
        let record = self.data_key.seal_record(CA_STATE_RECORD, &json)?;
        serde_json::to_vec(&record)
            .map_err(|e| StoreError::Corrupt(format!("encoding the sealed CA state: {e}")))
    }
}

impl Store for SledStore {
    fn load_ca_state(&self) -> Result<Option<CaState>, StoreError> {
        let Some(raw) = self.ca.get(layout::CA_STATE_KEY).map_err(sled_error)? else {
            return Ok(None);
        };
        let record: SealedRecord = serde_json::from_slice(&raw)
            .map_err(|e| StoreError::Corrupt(format!("the sealed CA state record: {e}")))?;
        let json = self.data_key.open_record(CA_STATE_RECORD, &record)?;
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("the CA state: {e}")))
    }

    fn commit_ca_state(&self, state: &CaState, expected_index: u64) -> Result<u64, StoreError> {
        // A cheap early answer for a stale writer; the transaction re-checks.
        let actual = self.current_index()?;
        if actual != expected_index {
            return Err(StoreError::Conflict {
                expected: expected_index,
                actual,
            });
        }
        let new_index = expected_index
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("the global index is exhausted".into()))?;
        let sealed = self.seal_state(state, new_index)?;
        (&self.meta, &self.ca)
            .transaction(|(meta, ca)| {
                check_index(meta, expected_index)?;
                meta.insert(layout::INDEX_KEY, &new_index.to_be_bytes())?;
                ca.insert(layout::CA_STATE_KEY, sealed.as_slice())?;
                Ok(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => sled_error(e),
            })?;
        self.make_durable()?;
        Ok(new_index)
    }

    fn current_index(&self) -> Result<u64, StoreError> {
        let raw = self.meta.get(layout::INDEX_KEY).map_err(sled_error)?;
        decode_index(raw.as_deref())
    }
}

/// Inside a commit: aborts with `Conflict` unless the index is `expected`.
fn check_index(
    meta: &TransactionalTree,
    expected: u64,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let raw = meta.get(layout::INDEX_KEY)?;
    let actual = decode_index(raw.as_deref()).map_err(ConflictableTransactionError::Abort)?;
    if actual != expected {
        return Err(ConflictableTransactionError::Abort(StoreError::Conflict {
            expected,
            actual,
        }));
    }
    Ok(())
}

fn decode_index(raw: Option<&[u8]>) -> Result<u64, StoreError> {
    let raw = raw.ok_or_else(|| StoreError::Corrupt("meta/index is missing".into()))?;
    layout::decode_u64(raw).ok_or_else(|| StoreError::Corrupt("meta/index is not a u64".into()))
}

/// Reads and unseals the data key record, if the database has one yet.
fn read_data_key(db: &sled::Db, key: &StoreKey) -> Result<Option<DataKey>, StoreError> {
    let meta = db.open_tree(layout::META_TREE).map_err(sled_error)?;
    let Some(raw) = meta.get(layout::DATA_KEY_KEY).map_err(sled_error)? else {
        return Ok(None);
    };
    let record: DataKeyRecord = serde_json::from_slice(&raw)
        .map_err(|e| StoreError::Corrupt(format!("the data key record: {e}")))?;
    DataKey::unseal(&record, key).map(Some)
}

fn sled_error(err: sled::Error) -> StoreError {
    match err {
        sled::Error::Corruption { .. } => StoreError::Corrupt(err.to_string()),
        other => StoreError::Io(other.to_string()),
    }
}

fn migration_error(err: MigrationError) -> StoreError {
    match err {
        MigrationError::TooNew { found, supported } => {
            StoreError::SchemaTooNew { found, supported }
        }
        MigrationError::Sled(e) => sled_error(e),
        other => StoreError::Corrupt(other.to_string()),
    }
}
