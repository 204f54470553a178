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
use meshca_store::{schema, Op, Records, Sealer, Store, StoreError, StoreKey, Txn};
use std::sync::Arc;
use time::OffsetDateTime;

/// The schema version this build writes and understands.
pub const CURRENT_VERSION: u64 = 2;

/// One forward step of the schema: `plan` reads the store and returns the
/// changes, which are committed together with the new version.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u64,
    pub name: &'static str,
    pub plan: fn(&dyn Store, &Sealer) -> Result<Vec<Op>, StoreError>,
}

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
/// wrong store key before writing anything, opens the data key (or creates
/// it, in a store that holds no CA records yet), applies pending
/// migrations, and returns the [`Records`] over the store.
pub fn open(
    store: Arc<dyn Store>,
    key: &StoreKey,
    now: OffsetDateTime,
) -> Result<Records, StoreError> {
    check(&*store)?;
    let sealer = open_or_create_data_key(&*store, key, now)?;
    let applied = migrate(&*store, &sealer)?;
    if !applied.is_noop() {
        tracing::info!(
            from = applied.from,
            to = applied.to,
            migrations = ?applied.names,
            "store schema migrated"
        );
    }
    Ok(Records::new(store, sealer))
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

/// Unseals the data key with `key`, or creates one in a store without CA
/// records. CA records without their data key are refused: a new data key
/// would silently orphan them.
fn open_or_create_data_key(
    store: &dyn Store,
    key: &StoreKey,
    now: OffsetDateTime,
) -> Result<Sealer, StoreError> {
    if let Some(record) = store.get(schema::DATA_KEY)? {
        return Sealer::from_record(&record, key);
    }
    let ca = store.scan(schema::CA)?;
    if let Some((name, _)) = ca.first() {
        return Err(StoreError::Corrupt(format!(
            "the store holds CA records ({name}) but no data key ({}): they cannot be opened, \
             and a new data key would orphan them; restore the data directory from a snapshot \
             or backup",
            schema::DATA_KEY
        )));
    }
    let sealer = Sealer::generate(now)?;
    let mut txn = Txn::new().check(schema::DATA_KEY, None);
    for name in std::iter::once(schema::CA_STATE_V1).chain(schema::CA_RECORDS) {
        txn = txn.check(name, None);
    }
    store.commit(&txn.put(schema::DATA_KEY, sealer.to_record(key)?))?;
    Ok(sealer)
}

/// Brings `store` to [`CURRENT_VERSION`], one transaction per migration.
pub fn migrate(store: &dyn Store, sealer: &Sealer) -> Result<Applied, StoreError> {
    migrate_with(store, sealer, MIGRATIONS, CURRENT_VERSION)
}

/// [`migrate`] over an explicit list, so tests can exercise failures.
fn migrate_with(
    store: &dyn Store,
    sealer: &Sealer,
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
        let ops = (migration.plan)(store, sealer).map_err(failed)?;
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
fn initial_layout(_: &dyn Store, _: &Sealer) -> Result<Vec<Op>, StoreError> {
    Ok(Vec::new())
}

/// Migration 2: the one sealed `ca/state` record becomes the CA records of
/// [`Records`], so that only what holds secrets stays sealed and a change
/// of one part no longer rewrites the whole state.
///
/// The CA's modify index becomes this migration's commit index: the CA
/// engine guards its commits with the global index, which this commit
/// moves.
fn split_ca_state(store: &dyn Store, sealer: &Sealer) -> Result<Vec<Op>, StoreError> {
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
        let record = store.get(schema::DATA_KEY).unwrap().expect("a data key");
        assert!(Sealer::from_record(&record, &key).is_ok());
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
        assert_eq!(index, 2, "the v1 store was at 1; migration 2 is one commit");
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
        let data_key = store.get(schema::DATA_KEY).unwrap().unwrap();
        assert_eq!(
            Sealer::from_record(&data_key, &key).unwrap().data_key_id(),
            sealer.data_key_id(),
            "the data key is kept"
        );
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
        fn fails(_: &dyn Store, _: &Sealer) -> Result<Vec<Op>, StoreError> {
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
        let err = migrate_with(&*store, &sealer, &list, 2).unwrap_err();
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
}
