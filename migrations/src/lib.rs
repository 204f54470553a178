//! Ordered, forward-only schema migrations for meshca's sled store.
//!
//! A store records its schema version in `meta/schema_version`. [`migrate`]
//! reads it, refuses a store written by a newer meshca, and applies every
//! pending entry of [`MIGRATIONS`] in order, recording the version after each
//! one. There are no down-migrations: to go back, restore a snapshot.
//!
//! Architecture Invariant: the list is strictly increasing from 1 without gaps,
//! and its last entry is [`CURRENT_VERSION`]; a migration, once released, is
//! never edited, only followed by a new one.
//!
//! Migrations do not fsync: the store makes the migrated database durable
//! (flush, then fsync of its files) before it serves anything.

pub mod layout;

/// The schema version this build writes and understands.
pub const CURRENT_VERSION: u64 = 1;

/// One forward step of the schema.
///
/// `apply` must be idempotent: the version is recorded only after it returns,
/// so a crash in between runs it again on the next start.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u64,
    pub name: &'static str,
    pub apply: fn(&sled::Db) -> Result<(), MigrationError>,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "initial layout: meta and ca trees, global index 0",
    apply: initial_layout,
}];

/// What a [`migrate`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The schema version found before migrating (0 for a fresh database).
    pub from: u64,
    /// The schema version after migrating.
    pub to: u64,
    /// Names of the migrations applied, in order.
    pub names: Vec<&'static str>,
}

impl Applied {
    /// True when the database was already current.
    pub fn is_noop(&self) -> bool {
        self.names.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The database was written by a newer meshca; refuse rather than guess.
    #[error("store schema version {found} is newer than this binary supports ({supported})")]
    TooNew { found: u64, supported: u64 },
    /// A migration could not complete; versions before it stay recorded.
    #[error("migration {version} ({name}) failed: {reason}")]
    Failed {
        version: u64,
        name: &'static str,
        reason: String,
    },
    #[error("store metadata is corrupt: {0}")]
    Corrupt(String),
    #[error("store I/O error during migration: {0}")]
    Sled(#[from] sled::Error),
}

/// Brings `db` to [`CURRENT_VERSION`], applying pending migrations in order.
pub fn migrate(db: &sled::Db) -> Result<Applied, MigrationError> {
    migrate_with(db, MIGRATIONS, CURRENT_VERSION)
}

/// The schema version recorded in `db` (0 when none is), refusing a version
/// newer than this build supports. Writes nothing, so a caller can vet a
/// database (for example its store key) before [`migrate`] touches it.
pub fn check(db: &sled::Db) -> Result<u64, MigrationError> {
    check_against(db, CURRENT_VERSION)
}

/// The schema version recorded in `db`, 0 for a fresh database.
pub fn schema_version(db: &sled::Db) -> Result<u64, MigrationError> {
    let meta = db.open_tree(layout::META_TREE)?;
    match meta.get(layout::SCHEMA_VERSION_KEY)? {
        None => Ok(0),
        Some(raw) => layout::decode_u64(&raw)
            .ok_or_else(|| MigrationError::Corrupt("meta/schema_version is not a u64".into())),
    }
}

/// [`check`] against an explicit `supported` version, for tests.
fn check_against(db: &sled::Db, supported: u64) -> Result<u64, MigrationError> {
    let found = schema_version(db)?;
    if found > supported {
        return Err(MigrationError::TooNew { found, supported });
    }
    Ok(found)
}

/// [`migrate`] over an explicit list, so tests can exercise failures.
fn migrate_with(
    db: &sled::Db,
    migrations: &[Migration],
    supported: u64,
) -> Result<Applied, MigrationError> {
    let from = check_against(db, supported)?;
    let mut applied = Applied {
        from,
        to: from,
        names: Vec::new(),
    };
    for migration in migrations.iter().filter(|m| m.version > from) {
        (migration.apply)(db).map_err(|e| MigrationError::Failed {
            version: migration.version,
            name: migration.name,
            reason: e.to_string(),
        })?;
        record_version(db, migration.version)?;
        applied.to = migration.version;
        applied.names.push(migration.name);
    }
    Ok(applied)
}

/// Stamps `meta/schema_version`, after a migration has fully applied.
fn record_version(db: &sled::Db, version: u64) -> Result<(), MigrationError> {
    let meta = db.open_tree(layout::META_TREE)?;
    meta.insert(layout::SCHEMA_VERSION_KEY, &version.to_be_bytes())?;
    Ok(())
}

/// Migration 1: the `meta` and `ca` trees, with the global index at 0.
///
/// The index is only written when absent, so re-running keeps a live index.
fn initial_layout(db: &sled::Db) -> Result<(), MigrationError> {
    let meta = db.open_tree(layout::META_TREE)?;
    db.open_tree(layout::CA_TREE)?;
    let zero: &[u8] = &0u64.to_be_bytes();
    // Either outcome is fine: Err(CompareAndSwapError) means an index exists.
    let _ = meta.compare_and_swap(layout::INDEX_KEY, None as Option<&[u8]>, Some(zero))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh_db() -> sled::Db {
        sled::Config::new().temporary(true).open().unwrap()
    }

    fn stamp(db: &sled::Db, version: u64) {
        record_version(db, version).unwrap();
    }

    fn index_of(db: &sled::Db) -> Option<u64> {
        let meta = db.open_tree(layout::META_TREE).unwrap();
        let raw = meta.get(layout::INDEX_KEY).unwrap()?;
        layout::decode_u64(&raw)
    }

    #[test]
    fn the_list_is_strictly_increasing_from_one_without_gaps() {
        let versions: Vec<u64> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<u64> = (1..=CURRENT_VERSION).collect();
        assert_eq!(versions, expected);
        assert!(MIGRATIONS.iter().all(|m| !m.name.is_empty()));
    }

    #[test]
    fn a_fresh_database_reaches_the_current_version() {
        let db = fresh_db();
        let applied = migrate(&db).unwrap();
        assert_eq!(applied.from, 0);
        assert_eq!(applied.to, CURRENT_VERSION);
        assert_eq!(applied.names.len() as u64, CURRENT_VERSION);
        assert_eq!(schema_version(&db).unwrap(), CURRENT_VERSION);
        assert_eq!(index_of(&db), Some(0));
        let trees = db.tree_names();
        assert!(trees.iter().any(|t| t == layout::META_TREE.as_bytes()));
        assert!(trees.iter().any(|t| t == layout::CA_TREE.as_bytes()));
    }

    #[test]
    fn re_running_is_a_noop_and_keeps_the_index() {
        let db = fresh_db();
        migrate(&db).unwrap();
        let meta = db.open_tree(layout::META_TREE).unwrap();
        meta.insert(layout::INDEX_KEY, &7u64.to_be_bytes()).unwrap();
        let again = migrate(&db).unwrap();
        assert!(again.is_noop());
        assert_eq!((again.from, again.to), (CURRENT_VERSION, CURRENT_VERSION));
        assert_eq!(index_of(&db), Some(7));
    }

    #[test]
    fn the_initial_layout_is_idempotent_when_rerun_after_a_crash() {
        let db = fresh_db();
        initial_layout(&db).unwrap();
        let meta = db.open_tree(layout::META_TREE).unwrap();
        meta.insert(layout::INDEX_KEY, &3u64.to_be_bytes()).unwrap();
        // The version was never stamped, as if we crashed before it was.
        let applied = migrate(&db).unwrap();
        assert_eq!(applied.from, 0);
        assert_eq!(index_of(&db), Some(3));
    }

    #[test]
    fn a_database_from_a_newer_schema_is_refused_untouched() {
        let db = fresh_db();
        stamp(&db, CURRENT_VERSION + 1);
        let err = migrate(&db).unwrap_err();
        assert!(matches!(
            err,
            MigrationError::TooNew { found, supported }
                if found == CURRENT_VERSION + 1 && supported == CURRENT_VERSION
        ));
        assert!(matches!(check(&db), Err(MigrationError::TooNew { .. })));
        assert_eq!(index_of(&db), None, "nothing was migrated");
    }

    #[test]
    fn check_reports_the_version_without_writing() {
        let db = fresh_db();
        assert_eq!(check(&db).unwrap(), 0);
        assert_eq!(schema_version(&db).unwrap(), 0);
        migrate(&db).unwrap();
        assert_eq!(check(&db).unwrap(), CURRENT_VERSION);
    }

    #[test]
    fn a_failing_migration_keeps_the_versions_before_it() {
        fn fails(_: &sled::Db) -> Result<(), MigrationError> {
            Err(MigrationError::Corrupt("boom".into()))
        }
        let list = [
            MIGRATIONS[0],
            Migration {
                version: 2,
                name: "always fails",
                apply: fails,
            },
        ];
        let db = fresh_db();
        let err = migrate_with(&db, &list, 2).unwrap_err();
        assert!(matches!(err, MigrationError::Failed { version: 2, .. }));
        assert_eq!(schema_version(&db).unwrap(), 1);
    }

    #[test]
    fn a_garbled_version_is_reported_as_corrupt() {
        let db = fresh_db();
        let meta = db.open_tree(layout::META_TREE).unwrap();
        meta.insert(layout::SCHEMA_VERSION_KEY, b"xx").unwrap();
        assert!(matches!(migrate(&db), Err(MigrationError::Corrupt(_))));
    }
}
