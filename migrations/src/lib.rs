//! Ordered, forward-only schema migrations of meshca's store, and [`open`],
//! which vets a store, opens its data key, migrates it and hands back
//! [`Records`].
//!
//! Migrations run against any [`Store`] backend, through the sealing layer:
//! they read and write records, never a database. A store records its
//! schema version in `meta/schema_version`; each pending migration is one
//! transaction that applies its changes and records its version together,
//! guarded by the version and index it read, so a crash leaves a store
//! fully before or fully after each step. There are no down-migrations: to
//! go back, restore a snapshot.
//!
//! Architecture Invariant: [`MIGRATIONS`] is strictly increasing from 1
//! without gaps and ends at [`CURRENT_VERSION`]; a migration, once
//! released, is never edited, only followed by a new one.

use meshca_core::state::CaState;
use meshca_core::Clock;
use meshca_store::{schema, Op, Records, Sealer, Store, StoreError, StoreKey, StoreKeyId, Txn};
use std::sync::Arc;
use time::OffsetDateTime;

/// The schema version this build writes and understands.
pub const CURRENT_VERSION: u64 = 3;

/// The default `data_key_rotation_period`: a new data key every 7 days.
pub const DEFAULT_DATA_KEY_ROTATION_PERIOD: time::Duration = time::Duration::days(7);

/// One forward step of the schema: `plan` reads the store and returns the
/// changes, which are committed together with the new version. It gets
/// the data keys and the store key they are sealed under.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u64,
    pub name: &'static str,
    pub plan: Plan,
}

/// A migration's planner: the store, its data keys, and the store key they
/// are sealed under, to the changes to commit.
pub type Plan = fn(&dyn Store, &Sealer, &StoreKey) -> Result<Vec<Op>, StoreError>;

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial layout: meta/schema_version, meta/data_key, the CA state as one sealed \
               ca/state record",
        plan: initial_layout,
    },
    Migration {
        version: 2,
        name: "split ca/state into ca/roots and ca/provider (plain) and ca/config and ca/keys \
               (sealed)",
        plan: split_ca_state,
    },
    Migration {
        version: 3,
        name: "move the one data key meta/data_key into the data key registry meta/data_keys",
        plan: data_key_registry,
    },
];

/// What a [`migrate`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The schema version found before migrating (0 for a new store).
    pub from: u64,
    /// The schema version after migrating.
    pub to: u64,
    /// Names of the migrations applied, in order.
    pub names: Vec<&'static str>,
}

impl Applied {
    /// True when the store was already current.
    pub fn is_noop(&self) -> bool {
        self.names.is_empty()
    }
}

/// Opens a store for the CA: refuses a store from a newer schema and a
/// wrong store key before writing anything, opens the data keys (or creates
/// the first, in a store that holds no CA records yet), applies pending
/// migrations, rotates the data key when due, and returns the [`Records`]
/// over the store. Records built here never rotate on their own; the
/// server uses [`open_with`].
pub fn open(
    store: Arc<dyn Store>,
    key: &StoreKey,
    now: OffsetDateTime,
) -> Result<Records, StoreError> {
    let (sealer, _) = open_sealer(&*store, key, None, now, DEFAULT_DATA_KEY_ROTATION_PERIOD)?;
    Ok(Records::new(store, sealer))
}

/// How [`open_with`] opens a store.
pub struct OpenOptions {
    /// The store key: the data key registry is sealed under it from now on.
    pub key: StoreKey,
    /// The previous store key, while changing store keys: a registry still
    /// sealed under it is re-sealed under `key`, with a fresh data key, in
    /// one transaction.
    pub old_key: Option<StoreKey>,
    /// How old the newest data key may get before a new one seals.
    pub data_key_rotation_period: time::Duration,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("key", &self.key)
            .field("old_key", &self.old_key)
            .field("data_key_rotation_period", &self.data_key_rotation_period)
            .finish_non_exhaustive()
    }
}

/// What [`open_with`] did to the data keys, for the server's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// The registry was opened as it was.
    None,
    /// The newest data key was older than the rotation period: a new one
    /// was added.
    DataKeyRotated,
    /// The registry was re-sealed from the old store key to the new one,
    /// with a new data key.
    StoreKeyChanged { from: StoreKeyId, to: StoreKeyId },
}

/// [`open`] for the server: the data key rotates at start when due and,
/// afterwards, at the first seal once due (the registry change and the
/// records sealed with the new key are one transaction); with
/// `old_key`, the registry moves to the new store key.
pub fn open_with(
    store: Arc<dyn Store>,
    options: &OpenOptions,
) -> Result<(Records, KeyChange), StoreError> {
    let now = options.clock.now();
    let (sealer, change) = open_sealer(
        &*store,
        &options.key,
        options.old_key.as_ref(),
        now,
        options.data_key_rotation_period,
    )?;
    let records = Records::with_rotation(
        store,
        sealer,
        options.key.clone(),
        options.data_key_rotation_period,
        options.clock.clone(),
    );
    Ok((records, change))
}

/// The part of [`open_with`] below [`Records`]: vets the store, opens or
/// creates the data keys, migrates, and rotates the data key when the
/// store key changed or the newest data key is `period` old.
fn open_sealer(
    store: &dyn Store,
    key: &StoreKey,
    old_key: Option<&StoreKey>,
    now: OffsetDateTime,
    period: time::Duration,
) -> Result<(Sealer, KeyChange), StoreError> {
    check(store)?;
    let (sealer, sealed_with) = open_or_create_data_keys(store, key, old_key, now)?;
    let applied = migrate_with(store, &sealer, sealed_with, MIGRATIONS, CURRENT_VERSION)?;
    if !applied.is_noop() {
        tracing::info!(
            from = applied.from,
            to = applied.to,
            migrations = ?applied.names,
            "store schema migrated"
        );
    }
    let change = if sealed_with.id() != key.id() {
        KeyChange::StoreKeyChanged {
            from: *sealed_with.id(),
            to: *key.id(),
        }
    } else if sealer.rotation_due(now, period) {
        KeyChange::DataKeyRotated
    } else {
        return Ok((sealer, KeyChange::None));
    };
    let current = store.get(schema::DATA_KEYS)?;
    let next = sealer.with_new_key(now)?;
    let index = store.index()?;
    let txn = Txn {
        checks: vec![],
        ops: restamped_ca(store, &sealer, &next)?,
    }
    .check(schema::DATA_KEYS, current.as_deref())
    .check_index(index)
    .put(schema::DATA_KEYS, next.to_registry(key)?);
    store.commit(&txn)?;
    Ok((next, change))
}

/// The CA records (if any) re-sealed with `next` and stamped with the index
/// of the coming commit. A commit outside the CA must carry them: the CA
/// engine guards its commits with the CA's modify index, which has to stay
/// the global index. Re-sealing with the newest data key also means that,
/// after a change of store key, the CA's secrets are under a data key that
/// the old store key never sealed.
fn restamped_ca(store: &dyn Store, sealer: &Sealer, next: &Sealer) -> Result<Vec<Op>, StoreError> {
    let Some(state) = Records::load_ca_from(store, sealer)? else {
        return Ok(Vec::new());
    };
    let index = store
        .index()?
        .checked_add(1)
        .ok_or_else(|| StoreError::Corrupt("the global index is exhausted".into()))?;
    Records::ca_ops(next, &state, index)
}

/// The schema version of `store` (0 for a new store), refusing one newer
/// than this build supports. Writes nothing.
pub fn check(store: &dyn Store) -> Result<u64, StoreError> {
    let found = schema_version(store)?;
    if found > CURRENT_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: CURRENT_VERSION,
        });
    }
    Ok(found)
}

/// The schema version recorded in `store`, 0 for a new store.
pub fn schema_version(store: &dyn Store) -> Result<u64, StoreError> {
    match store.get(schema::SCHEMA_VERSION)? {
        None => Ok(0),
        Some(raw) => schema::decode_u64(&raw)
            .ok_or_else(|| StoreError::Corrupt(format!("{} is not a u64", schema::SCHEMA_VERSION))),
    }
}

/// Opens the data keys (the registry, or the one data key of schemas 1
/// and 2) with whichever of `key` and `old_key` sealed them, or creates the
/// registry under `key` in a store without CA records. CA records without
/// data keys are refused: a new data key would silently orphan them.
/// Returns the keys and the store key that opened them.
fn open_or_create_data_keys<'k>(
    store: &dyn Store,
    key: &'k StoreKey,
    old_key: Option<&'k StoreKey>,
    now: OffsetDateTime,
) -> Result<(Sealer, &'k StoreKey), StoreError> {
    if let Some(record) = store.get(schema::DATA_KEYS)? {
        let sealed_by = Sealer::registry_store_key_id(&record)?;
        let opening = choose_key(sealed_by, key, old_key)?;
        return Ok((Sealer::from_registry(&record, opening)?, opening));
    }
    if let Some(record) = store.get(schema::DATA_KEY)? {
        let opening = match old_key {
            // The one data key names its store key too; try the old key
            // first only when the new one is not it.
            Some(old) => match Sealer::from_record(&record, key) {
                Ok(sealer) => return Ok((sealer, key)),
                Err(StoreError::WrongKey(_)) => old,
                Err(other) => return Err(other),
            },
            None => key,
        };
        return Ok((
            Sealer::from_record(&record, opening).map_err(|e| match (e, old_key) {
                (StoreError::WrongKey(why), Some(_)) => StoreError::WrongKey(format!(
                    "neither the new nor the old store key opens the data key: {why}"
                )),
                (e, _) => e,
            })?,
            opening,
        ));
    }
    let ca = store.scan(schema::CA)?;
    if let Some((name, _)) = ca.first() {
        return Err(StoreError::Corrupt(format!(
            "the store holds CA records ({name}) but no data keys ({}): they cannot be opened, \
             and a new data key would orphan them; restore the data directory from a snapshot \
             or backup",
            schema::DATA_KEYS
        )));
    }
    if let Some(old) = old_key {
        return Err(StoreError::WrongKey(format!(
            "an old store key ({}) was given to re-seal the store from, but the store is new: \
             there is nothing sealed under it; start with the store key alone",
            old.id()
        )));
    }
    let sealer = Sealer::generate(now)?;
    let mut txn = Txn::new()
        .check(schema::DATA_KEYS, None)
        .check(schema::DATA_KEY, None);
    for name in std::iter::once(schema::CA_STATE_V1).chain(schema::CA_RECORDS) {
        txn = txn.check(name, None);
    }
    store.commit(&txn.put(schema::DATA_KEYS, sealer.to_registry(key)?))?;
    Ok((sealer, key))
}

/// The key among `key` and `old_key` whose ID is `sealed_by`, or
/// `WrongKey` naming the store's key and the ones given.
fn choose_key<'k>(
    sealed_by: StoreKeyId,
    key: &'k StoreKey,
    old_key: Option<&'k StoreKey>,
) -> Result<&'k StoreKey, StoreError> {
    if &sealed_by == key.id() {
        return Ok(key);
    }
    match old_key {
        Some(old) if &sealed_by == old.id() => Ok(old),
        Some(old) => Err(StoreError::WrongKey(format!(
            "the data is sealed with store key {sealed_by}, which is neither the new store key \
             ({}) nor the old one ({}); give the key the store is sealed with as the old key",
            key.id(),
            old.id()
        ))),
        None => Err(StoreError::WrongKey(format!(
            "the data is sealed with store key {sealed_by}, but the key given is {}; start with \
             the store key this data directory was created with",
            key.id()
        ))),
    }
}

/// Brings `store` to [`CURRENT_VERSION`], one transaction per migration;
/// `key` is the store key the data keys are sealed under.
pub fn migrate(store: &dyn Store, sealer: &Sealer, key: &StoreKey) -> Result<Applied, StoreError> {
    migrate_with(store, sealer, key, MIGRATIONS, CURRENT_VERSION)
}

/// [`migrate`] over an explicit list, so tests can exercise failures.
fn migrate_with(
    store: &dyn Store,
    sealer: &Sealer,
    key: &StoreKey,
    migrations: &[Migration],
    supported: u64,
) -> Result<Applied, StoreError> {
    let from = schema_version(store)?;
    if from > supported {
        return Err(StoreError::SchemaTooNew {
            found: from,
            supported,
        });
    }
    let mut applied = Applied {
        from,
        to: from,
        names: Vec::new(),
    };
    for migration in migrations.iter().filter(|m| m.version > from) {
        let failed = |e: StoreError| match e {
            StoreError::Corrupt(why) => StoreError::Corrupt(format!(
                "migration {} ({}) failed: {why}",
                migration.version, migration.name
            )),
            other => other,
        };
        let before = store.get(schema::SCHEMA_VERSION)?;
        let index = store.index()?;
        let ops = (migration.plan)(store, sealer, key).map_err(failed)?;
        let txn = Txn {
            checks: vec![],
            ops,
        }
        .check(schema::SCHEMA_VERSION, before.as_deref())
        .check_index(index)
        .put(
            schema::SCHEMA_VERSION,
            schema::encode_u64(migration.version).to_vec(),
        );
        store.commit(&txn)?;
        applied.to = migration.version;
        applied.names.push(migration.name);
    }
    Ok(applied)
}

/// Migration 1: nothing to write beyond the version. The index is the
/// backend's, and [`open`] creates the data key before migrating.
fn initial_layout(_: &dyn Store, _: &Sealer, _: &StoreKey) -> Result<Vec<Op>, StoreError> {
    Ok(Vec::new())
}

/// Migration 2: the one sealed `ca/state` record becomes the CA records of
/// [`Records`], so that only what holds secrets stays sealed and a change
/// of one part no longer rewrites the whole state.
///
/// The CA's modify index becomes this migration's commit index: the CA
/// engine guards its commits with the global index, which this commit
/// moves.
fn split_ca_state(store: &dyn Store, sealer: &Sealer, _: &StoreKey) -> Result<Vec<Op>, StoreError> {
    let Some(sealed) = store.get(schema::CA_STATE_V1)? else {
        return Ok(Vec::new());
    };
    let json = sealer.open(schema::CA_STATE_V1, &sealed)?;
    let state: CaState = serde_json::from_slice(&json)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", schema::CA_STATE_V1)))?;
    let index = store
        .index()?
        .checked_add(1)
        .ok_or_else(|| StoreError::Corrupt("the global index is exhausted".into()))?;
    let mut ops = Records::ca_ops(sealer, &state, index)?;
    ops.push(Op::Delete(schema::CA_STATE_V1.into()));
    Ok(ops)
}

/// Migration 3: the one data key (`meta/data_key`) becomes the first entry
/// of the data key registry (`meta/data_keys`), keeping its ID and creation
/// time, so every sealed record still names a key the registry holds. The
/// CA records are re-stamped with this commit's index, as in migration 2.
fn data_key_registry(
    store: &dyn Store,
    sealer: &Sealer,
    key: &StoreKey,
) -> Result<Vec<Op>, StoreError> {
    let Some(_) = store.get(schema::DATA_KEY)? else {
        // A store created with the registry: nothing to move.
        return Ok(Vec::new());
    };
    if store.get(schema::DATA_KEYS)?.is_some() {
        return Err(StoreError::Corrupt(format!(
            "the store holds both {} and {}",
            schema::DATA_KEY,
            schema::DATA_KEYS
        )));
    }
    let mut ops = restamped_ca(store, sealer, sealer)?;
    ops.push(Op::Put(schema::DATA_KEYS.into(), sealer.to_registry(key)?));
    ops.push(Op::Delete(schema::DATA_KEY.into()));
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshca_store::conformance::{sample_state, MARKER};
    use meshca_store::MemoryStore;

    const NOW: OffsetDateTime = time::macros::datetime!(2030-01-01 00:00 UTC);

    fn new_store() -> Arc<dyn Store> {
        Arc::new(MemoryStore::new())
    }

    /// A store as meshca wrote schema 1: version, data key, sealed ca/state.
    fn v1_store(key: &StoreKey, state: &CaState) -> (Arc<dyn Store>, Sealer) {
        let store = new_store();
        let sealer = Sealer::generate(NOW).unwrap();
        let json = serde_json::to_vec(state).unwrap();
        store
            .commit(
                &Txn::new()
                    .put(schema::SCHEMA_VERSION, schema::encode_u64(1).to_vec())
                    .put(schema::DATA_KEY, sealer.to_record(key).unwrap())
                    .put(
                        schema::CA_STATE_V1,
                        sealer.seal(schema::CA_STATE_V1, &json).unwrap(),
                    ),
            )
            .unwrap();
        (store, sealer)
    }

    #[test]
    fn the_list_is_strictly_increasing_from_one_without_gaps() {
        let versions: Vec<u64> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<u64> = (1..=CURRENT_VERSION).collect();
        assert_eq!(versions, expected);
        assert!(MIGRATIONS.iter().all(|m| !m.name.is_empty()));
    }

    #[test]
    fn a_new_store_gets_a_data_key_and_the_current_version() {
        let store = new_store();
        let key = StoreKey::generate().unwrap();
        let records = open(store.clone(), &key, NOW).unwrap();
        assert_eq!(schema_version(&*store).unwrap(), CURRENT_VERSION);
        let record = store.get(schema::DATA_KEYS).unwrap().expect("a registry");
        assert!(Sealer::from_registry(&record, &key).is_ok());
        assert_eq!(store.get(schema::DATA_KEY).unwrap(), None);
        assert_eq!(records.load_ca().unwrap(), None);

        let index = store.index().unwrap();
        let snapshot = store.snapshot().unwrap();
        open(store.clone(), &key, NOW).unwrap();
        assert_eq!(store.index().unwrap(), index, "reopening writes nothing");
        assert_eq!(store.snapshot().unwrap(), snapshot);
    }

    #[test]
    fn a_v1_state_is_split_into_the_ca_records() {
        let key = StoreKey::generate().unwrap();
        let state = CaState {
            modify_index: 1,
            ..sample_state(MARKER)
        };
        let (store, sealer) = v1_store(&key, &state);
        let records = open(store.clone(), &key, NOW).unwrap();
        let index = store.index().unwrap();
        assert_eq!(
            index, 3,
            "the v1 store was at 1; migrations 2 and 3 are a commit each"
        );
        assert_eq!(store.get(schema::CA_STATE_V1).unwrap(), None);
        let loaded = records.load_ca().unwrap().expect("the CA");
        assert_eq!(
            loaded,
            CaState {
                modify_index: index,
                ..state
            },
            "the CA's modify index is the migration's commit, the global index"
        );
        // The engine's next commit, guarded by that index, goes through.
        assert_eq!(records.commit_ca(&loaded, index).unwrap(), index + 1);
        let registry = store.get(schema::DATA_KEYS).unwrap().unwrap();
        assert_eq!(
            Sealer::from_registry(&registry, &key)
                .unwrap()
                .data_key_ids(),
            vec![sealer.data_key_id()],
            "the data key is kept, now in the registry"
        );
        assert_eq!(store.get(schema::DATA_KEY).unwrap(), None);
    }

    #[test]
    fn a_newer_schema_is_refused_before_writing() {
        let store = new_store();
        store
            .commit(&Txn::new().put(
                schema::SCHEMA_VERSION,
                schema::encode_u64(CURRENT_VERSION + 1).to_vec(),
            ))
            .unwrap();
        let before = store.snapshot().unwrap();
        let err = open(store.clone(), &StoreKey::generate().unwrap(), NOW).unwrap_err();
        assert_eq!(
            err,
            StoreError::SchemaTooNew {
                found: CURRENT_VERSION + 1,
                supported: CURRENT_VERSION
            }
        );
        assert_eq!(store.snapshot().unwrap(), before);
    }

    #[test]
    fn a_wrong_store_key_is_refused_before_writing() {
        let key = StoreKey::generate().unwrap();
        let (store, _) = v1_store(&key, &sample_state(MARKER));
        let before = store.snapshot().unwrap();
        let err = open(store.clone(), &StoreKey::generate().unwrap(), NOW).unwrap_err();
        assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
        assert_eq!(store.snapshot().unwrap(), before);
    }

    #[test]
    fn ca_records_without_a_data_key_are_never_orphaned() {
        for orphan in [schema::CA_STATE_V1, schema::CA_KEYS] {
            let store = new_store();
            store
                .commit(&Txn::new().put(orphan, b"sealed".to_vec()))
                .unwrap();
            let before = store.snapshot().unwrap();
            let err = open(store.clone(), &StoreKey::generate().unwrap(), NOW).unwrap_err();
            assert!(
                matches!(&err, StoreError::Corrupt(m) if m.contains("no data key")),
                "{err:?}"
            );
            assert_eq!(store.snapshot().unwrap(), before, "no data key was written");
        }
    }

    #[test]
    fn a_failing_migration_keeps_the_versions_before_it() {
        fn fails(_: &dyn Store, _: &Sealer, _: &StoreKey) -> Result<Vec<Op>, StoreError> {
            Err(StoreError::Corrupt("boom".into()))
        }
        let list = [
            MIGRATIONS[0],
            Migration {
                version: 2,
                name: "always fails",
                plan: fails,
            },
        ];
        let store = new_store();
        let sealer = Sealer::generate(NOW).unwrap();
        let key = StoreKey::generate().unwrap();
        let err = migrate_with(&*store, &sealer, &key, &list, 2).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains("migration 2 (always fails)")),
            "{err:?}"
        );
        assert_eq!(schema_version(&*store).unwrap(), 1);
    }

    #[test]
    fn a_sealed_v1_state_that_does_not_open_fails_the_migration_and_keeps_it() {
        let key = StoreKey::generate().unwrap();
        let (store, _) = v1_store(&key, &sample_state(MARKER));
        let moved = store.get(schema::DATA_KEY).unwrap();
        // ca/state sealed by another data key: it must not open.
        let other = Sealer::generate(NOW).unwrap();
        store
            .commit(&Txn::new().put(
                schema::CA_STATE_V1,
                other.seal(schema::CA_STATE_V1, b"{}").unwrap(),
            ))
            .unwrap();
        let err = open(store.clone(), &key, NOW).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains("migration 2")),
            "{err:?}"
        );
        assert_eq!(schema_version(&*store).unwrap(), 1);
        assert!(store.get(schema::CA_STATE_V1).unwrap().is_some());
        assert_eq!(store.get(schema::DATA_KEY).unwrap(), moved);
    }

    #[test]
    fn a_garbled_version_is_reported_as_corrupt() {
        let store = new_store();
        store
            .commit(&Txn::new().put(schema::SCHEMA_VERSION, b"xx".to_vec()))
            .unwrap();
        assert!(matches!(
            open(store, &StoreKey::generate().unwrap(), NOW),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// A store as the schema-2 code wrote it: the one data key in
    /// `meta/data_key` and the split CA records, stamped at index 1.
    fn v2_store(key: &StoreKey, state: &CaState) -> (Arc<dyn Store>, Sealer) {
        let store = new_store();
        let sealer = Sealer::generate(NOW).unwrap();
        let ops = Records::ca_ops(&sealer, state, 1).unwrap();
        store
            .commit(
                &Txn {
                    checks: vec![],
                    ops,
                }
                .put(schema::SCHEMA_VERSION, schema::encode_u64(2).to_vec())
                .put(schema::DATA_KEY, sealer.to_record(key).unwrap()),
            )
            .unwrap();
        (store, sealer)
    }

    /// The data key ID a sealed record names.
    fn sealed_by(store: &dyn Store, record: &str) -> String {
        let raw = store.get(record).unwrap().unwrap();
        let value: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        value["data_key_id"].as_str().unwrap().to_string()
    }

    fn options(key: &StoreKey, old: Option<&StoreKey>, clock: Arc<dyn Clock>) -> OpenOptions {
        OpenOptions {
            key: key.clone(),
            old_key: old.cloned(),
            data_key_rotation_period: DEFAULT_DATA_KEY_ROTATION_PERIOD,
            clock,
        }
    }

    fn clock_at(at: OffsetDateTime) -> Arc<meshca_core::ManualClock> {
        Arc::new(meshca_core::ManualClock::new(at))
    }

    #[test]
    fn a_v2_store_moves_its_data_key_into_the_registry() {
        let key = StoreKey::generate().unwrap();
        let state = CaState {
            modify_index: 1,
            ..sample_state(MARKER)
        };
        let (store, sealer) = v2_store(&key, &state);
        let records = open(store.clone(), &key, NOW).unwrap();
        assert_eq!(schema_version(&*store).unwrap(), 3);
        assert_eq!(store.index().unwrap(), 2, "migration 3 is one commit");
        assert_eq!(store.get(schema::DATA_KEY).unwrap(), None);
        let registry = store.get(schema::DATA_KEYS).unwrap().unwrap();
        let opened = Sealer::from_registry(&registry, &key).unwrap();
        assert_eq!(opened.data_key_ids(), vec![sealer.data_key_id()]);
        assert_eq!(opened.created_at(), NOW);
        let loaded = records.load_ca().unwrap().unwrap();
        assert_eq!(
            loaded.modify_index, 2,
            "re-stamped with the migration's commit"
        );
        assert_eq!(loaded.private_keys, state.private_keys);
        assert_eq!(records.commit_ca(&loaded, 2).unwrap(), 3);
    }

    #[test]
    fn a_due_data_key_rotates_at_start_and_the_ca_is_resealed_with_the_new_one() {
        let key = StoreKey::generate().unwrap();
        let (store, _) = v2_store(
            &key,
            &CaState {
                modify_index: 1,
                ..sample_state(MARKER)
            },
        );
        let first = open(store.clone(), &key, NOW)
            .unwrap()
            .sealer()
            .data_key_id();
        let index = store.index().unwrap();

        // Six days later: not due, nothing written.
        let clock = clock_at(NOW + time::Duration::days(6));
        let (_, change) = open_with(store.clone(), &options(&key, None, clock)).unwrap();
        assert_eq!(change, KeyChange::None);
        assert_eq!(store.index().unwrap(), index);

        let clock = clock_at(NOW + time::Duration::days(7));
        let (records, change) = open_with(store.clone(), &options(&key, None, clock)).unwrap();
        assert_eq!(change, KeyChange::DataKeyRotated);
        assert_eq!(store.index().unwrap(), index + 1, "one transaction");
        let sealer = records.sealer();
        assert_eq!(sealer.data_key_ids().len(), 2);
        assert_eq!(sealer.data_key_ids()[0], first);
        for record in [schema::CA_CONFIG, schema::CA_KEYS] {
            assert_eq!(sealed_by(&*store, record), sealer.data_key_id().to_string());
        }
        let loaded = records.load_ca().unwrap().unwrap();
        assert_eq!(loaded.modify_index, index + 1);
        assert_eq!(loaded.private_keys, sample_state(MARKER).private_keys);
        assert_eq!(records.commit_ca(&loaded, index + 1).unwrap(), index + 2);
    }

    #[test]
    fn a_data_key_rotates_at_the_first_seal_once_due_in_the_same_transaction() {
        let key = StoreKey::generate().unwrap();
        let clock = clock_at(NOW);
        let store = new_store();
        let (records, _) = open_with(store.clone(), &options(&key, None, clock.clone())).unwrap();
        let first = records.sealer().data_key_id();
        let state = sample_state(MARKER);
        let index = store.index().unwrap();
        assert_eq!(records.commit_ca(&state, index).unwrap(), index + 1);
        assert_eq!(sealed_by(&*store, schema::CA_KEYS), first.to_string());

        clock.advance(time::Duration::days(7));
        let registry_before = store.get(schema::DATA_KEYS).unwrap();
        // A conflicting commit writes neither the records nor the registry,
        // and keeps the data keys in use.
        assert!(matches!(
            records.commit_ca(&state, index),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(store.get(schema::DATA_KEYS).unwrap(), registry_before);
        assert_eq!(records.sealer().data_key_id(), first);

        assert_eq!(records.commit_ca(&state, index + 1).unwrap(), index + 2);
        let second = records.sealer().data_key_id();
        assert_ne!(second, first);
        assert_eq!(sealed_by(&*store, schema::CA_KEYS), second.to_string());
        let registry = store.get(schema::DATA_KEYS).unwrap().unwrap();
        assert_eq!(
            Sealer::from_registry(&registry, &key)
                .unwrap()
                .data_key_ids(),
            vec![first, second]
        );
        // A restart reads what was written.
        let reopened = open(store.clone(), &key, NOW + time::Duration::days(7)).unwrap();
        assert_eq!(
            reopened.load_ca().unwrap().unwrap().private_keys,
            state.private_keys
        );
    }

    #[test]
    fn a_due_data_key_rotates_on_the_timer_without_touching_the_ca_head() {
        let key = StoreKey::generate().unwrap();
        let clock = clock_at(NOW);
        let store = new_store();
        let (records, _) = open_with(store.clone(), &options(&key, None, clock.clone())).unwrap();
        assert!(
            !records.rotate_data_key_if_due().unwrap(),
            "nothing is due yet"
        );
        let first = records.sealer().data_key_id();
        let state = sample_state(MARKER);
        let index = records.commit_ca(&state, store.index().unwrap()).unwrap();
        let head = store.get(schema::CA_ROOTS).unwrap();

        clock.advance(time::Duration::days(6));
        assert!(!records.rotate_data_key_if_due().unwrap());
        assert_eq!(store.index().unwrap(), index, "not due: nothing written");

        clock.advance(time::Duration::days(1));
        assert!(records.rotate_data_key_if_due().unwrap());
        assert_eq!(store.index().unwrap(), index + 1, "one transaction");
        let second = records.sealer().data_key_id();
        assert_ne!(second, first);
        for record in [schema::CA_CONFIG, schema::CA_KEYS] {
            assert_eq!(sealed_by(&*store, record), second.to_string());
        }
        assert_eq!(
            store.get(schema::CA_ROOTS).unwrap(),
            head,
            "the CA head is untouched"
        );
        let registry = store.get(schema::DATA_KEYS).unwrap().unwrap();
        let opened = Sealer::from_registry(&registry, &key).unwrap();
        assert_eq!(opened.data_key_ids(), vec![first, second]);
        assert!(
            !records.rotate_data_key_if_due().unwrap(),
            "the new key is not due"
        );

        // The CA keeps its modify index, so its next commit is still guarded by it.
        let loaded = records.load_ca().unwrap().unwrap();
        assert_eq!(loaded.modify_index, index);
        assert_eq!(loaded.private_keys, state.private_keys);
        assert_eq!(records.commit_ca(&loaded, index).unwrap(), index + 1);
        let reopened = open(store.clone(), &key, NOW + time::Duration::days(7)).unwrap();
        assert_eq!(
            reopened.load_ca().unwrap().unwrap().private_keys,
            state.private_keys
        );
    }

    #[test]
    fn a_timed_data_key_rotation_that_lost_a_race_writes_nothing() {
        let key = StoreKey::generate().unwrap();
        let clock = clock_at(NOW);
        let store = new_store();
        let (records, _) = open_with(store.clone(), &options(&key, None, clock.clone())).unwrap();
        let state = sample_state(MARKER);
        records.commit_ca(&state, store.index().unwrap()).unwrap();
        // A second server's view of the same store, rotating first.
        let (other, _) = open_with(store.clone(), &options(&key, None, clock.clone())).unwrap();
        clock.advance(time::Duration::days(7));
        assert!(other.rotate_data_key_if_due().unwrap());
        let after = (store.index().unwrap(), store.get(schema::CA_KEYS).unwrap());
        // This view does not know the other's new key, so it cannot even
        // open the records; either way it writes nothing.
        assert!(records.rotate_data_key_if_due().is_err());
        assert_eq!(
            (store.index().unwrap(), store.get(schema::CA_KEYS).unwrap()),
            after
        );
    }

    /// Fault double: another server records its datacenter just before
    /// this one's first commit — the race of two servers starting at once
    /// on an empty etcd store, which a unit test cannot time for real.
    struct AnotherServerRecordsFirst {
        inner: Arc<dyn Store>,
        theirs: &'static str,
        raced: std::sync::atomic::AtomicBool,
    }

    impl Store for AnotherServerRecordsFirst {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            self.inner.scan(prefix)
        }
        fn index(&self) -> Result<u64, StoreError> {
            self.inner.index()
        }
        fn commit(&self, txn: &Txn) -> Result<u64, StoreError> {
            if !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let theirs = self.theirs.as_bytes().to_vec();
                self.inner
                    .commit(&Txn::new().put(schema::DATACENTER, theirs))?;
            }
            self.inner.commit(txn)
        }
        fn snapshot(&self) -> Result<meshca_store::Snapshot, StoreError> {
            self.inner.snapshot()
        }
        fn restore(&self, snapshot: &meshca_store::Snapshot) -> Result<u64, StoreError> {
            self.inner.restore(snapshot)
        }
        fn watch(&self, prefix: &str) -> tokio::sync::watch::Receiver<u64> {
            self.inner.watch(prefix)
        }
        fn health(&self) -> Result<(), StoreError> {
            self.inner.health()
        }
    }

    #[test]
    fn a_datacenter_another_server_recorded_first_is_the_one_returned() {
        for (theirs, ours) in [("dc1", "dc1"), ("dc2", "dc1")] {
            let plain = new_store();
            let racing = Arc::new(AnotherServerRecordsFirst {
                inner: plain.clone(),
                theirs,
                raced: Default::default(),
            });
            let records = Records::new(racing, Sealer::generate(NOW).unwrap());
            // The caller compares and refuses a different one.
            assert_eq!(records.record_datacenter(ours).unwrap(), theirs);
            assert_eq!(
                plain.get(schema::DATACENTER).unwrap().unwrap(),
                theirs.as_bytes()
            );
        }
    }

    #[test]
    fn changing_the_store_key_reseals_the_registry_and_adds_a_data_key() {
        let old = StoreKey::generate().unwrap();
        let new = StoreKey::generate().unwrap();
        let (store, sealer) = v2_store(
            &old,
            &CaState {
                modify_index: 1,
                ..sample_state(MARKER)
            },
        );
        open(store.clone(), &old, NOW).unwrap();
        let (records, change) =
            open_with(store.clone(), &options(&new, Some(&old), clock_at(NOW))).unwrap();
        assert_eq!(
            change,
            KeyChange::StoreKeyChanged {
                from: *old.id(),
                to: *new.id()
            }
        );
        let ids = records.sealer().data_key_ids();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], sealer.data_key_id());
        assert_eq!(sealed_by(&*store, schema::CA_KEYS), ids[1].to_string());
        let registry = store.get(schema::DATA_KEYS).unwrap().unwrap();
        assert_eq!(Sealer::registry_store_key_id(&registry).unwrap(), *new.id());

        // Afterwards: the new key alone opens it, the old one alone is
        // refused, and giving both again changes nothing.
        let index = store.index().unwrap();
        let reopened = open(store.clone(), &new, NOW).unwrap();
        assert_eq!(
            reopened.load_ca().unwrap().unwrap().private_keys,
            sample_state(MARKER).private_keys
        );
        let err = open(store.clone(), &old, NOW).unwrap_err();
        assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
        let (_, change) =
            open_with(store.clone(), &options(&new, Some(&old), clock_at(NOW))).unwrap();
        assert_eq!(change, KeyChange::None);
        assert_eq!(store.index().unwrap(), index);
    }

    #[test]
    fn an_old_key_that_did_not_seal_the_store_is_refused_naming_the_keys_before_writing() {
        let sealing = StoreKey::generate().unwrap();
        let (store, _) = v2_store(&sealing, &sample_state(MARKER));
        open(store.clone(), &sealing, NOW).unwrap();
        let before = store.snapshot().unwrap();
        let (new, other) = (StoreKey::generate().unwrap(), StoreKey::generate().unwrap());
        let err =
            open_with(store.clone(), &options(&new, Some(&other), clock_at(NOW))).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
        for id in [sealing.id(), new.id(), other.id()] {
            assert!(msg.contains(&id.to_string()), "{msg} names {id}");
        }
        assert_eq!(store.snapshot().unwrap(), before);

        // The same for a schema-2 store, whose one data key names its key.
        let (store, _) = v2_store(&sealing, &sample_state(MARKER));
        let before = store.snapshot().unwrap();
        let err =
            open_with(store.clone(), &options(&new, Some(&other), clock_at(NOW))).unwrap_err();
        assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
        assert_eq!(store.snapshot().unwrap(), before);
    }

    #[test]
    fn an_old_key_for_a_new_store_is_refused() {
        let store = new_store();
        let (new, old) = (StoreKey::generate().unwrap(), StoreKey::generate().unwrap());
        let err = open_with(store.clone(), &options(&new, Some(&old), clock_at(NOW))).unwrap_err();
        assert!(err.to_string().contains("the store is new"), "{err}");
        assert_eq!(store.index().unwrap(), 0);
    }

    #[test]
    fn a_flipped_byte_in_the_registry_or_a_sealed_record_is_refused_before_writing() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let flip = |raw: &[u8], field: &str| {
            let mut value: serde_json::Value = serde_json::from_slice(raw).unwrap();
            let mut blob = b64.decode(value[field].as_str().unwrap()).unwrap();
            let at = blob.len() / 2;
            blob[at] ^= 0x04;
            value[field] = b64.encode(&blob).into();
            serde_json::to_vec(&value).unwrap()
        };
        let key = StoreKey::generate().unwrap();
        let (store, _) = v2_store(
            &key,
            &CaState {
                modify_index: 1,
                ..sample_state(MARKER)
            },
        );
        open(store.clone(), &key, NOW).unwrap();

        let registry = store.get(schema::DATA_KEYS).unwrap().unwrap();
        store
            .commit(&Txn::new().put(schema::DATA_KEYS, flip(&registry, "sealed")))
            .unwrap();
        let before = store.snapshot().unwrap();
        let err = open(store.clone(), &key, NOW + time::Duration::days(30)).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains("altered or damaged")),
            "{err:?}"
        );
        assert_eq!(
            store.snapshot().unwrap(),
            before,
            "a due rotation wrote nothing"
        );

        store
            .commit(&Txn::new().put(schema::DATA_KEYS, registry))
            .unwrap();
        let keys = store.get(schema::CA_KEYS).unwrap().unwrap();
        store
            .commit(&Txn::new().put(schema::CA_KEYS, flip(&keys, "sealed")))
            .unwrap();
        let before = store.snapshot().unwrap();
        let err = open(store.clone(), &key, NOW + time::Duration::days(30)).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains("ca/keys failed authentication")),
            "{err:?}"
        );
        assert_eq!(
            store.snapshot().unwrap(),
            before,
            "a due rotation wrote nothing"
        );
    }
}
