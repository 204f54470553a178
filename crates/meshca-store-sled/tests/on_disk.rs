//! SledStore on a real disk with the CA records over it: persistence,
//! sealing at rest, the store key file, private modes, and the refusals
//! that must leave a data dir untouched.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

use meshca_core::state::CaState;
use meshca_store::conformance::{leak_patterns, sample_state};
use meshca_store::{schema, Records, Store, StoreError, StoreKey, Txn, KEY_FILE_NAME};
use meshca_store_sled::{SledStore, DB_DIR_NAME, KEY_CHECK_FILE_NAME, MARK_FILE_NAME};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::macros::datetime;

/// A recognisable private key, to look for on disk.
const MARKER: &[u8] = b"MESHCA-PLAINTEXT-PRIVATE-KEY-MARKER-7f3a";
const NOW: time::OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

/// Every file under `dir` with its bytes, to compare a directory before and after.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("list dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.insert(path.clone(), std::fs::read(&path).expect("read file"));
        }
    }
    found
}

/// Paths of files under `dir` that contain any leak pattern of `secret`.
fn files_leaking(dir: &Path, secret: &[u8]) -> Vec<PathBuf> {
    let patterns = leak_patterns(secret);
    files(dir)
        .into_iter()
        .filter(|(_, bytes)| {
            patterns
                .iter()
                .any(|p| bytes.windows(p.len()).any(|w| w == p))
        })
        .map(|(path, _)| path)
        .collect()
}

/// Asserts two directory listings are equal, describing the first difference.
fn assert_unchanged(before: &BTreeMap<PathBuf, Vec<u8>>, after: &BTreeMap<PathBuf, Vec<u8>>) {
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(before), names(after), "the set of files changed");
    for (path, old) in before {
        let new = &after[path];
        let first_diff = old.iter().zip(new.iter()).position(|(a, b)| a != b);
        assert!(
            old == new,
            "{} changed: {} -> {} bytes, first difference at {first_diff:?}",
            path.display(),
            old.len(),
            new.len()
        );
    }
}

fn open_store(dir: &Path, key: &StoreKey) -> Arc<dyn Store> {
    Arc::new(SledStore::open(dir, key).expect("open store"))
}

fn open_records(dir: &Path, key: &StoreKey) -> Records {
    meshca_migrations::open(open_store(dir, key), key, NOW).expect("migrate")
}

/// Commits `state` as the first CA and returns its index.
fn bootstrap(records: &Records, state: &CaState) -> u64 {
    let index = records.index().unwrap();
    records.commit_ca(state, index).unwrap()
}

#[test]
fn the_ca_survives_closing_and_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    let state = sample_state(MARKER);
    let index = bootstrap(&open_records(tmp.path(), &key), &state);

    let records = open_records(tmp.path(), &key);
    assert_eq!(records.index().unwrap(), index);
    let loaded = records.load_ca().unwrap().unwrap();
    assert_eq!(loaded.private_keys["root-1"].expose(), MARKER);
    assert_eq!(
        loaded,
        CaState {
            modify_index: index,
            ..state
        }
    );
    assert_eq!(records.commit_ca(&loaded, index).unwrap(), index + 1);
}

/// Proves the scan below would catch a leak: sled keeps an unsealed value
/// readable in its files after a flush.
#[test]
fn the_leak_scan_finds_an_unsealed_value() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), &StoreKey::generate().unwrap());
    store
        .commit(&Txn::new().put("ca/plain", serde_json::to_vec(MARKER).unwrap()))
        .unwrap();
    drop(store);
    assert!(!files_leaking(tmp.path(), MARKER).is_empty());
}

#[test]
fn private_keys_never_reach_the_disk_in_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    {
        let records = open_records(tmp.path(), &key);
        let first = bootstrap(&records, &sample_state(MARKER));
        records.commit_ca(&sample_state(MARKER), first).unwrap();
    }
    assert!(!files(tmp.path()).is_empty());
    assert_eq!(files_leaking(tmp.path(), MARKER), Vec::<PathBuf>::new());
}

#[test]
fn the_wrong_key_is_refused_and_nothing_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    let index = bootstrap(&open_records(tmp.path(), &key), &sample_state(MARKER));
    let before = files(tmp.path());

    let err = SledStore::open(tmp.path(), &StoreKey::generate().unwrap()).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
    assert!(err.to_string().contains("store key"), "{err}");
    assert_unchanged(&before, &files(tmp.path()));

    let records = open_records(tmp.path(), &key);
    assert_eq!(records.index().unwrap(), index);
    assert!(records.load_ca().unwrap().is_some());
}

#[test]
fn a_key_with_the_right_id_but_other_bytes_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    drop(open_records(tmp.path(), &key));
    let mut forged = key.id().as_bytes().to_vec();
    forged.extend_from_slice(&[9; 32]);
    let err = SledStore::open(tmp.path(), &StoreKey::from_bytes(&forged).unwrap()).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
}

#[test]
fn a_store_from_a_newer_schema_is_refused_and_keeps_its_records() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    bootstrap(&open_records(tmp.path(), &key), &sample_state(MARKER));
    let newer = meshca_migrations::CURRENT_VERSION + 1;
    {
        let store = open_store(tmp.path(), &key);
        store
            .commit(&Txn::new().put(schema::SCHEMA_VERSION, schema::encode_u64(newer).to_vec()))
            .unwrap();
    }
    let store = open_store(tmp.path(), &key);
    let before = store.snapshot().unwrap();
    let err = meshca_migrations::open(store.clone(), &key, NOW).unwrap_err();
    assert_eq!(
        err,
        StoreError::SchemaTooNew {
            found: newer,
            supported: meshca_migrations::CURRENT_VERSION
        }
    );
    assert_eq!(store.snapshot().unwrap(), before, "no record changed");
}

#[test]
fn without_the_key_check_and_the_mark_the_data_key_still_refuses_a_wrong_key() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    let index = bootstrap(&open_records(tmp.path(), &key), &sample_state(MARKER));
    let check = tmp.path().join(DB_DIR_NAME).join(KEY_CHECK_FILE_NAME);
    std::fs::remove_file(&check).unwrap();
    // The mark is authenticated under the store key too; without it, the
    // data key record is the last line of defence.
    std::fs::remove_file(tmp.path().join(MARK_FILE_NAME)).unwrap();

    let err = SledStore::open(tmp.path(), &StoreKey::generate().unwrap()).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
    assert!(!check.exists(), "a refused open must not write a key check");
    assert!(!tmp.path().join(MARK_FILE_NAME).exists(), "nor a mark");
    // sled's recovery may have written its own files (a snapshot); the
    // records are checked below, with the right key.
    assert_eq!(open_records(tmp.path(), &key).index().unwrap(), index);
    assert!(check.exists(), "the right key restores the key check");
}

#[test]
fn a_mark_under_another_key_names_the_store_key() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    bootstrap(&open_records(tmp.path(), &key), &sample_state(MARKER));
    std::fs::remove_file(tmp.path().join(DB_DIR_NAME).join(KEY_CHECK_FILE_NAME)).unwrap();
    let before = files(tmp.path());
    let err = SledStore::open(tmp.path(), &StoreKey::generate().unwrap()).unwrap_err();
    assert!(err.to_string().contains("store key"), "{err}");
    assert_unchanged(&before, &files(tmp.path()));
}

#[test]
fn a_new_store_is_stamped_with_the_current_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let records = open_records(tmp.path(), &StoreKey::generate().unwrap());
    assert_eq!(
        meshca_migrations::schema_version(&**records.store()).unwrap(),
        meshca_migrations::CURRENT_VERSION
    );
}

#[test]
fn writing_a_key_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(KEY_FILE_NAME);
    let first = StoreKey::write_new(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = StoreKey::write_new(&path).unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(StoreKey::load(&path).unwrap().id(), first.id());
}

/// Writes a key file as an operator would: mode 0600 (others may not read it).
fn write_private(path: &Path, content: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn key_files_load_as_binary_or_base64() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    let raw = base64_decode(&key.to_base64());

    let binary = tmp.path().join("binary.key");
    write_private(&binary, &raw);
    assert_eq!(
        StoreKey::load(&binary).unwrap().to_base64(),
        key.to_base64()
    );

    let text = tmp.path().join("text.key");
    write_private(&text, format!("  {}\n", key.to_base64().as_str()));
    assert_eq!(StoreKey::load(&text).unwrap().id(), key.id());
}

#[test]
fn key_files_with_aes_128_and_192_keys_seal_a_store_and_other_sizes_are_named() {
    use base64::Engine as _;
    let tmp = tempfile::tempdir().unwrap();
    for (len, bits) in [(48usize, 128usize), (56, 192)] {
        let raw: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let binary = tmp.path().join(format!("binary-{bits}.key"));
        write_private(&binary, &raw);
        // Base64 of 48 bytes is 64 characters: it must not be taken for a raw key.
        let text = tmp.path().join(format!("text-{bits}.key"));
        write_private(
            &text,
            base64::engine::general_purpose::STANDARD.encode(&raw),
        );
        for path in [&binary, &text] {
            let key = StoreKey::load(path).unwrap();
            assert_eq!(key.bits(), bits, "{}", path.display());
        }
        let key = StoreKey::load(&binary).unwrap();
        let data = tmp.path().join(format!("data-{bits}"));
        let state = sample_state(MARKER);
        {
            let records = open_records(&data, &key);
            bootstrap(&records, &state);
        }
        let reopened = open_records(&data, &key);
        assert_eq!(
            reopened.load_ca().unwrap().unwrap().private_keys,
            state.private_keys
        );
    }
    let odd = tmp.path().join("odd.key");
    write_private(&odd, [5u8; 40]);
    let err = StoreKey::load(&odd).unwrap_err();
    assert!(matches!(err, StoreError::InvalidKey(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("16-, 24- or 32-byte"), "{msg}");
    assert!(msg.contains(&odd.display().to_string()), "{msg}");
}

#[test]
fn a_missing_key_file_is_an_io_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("absent.key");
    let err = StoreKey::load(&path).unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");
    assert!(err.to_string().contains("absent.key"), "{err}");
}

#[test]
fn a_locked_data_dir_is_reported_not_clobbered() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    let _held = SledStore::open(tmp.path(), &key).unwrap();
    let err = SledStore::open(tmp.path(), &key).unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every directory and file under `dir`, with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut found = vec![(dir.to_path_buf(), mode(dir))];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(modes(&path));
        } else {
            found.push((path.clone(), mode(&path)));
        }
    }
    found
}

#[test]
fn the_data_dir_is_0700_and_every_store_file_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("a/data");
    let key = StoreKey::generate().unwrap();
    let records = open_records(&data, &key);
    bootstrap(&records, &sample_state(MARKER));
    drop(records);
    let records = open_records(&data, &key);
    records
        .commit_ca(&sample_state(MARKER), records.index().unwrap())
        .unwrap();

    assert_eq!(mode(&tmp.path().join("a")), 0o700, "created parents too");
    let all = modes(&data);
    assert!(all.len() >= 6, "{all:?}");
    for (path, mode) in all {
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, expected, "{} is {mode:o}", path.display());
    }
}

#[test]
fn an_existing_store_gets_private_modes_on_open() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    drop(open_records(tmp.path(), &key));
    // As sled and older meshca versions left them.
    let db_dir = tmp.path().join(DB_DIR_NAME);
    std::fs::set_permissions(&db_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (path, _) in modes(&db_dir).into_iter().filter(|(p, _)| p.is_file()) {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    drop(open_records(tmp.path(), &key));
    for (path, mode) in modes(&db_dir) {
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, expected, "{} is {mode:o}", path.display());
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("valid base64")
}

/// A store another handle holds is refused with a message saying so
/// (after a short wait, since a just-dropped handle releases its lock a
/// moment later); once the holder is gone it opens.
#[test]
fn a_store_in_use_is_refused_and_opens_once_released() {
    let dir = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    let held = SledStore::open(dir.path(), &key).unwrap();
    let err = SledStore::open(dir.path(), &key).unwrap_err();
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(held);
    SledStore::open(dir.path(), &key).expect("opens once the holder is gone");
}
