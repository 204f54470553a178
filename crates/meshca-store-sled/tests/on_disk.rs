//! SledStore on a real disk: persistence, sealing at rest, the store key file,
//! and the refusals that must leave a data dir untouched.

use meshca_migrations::layout;
use meshca_store::conformance::sample_state;
use meshca_store::{SledStore, Store, StoreError, StoreKey, KEY_FILE_NAME};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A recognisable private key, to look for on disk.
const MARKER: &[u8] = b"MESHCA-PLAINTEXT-PRIVATE-KEY-MARKER-7f3a";

/// Every file under `dir` with its bytes, to compare a directory before and after.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("list dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            files.insert(path.clone(), std::fs::read(&path).expect("read file"));
        }
    }
    files
}

/// The encodings in which a private key could leak: raw, as serde_json writes
/// `SecretBytes` (an array of numbers), and base64.
fn leak_patterns(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let json = serde_json::to_vec(secret).expect("encode secret");
    let json_inner = json[1..json.len() - 1].to_vec();
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    vec![
        secret.to_vec(),
        json_inner,
        b64.as_bytes()[..b64.len() - 4].to_vec(),
    ]
}

/// Paths of files under `dir` that contain any leak pattern of `secret`.
fn files_leaking(dir: &Path, secret: &[u8]) -> Vec<PathBuf> {
    let patterns = leak_patterns(secret);
    snapshot(dir)
        .into_iter()
        .filter(|(_, bytes)| {
            patterns
                .iter()
                .any(|p| bytes.windows(p.len()).any(|w| w == p))
        })
        .map(|(path, _)| path)
        .collect()
}

/// Asserts two snapshots are equal, describing the first difference briefly.
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

fn open(dir: &Path, key: &StoreKey) -> SledStore {
    SledStore::open(dir, key.clone()).expect("open store")
}

#[test]
fn state_survives_closing_and_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    let state = sample_state(MARKER);
    let index = open(tmp.path(), &key).commit_ca_state(&state, 0).unwrap();

    let store = open(tmp.path(), &key);
    assert_eq!(store.current_index().unwrap(), index);
    let loaded = store.load_ca_state().unwrap().unwrap();
    assert_eq!(loaded.modify_index, index);
    assert_eq!(loaded.private_keys["root-1"].expose(), MARKER);
    assert_eq!(
        loaded,
        meshca_core::state::CaState {
            modify_index: index,
            ..state
        }
    );
    // The index carries on from where it was, not from 0.
    assert!(store.commit_ca_state(&loaded, index).unwrap() > index);
}

/// Proves the scan below would catch a leak: sled keeps an unsealed value
/// readable in its files after a flush.
#[test]
fn the_leak_scan_finds_an_unsealed_value() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let db = sled::open(tmp.path()).unwrap();
        db.insert("k", serde_json::to_vec(MARKER).unwrap()).unwrap();
        db.flush().unwrap();
    }
    assert!(!files_leaking(tmp.path(), MARKER).is_empty());
}

#[test]
fn private_keys_never_reach_the_disk_in_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    {
        let store = open(tmp.path(), &key);
        let first = store.commit_ca_state(&sample_state(MARKER), 0).unwrap();
        store.commit_ca_state(&sample_state(MARKER), first).unwrap();
    }
    assert!(!snapshot(tmp.path()).is_empty());
    assert_eq!(files_leaking(tmp.path(), MARKER), Vec::<PathBuf>::new());
}

#[test]
fn the_wrong_key_is_refused_and_nothing_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    let index = open(tmp.path(), &key)
        .commit_ca_state(&sample_state(MARKER), 0)
        .unwrap();
    let before = snapshot(tmp.path());

    let err = SledStore::open(tmp.path(), StoreKey::generate().unwrap()).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
    assert!(err.to_string().contains("store key"), "{err}");
    assert_unchanged(&before, &snapshot(tmp.path()));

    let store = open(tmp.path(), &key);
    assert_eq!(store.current_index().unwrap(), index);
    assert!(store.load_ca_state().unwrap().is_some());
}

#[test]
fn a_key_with_the_right_id_but_other_bytes_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    drop(open(tmp.path(), &key));
    let mut forged = key.id().as_bytes().to_vec();
    forged.extend_from_slice(&[9; 32]);
    let err = SledStore::open(tmp.path(), StoreKey::from_bytes(&forged).unwrap()).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
}

/// Stamps the store in `dir` with `version`, as a newer meshca would.
fn stamp_schema(dir: &Path, version: u64) {
    let db = sled::open(dir).expect("open sled");
    let meta = db.open_tree(layout::META_TREE).expect("meta tree");
    meta.insert(layout::SCHEMA_VERSION_KEY, &version.to_be_bytes())
        .expect("stamp version");
    db.flush().expect("flush");
}

/// Every key and value in every tree, to compare a database's content.
fn contents(dir: &Path) -> BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>> {
    let db = sled::open(dir).expect("open sled");
    let mut all = BTreeMap::new();
    for name in db.tree_names() {
        for kv in db.open_tree(&name).expect("tree").iter() {
            let (k, v) = kv.expect("read record");
            all.insert((name.to_vec(), k.to_vec()), v.to_vec());
        }
    }
    all
}

#[test]
fn a_store_from_a_newer_schema_is_refused_and_keeps_its_records() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    open(tmp.path(), &key)
        .commit_ca_state(&sample_state(MARKER), 0)
        .unwrap();
    let newer = meshca_migrations::CURRENT_VERSION + 1;
    stamp_schema(tmp.path(), newer);
    let before = contents(tmp.path());

    let err = SledStore::open(tmp.path(), key).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, supported }
            if found == newer && supported == meshca_migrations::CURRENT_VERSION),
        "{err:?}"
    );
    // sled itself may refresh its snapshot file on open; no record may change.
    assert_eq!(contents(tmp.path()), before);
}

#[test]
fn without_the_key_check_file_the_data_key_still_refuses_a_wrong_key() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    let index = open(tmp.path(), &key)
        .commit_ca_state(&sample_state(MARKER), 0)
        .unwrap();
    let check = tmp.path().join("meshca-key-check.json");
    std::fs::remove_file(&check).unwrap();
    let before = contents(tmp.path());

    let err = SledStore::open(tmp.path(), StoreKey::generate().unwrap()).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
    assert_eq!(contents(tmp.path()), before);
    assert!(!check.exists(), "a refused open must not write a key check");

    assert_eq!(open(tmp.path(), &key).current_index().unwrap(), index);
    assert!(check.exists(), "the right key restores the key check");
}

#[test]
fn a_new_store_is_stamped_with_the_current_schema() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open(tmp.path(), &StoreKey::generate().unwrap()));
    let db = sled::open(tmp.path()).unwrap();
    assert_eq!(
        meshca_migrations::schema_version(&db).unwrap(),
        meshca_migrations::CURRENT_VERSION
    );
}

#[cfg(unix)]
#[test]
fn the_key_file_is_created_private_and_reused() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("meshca-data");
    let (key, created) = StoreKey::load_or_create_in(&data_dir).unwrap();
    assert!(created);
    let path = data_dir.join(KEY_FILE_NAME);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");

    let (again, created) = StoreKey::load_or_create_in(&data_dir).unwrap();
    assert!(!created);
    assert_eq!(again.id(), key.id());
    assert_eq!(again.to_base64(), key.to_base64());
}

#[test]
fn writing_a_key_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store.key");
    let first = StoreKey::write_new(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = StoreKey::write_new(&path).unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(StoreKey::load(&path).unwrap().id(), first.id());
}

#[test]
fn key_files_load_as_binary_or_base64() {
    let tmp = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().unwrap();
    let mut raw = key.id().as_bytes().to_vec();
    raw.extend_from_slice(&base64_decode(&key.to_base64())[32..]);

    let binary = tmp.path().join("binary.key");
    std::fs::write(&binary, &raw).unwrap();
    assert_eq!(
        StoreKey::load(&binary).unwrap().to_base64(),
        key.to_base64()
    );

    let text = tmp.path().join("text.key");
    std::fs::write(&text, format!("  {}\n", key.to_base64().as_str())).unwrap();
    assert_eq!(StoreKey::load(&text).unwrap().id(), key.id());
}

#[test]
fn key_files_with_short_aes_keys_are_rejected_clearly() {
    use base64::Engine as _;
    let tmp = tempfile::tempdir().unwrap();
    let aes128 = [5u8; 48];
    let binary = tmp.path().join("binary.key");
    std::fs::write(&binary, aes128).unwrap();
    // Base64 of 48 bytes is 64 characters: it must not be taken for a raw key.
    let text = tmp.path().join("text.key");
    std::fs::write(
        &text,
        base64::engine::general_purpose::STANDARD.encode(aes128),
    )
    .unwrap();
    for path in [binary, text] {
        let err = StoreKey::load(&path).unwrap_err();
        assert!(matches!(err, StoreError::InvalidKey(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("AES-128") && msg.contains("AES-256"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
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
    let _held = open(tmp.path(), &key);
    let err = SledStore::open(tmp.path(), key.clone()).unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("valid base64")
}
