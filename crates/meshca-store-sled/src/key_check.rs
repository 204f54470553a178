//! The key-check file beside the database: tells whether a store key is the
//! right one without opening sled.
//!
//! Opening a sled 0.34 database writes to it: recovery regenerates the
//! snapshot and may trim a torn log tail. A start with the wrong key must
//! leave the data directory exactly as it was, so the key is checked here
//! first, against a [`KeyCheck`] (the key's ID and a fixed text sealed
//! under it). The authoritative check remains the data key record, which
//! the migrations open after the database is.

use meshca_store::{fs, KeyCheck, StoreError, StoreKey, StoreKeyId};
use std::path::Path;

/// File name of the key check, inside the database directory.
pub const KEY_CHECK_FILE_NAME: &str = "meshca-key-check.json";

/// Verifies `key` against the check file in `db_dir`, if there is one.
///
/// A missing file is not an error: the directory is new, or a crash came
/// before the file was written; the data key record still decides then.
pub(crate) fn verify(db_dir: &Path, key: &StoreKey) -> Result<(), StoreError> {
    let path = db_dir.join(KEY_CHECK_FILE_NAME);
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::Io(format!("reading {}: {e}", path.display()))),
    };
    let check: KeyCheck = serde_json::from_slice(&raw)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    check.verify(key, &db_dir.display().to_string())
}

/// The ID of the key the check file in `db_dir` names, if there is one.
pub(crate) fn read_id(db_dir: &Path) -> Result<Option<StoreKeyId>, StoreError> {
    let path = db_dir.join(KEY_CHECK_FILE_NAME);
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::Io(format!("reading {}: {e}", path.display()))),
    };
    let check: KeyCheck = serde_json::from_slice(&raw)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    check.store_key_id().map(Some)
}

/// Writes the check file for `key` in `db_dir` unless it exists
/// (atomically, mode 0600).
pub(crate) fn ensure(db_dir: &Path, key: &StoreKey) -> Result<(), StoreError> {
    let path = db_dir.join(KEY_CHECK_FILE_NAME);
    if path.exists() {
        return Ok(());
    }
    replace(db_dir, key)
}

/// Writes the check file for `key` in `db_dir`, replacing any (atomically,
/// mode 0600): after the store key changed.
pub(crate) fn replace(db_dir: &Path, key: &StoreKey) -> Result<(), StoreError> {
    let path = db_dir.join(KEY_CHECK_FILE_NAME);
    let json = serde_json::to_vec_pretty(&KeyCheck::new(key)?)
        .map_err(|e| StoreError::Corrupt(format!("encoding the key check: {e}")))?;
    fs::write_file_atomically(&path, &json)
        .map_err(|e| StoreError::Io(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_right_key_passes_and_others_fail() {
        let dir = tempfile::tempdir().unwrap();
        let key = StoreKey::generate().unwrap();
        verify(dir.path(), &key).unwrap();
        ensure(dir.path(), &key).unwrap();
        verify(dir.path(), &key).unwrap();
        assert!(matches!(
            verify(dir.path(), &StoreKey::generate().unwrap()),
            Err(StoreError::WrongKey(_))
        ));
    }

    #[test]
    fn an_existing_check_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let key = StoreKey::generate().unwrap();
        ensure(dir.path(), &key).unwrap();
        let before = std::fs::read(dir.path().join(KEY_CHECK_FILE_NAME)).unwrap();
        ensure(dir.path(), &StoreKey::generate().unwrap()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(KEY_CHECK_FILE_NAME)).unwrap(),
            before
        );
    }
}
