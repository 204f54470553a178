//! Making sled's writes survive a power loss, which `sled::Db::flush` alone
//! does not do on Linux.

use crate::StoreError;
use std::fs::File;
use std::io::ErrorKind;
use std::path::Path;

/// Fsyncs every file under `dir`, every directory under it, and `dir` itself.
///
/// sled 0.34's `flush()` writes its buffers to the files but does not fsync
/// them on Linux (sled issue #1452), so an acknowledged commit could vanish in
/// a power loss. Calling this after `flush()` closes that gap: file contents
/// reach the disk, and directories are synced so that files sled created (a
/// new snapshot, a blob) are reachable after a crash. Files that disappear
/// while we walk (sled removing an old snapshot) are skipped.
pub(crate) fn sync_tree(dir: &Path) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_error("listing", dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error("listing", dir, &e))?;
        let path = entry.path();
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("inspecting", &path, &e)),
        };
        if file_type.is_dir() {
            sync_tree(&path)?;
        } else if file_type.is_file() {
            sync_path(&path)?;
        }
    }
    sync_path(dir)
}

/// Fsyncs the directory holding `path`, so a newly created file's name is durable.
pub(crate) fn sync_parent_dir(path: &Path) -> Result<(), StoreError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_path(parent),
        _ => sync_path(Path::new(".")),
    }
}

/// Opens `path` (file or directory) read-only and fsyncs it; a vanished file is fine.
fn sync_path(path: &Path) -> Result<(), StoreError> {
    match File::open(path).and_then(|f| f.sync_all()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("syncing", path, &e)),
    }
}

fn io_error(what: &str, path: &Path, err: &std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_a_nested_directory_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs/1"), b"x").unwrap();
        std::fs::write(dir.path().join("db"), b"y").unwrap();
        sync_tree(dir.path()).unwrap();
        sync_parent_dir(&dir.path().join("db")).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(sync_tree(&dir.path().join("absent")).is_err());
    }
}
