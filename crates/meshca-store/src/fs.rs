//! File-system helpers shared by the key file, the backends and the binary:
//! private directories and files (nobody but the owner reads a store), and
//! the fsyncs that make a new file survive a power loss.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::path::Path;

/// Mode of every directory meshca creates for its data.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file meshca writes in its data directory.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents with mode 0700. An existing
/// directory is left as it is: its mode is the operator's choice.
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir)
}

/// Sets `path`'s mode to `mode` unless it already is; a path that vanished
/// meanwhile is fine (sled removes old snapshots while we walk).
pub fn restrict_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if meta.permissions().mode() & 0o777 != mode {
            match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                other => return other,
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Opens `path` for writing with mode 0600; with `create_new`, fails if it
/// already exists.
pub fn create_private_file(path: &Path, create_new: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options.open(path)
}

/// Replaces `path` with `bytes` atomically and durably: a temporary file
/// (mode 0600) is written and fsynced, renamed over `path`, and the
/// directory fsynced, so after a crash `path` holds the old or the new
/// content, never a mix.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = create_private_file(&tmp, false)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_parent_dir(path)
    })();
    if result.is_err() {
        // A half-written temporary file is useless; a failure to remove it
        // changes nothing for the caller, who reports the first error.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs the directory holding `path`, so a newly created or renamed
/// file's name is durable.
pub fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_path(parent),
        _ => sync_path(Path::new(".")),
    }
}

/// Opens `path` (file or directory) read-only and fsyncs it; a vanished file is fine.
pub fn sync_path(path: &Path) -> std::io::Result<()> {
    match File::open(path).and_then(|f| f.sync_all()) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_dirs_and_files_get_their_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_private_dir_all(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&tmp.path().join("a")), DIR_MODE);

        let file = dir.join("f");
        write_file_atomically(&file, b"one").unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        write_file_atomically(&file, b"two").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        assert!(!dir.join("f.tmp").exists());

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        restrict_mode(&file, FILE_MODE).unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        restrict_mode(&dir.join("absent"), FILE_MODE).unwrap();
    }

    #[test]
    fn create_new_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k");
        create_private_file(&path, true).unwrap();
        let err = create_private_file(&path, true).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    }
}
