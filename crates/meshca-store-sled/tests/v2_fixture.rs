//! A store written by meshca's schema-2 code (committed under
//! tests/fixtures/v2-store, never regenerated: one data key in
//! `meta/data_key`) opens with this backend, moves its data key into the
//! registry, loads the same CA, and can change its store key.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

use meshca_core::state::CaState;
use meshca_core::ManualClock;
use meshca_migrations::{KeyChange, OpenOptions};
use meshca_store::{schema, Records, Sealer, Store, StoreError, StoreKey};
use meshca_store_sled::SledStore;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::macros::datetime;

/// Before the fixture's data key is a rotation period old (it was made on
/// 2026-11-29), so opening it rotates nothing unless a test says so.
const NOW: time::OffsetDateTime = datetime!(2026-11-30 00:00 UTC);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2-store")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of the fixture (opening sled writes to its directory) and its key,
/// whose file gets back the mode 0600 that git does not keep.
fn fixture_copy() -> (tempfile::TempDir, PathBuf, StoreKey) {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&fixture(), &data);
    let key_file = data.join("store.key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = StoreKey::load(&key_file).unwrap();
    (tmp, data, key)
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixture().join("expected.json")).unwrap()).unwrap()
}

fn options(key: &StoreKey, old: Option<&StoreKey>) -> OpenOptions {
    OpenOptions {
        key: key.clone(),
        old_key: old.cloned(),
        data_key_rotation_period: meshca_migrations::DEFAULT_DATA_KEY_ROTATION_PERIOD,
        clock: Arc::new(ManualClock::new(NOW)),
    }
}

fn open(data: &Path, key: &StoreKey) -> (Arc<dyn Store>, Records) {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(data, key).unwrap());
    let (records, _) = meshca_migrations::open_with(store.clone(), &options(key, None)).unwrap();
    (store, records)
}

fn check_ca(ca: &CaState, expected: &Value) {
    assert_eq!(
        ca.cluster_id.to_string(),
        expected["cluster_id"].as_str().unwrap()
    );
    let root = ca.active_root().expect("an active root");
    assert_eq!(root.id, expected["root_id"].as_str().unwrap());
    assert_eq!(
        root.signing_key_id,
        expected["signing_key_id"].as_str().unwrap()
    );
    assert_eq!(
        ca.config.config.leaf_cert_ttl().to_string(),
        expected["leaf_cert_ttl"].as_str().unwrap()
    );
    let handles: Vec<&str> = ca.private_keys.keys().map(String::as_str).collect();
    assert_eq!(handles, ["builtin/intermediate", "builtin/root"]);
}

#[test]
fn the_v2_fixture_moves_its_data_key_into_the_registry_and_loads_its_ca() {
    let expected = expected();
    let (_tmp, data, key) = fixture_copy();
    let (store, records) = open(&data, &key);
    assert_eq!(
        meshca_migrations::schema_version(&*store).unwrap(),
        meshca_migrations::CURRENT_VERSION
    );
    assert_eq!(store.get(schema::DATA_KEY).unwrap(), None);
    let index = store.index().unwrap();
    assert_eq!(
        index,
        expected["index"].as_u64().unwrap() + 1,
        "migration 3"
    );
    let registry = store.get(schema::DATA_KEYS).unwrap().unwrap();
    let sealer = Sealer::from_registry(&registry, &key).unwrap();
    assert_eq!(sealer.data_key_ids().len(), 1, "the one data key, kept");
    let ca = records.load_ca().unwrap().expect("the fixture's CA");
    assert_eq!(ca.modify_index, index);
    check_ca(&ca, &expected);
    // The CA engine's next commit goes through.
    assert_eq!(records.commit_ca(&ca, index).unwrap(), index + 1);
}

#[test]
fn the_v2_fixture_changes_store_key_and_then_opens_with_the_new_key_only() {
    let expected = expected();
    let (tmp, data, old) = fixture_copy();
    let new = StoreKey::generate().unwrap();
    {
        let store = Arc::new(SledStore::open_rekeying(&data, &new, &old).unwrap());
        let (_, change) =
            meshca_migrations::open_with(store.clone(), &options(&new, Some(&old))).unwrap();
        assert_eq!(
            change,
            KeyChange::StoreKeyChanged {
                from: *old.id(),
                to: *new.id()
            }
        );
        store.rekey(&new).unwrap();
    }
    let db = std::fs::read(data.join("store/db")).unwrap();
    let err = SledStore::open(&data, &old).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
    assert_eq!(
        std::fs::read(data.join("store/db")).unwrap(),
        db,
        "refused before sled opened"
    );

    let (store, records) = open(&data, &new);
    let sealer = records.sealer();
    assert_eq!(sealer.data_key_ids().len(), 2, "a fresh data key");
    let ca = records.load_ca().unwrap().unwrap();
    check_ca(&ca, &expected);
    assert_eq!(ca.modify_index, store.index().unwrap());
    drop((store, records));

    // A key that never sealed this store, given as the old key, is refused
    // naming the keys, and leaves every file as it was.
    let other = StoreKey::generate().unwrap();
    let before = file_hashes(tmp.path());
    let err = SledStore::open_rekeying(&data, &StoreKey::generate().unwrap(), &other).unwrap_err();
    assert!(err.to_string().contains(&new.id().to_string()), "{err}");
    assert!(err.to_string().contains(&other.id().to_string()), "{err}");
    assert_eq!(file_hashes(tmp.path()), before);
}

/// A store-key change cut short after the data keys were re-sealed, or
/// after the key check moved, is finished by starting with both keys again.
#[test]
fn a_store_key_change_cut_short_is_finished_with_both_keys() {
    for cut in ["after the registry", "after the key check"] {
        let (_tmp, data, old) = fixture_copy();
        let new = StoreKey::generate().unwrap();
        {
            let store = Arc::new(SledStore::open_rekeying(&data, &new, &old).unwrap());
            meshca_migrations::open_with(store.clone(), &options(&new, Some(&old))).unwrap();
            if cut == "after the key check" {
                // The key check moves first; the mark stays under the old key.
                let check = meshca_store::KeyCheck::new(&new).unwrap();
                std::fs::write(
                    data.join("store")
                        .join(meshca_store_sled::KEY_CHECK_FILE_NAME),
                    serde_json::to_vec(&check).unwrap(),
                )
                .unwrap();
            }
        }
        // The new key alone is refused: the change is not complete.
        assert!(SledStore::open(&data, &new).is_err(), "{cut}");
        {
            let store = Arc::new(SledStore::open_rekeying(&data, &new, &old).unwrap());
            let (_, change) =
                meshca_migrations::open_with(store.clone(), &options(&new, Some(&old))).unwrap();
            assert_eq!(
                change,
                KeyChange::None,
                "{cut}: the registry was re-sealed already"
            );
            store.rekey(&new).unwrap();
        }
        let (_, records) = open(&data, &new);
        check_ca(&records.load_ca().unwrap().unwrap(), &expected());
    }
}

/// SHA-256 of every file under `dir`, by path.
fn file_hashes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let digest = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    &std::fs::read(&path).unwrap(),
                );
                out.push((path, digest.as_ref().to_vec()));
            }
        }
    }
    out.sort();
    out
}
