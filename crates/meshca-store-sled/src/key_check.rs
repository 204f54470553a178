//! A small file beside the database that tells whether a store key is the
//! right one without opening sled.
//!
//! Opening a sled 0.34 database writes to it: recovery regenerates the
//! snapshot and may trim a torn log tail. A start with the wrong key must
//! leave the data directory exactly as it was, so the key is checked here
//! first. The file holds the store key's public ID and a fixed text sealed
//! under the key; it is a verifier, not a copy of any key. The authoritative
//! record remains the data key in `meta`, which is also checked after opening.

use crate::key::{StoreKey, StoreKeyId};
use crate::seal::{open, seal};
use crate::{durability, StoreError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::Path;

/// File name of the key check, inside the database directory.
pub(crate) const KEY_CHECK_FILE_NAME: &str = "meshca-key-check.json";

const CHECK_AAD: &[u8] = b"meshca/key-check";
const CHECK_TEXT: &[u8] = b"meshca store key check, version 1";

#[derive(Serialize, Deserialize)]
struct KeyCheck {
    store_key_id: String,
    sealed: String,
}

/// Verifies `key` against the check file in `dir`, if there is one.
///
/// Returns `WrongKey` when the file names another key or the key cannot open
/// it. A missing file is not an error: the directory is new, or a crash came
/// before the file was written; the data key in `meta` still decides then.
pub(crate) fn verify(dir: &Path, key: &StoreKey) -> Result<(), StoreError> {
    let path = dir.join(KEY_CHECK_FILE_NAME);
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::Io(format!("reading {}: {e}", path.display()))),
    };
    let check: KeyCheck = serde_json::from_slice(&raw)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    let expected = StoreKeyId::from_hex(&check.store_key_id)
        .ok_or_else(|| StoreError::Corrupt(format!("{}: invalid key ID", path.display())))?;
    if &expected != key.id() {
        return Err(StoreError::WrongKey(format!(
            "{} is sealed with store key {expected}, but the key given is {}; \
             start with the store key this data directory was created with",
            dir.display(),
            key.id()
        )));
    }
    let sealed = B64
        .decode(&check.sealed)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    match open(key.key_bytes(), CHECK_AAD, &sealed) {
        Ok(text) if &text[..] == CHECK_TEXT => Ok(()),
        _ => Err(StoreError::WrongKey(format!(
            "store key {} has the expected ID but does not open {}; \
             the key file is damaged or not the original",
            key.id(),
            path.display()
        ))),
    }
}

/// Writes the check file for `key` in `dir` unless it exists, atomically:
/// a temporary file, fsynced, renamed into place, then the directory fsynced.
pub(crate) fn ensure(dir: &Path, key: &StoreKey) -> Result<(), StoreError> {
    let path = dir.join(KEY_CHECK_FILE_NAME);
    if path.exists() {
        return Ok(());
    }
    let check = KeyCheck {
        store_key_id: key.id().to_hex(),
        sealed: B64.encode(seal(key.key_bytes(), CHECK_AAD, CHECK_TEXT)?),
    };
    let json = serde_json::to_vec_pretty(&check)
        .map_err(|e| StoreError::Corrupt(format!("encoding the key check: {e}")))?;
    let tmp = dir.join(format!("{KEY_CHECK_FILE_NAME}.tmp"));
    let io = |e: std::io::Error| StoreError::Io(format!("writing {}: {e}", path.display()));
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    durability::sync_parent_dir(&path)
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

        let other = StoreKey::generate().unwrap();
        assert!(matches!(
            verify(dir.path(), &other),
            Err(StoreError::WrongKey(_))
        ));

        let mut same_id = key.id().as_bytes().to_vec();
        same_id.extend_from_slice(&[3; 32]);
        let same_id = StoreKey::from_bytes(&same_id).unwrap();
        assert!(matches!(
            verify(dir.path(), &same_id),
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
