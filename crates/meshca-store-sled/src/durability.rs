//! Making sled's writes survive a power loss, which `sled::Db::flush` alone
//! does not do on Linux, and keeping the store's files private.

use meshca_store::fs::{restrict_mode, sync_path, DIR_MODE, FILE_MODE};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// An I/O error and the path it happened on (for the log; the error kind
/// alone goes into the message callers see).
#[derive(Debug)]
pub(crate) struct PathError {
    pub(crate) path: PathBuf,
    pub(crate) error: std::io::Error,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.error)
    }
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> PathError + '_ {
    move |error| PathError {
        path: path.to_path_buf(),
        error,
    }
}

/// Fsyncs every file under `dir`, every directory under it, and `dir`
/// itself, setting files to mode 0600 and directories to 0700 on the way.
///
/// sled 0.34's `flush()` writes its buffers to the files but does not fsync
/// them on Linux (sled issue #1452), so an acknowledged commit could vanish
/// in a power loss. Calling this after `flush()` closes that gap: file
/// contents reach the disk, and directories are synced so that files sled
/// created (a new snapshot, a blob) are reachable after a crash. sled
/// creates its files with the process umask (usually 0644); the modes are
/// fixed here, on every walk, and the directory around them is 0700 from
/// its creation, so no other user could open them in between. Files that
/// disappear while we walk (sled removing an old snapshot) are skipped.
pub(crate) fn sync_tree(dir: &Path) -> Result<(), PathError> {
    let entries = std::fs::read_dir(dir).map_err(at(dir))?;
    for entry in entries {
        let entry = entry.map_err(at(dir))?;
        let path = entry.path();
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(at(&path)(e)),
        };
        if file_type.is_dir() {
            sync_tree(&path)?;
        } else if file_type.is_file() {
            restrict_mode(&path, FILE_MODE).map_err(at(&path))?;
            sync_path(&path).map_err(at(&path))?;
        }
    }
    restrict_mode(dir, DIR_MODE).map_err(at(dir))?;
    sync_path(dir).map_err(at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_a_nested_directory_tree_and_makes_it_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs/1"), b"x").unwrap();
        std::fs::write(dir.path().join("db"), b"y").unwrap();
        sync_tree(dir.path()).unwrap();
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.path().join("blobs")), 0o700);
        assert_eq!(mode(&dir.path().join("blobs/1")), 0o600);
        assert_eq!(mode(&dir.path().join("db")), 0o600);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = sync_tree(&dir.path().join("absent")).unwrap_err();
        assert_eq!(err.error.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("absent"), "{err}");
    }
}
