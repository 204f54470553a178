//! A store written by meshca's schema-1 code (committed under
//! tests/fixtures/v1-store, never regenerated) opens with this backend,
//! migrates to the current schema, and loads the same CA.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

use meshca_core::state::CaState;
use meshca_store::{schema, Records, Store, StoreKey};
use meshca_store_sled::SledStore;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::macros::datetime;

const NOW: time::OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-store")
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
/// whose file gets the mode 0600 that git does not keep (a key file others
/// can read is refused).
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

fn open(data: &Path, key: &StoreKey) -> (Arc<dyn Store>, Records) {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(data, key).unwrap());
    let records = meshca_migrations::open(store.clone(), key, NOW).unwrap();
    (store, records)
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixture().join("expected.json")).unwrap()).unwrap()
}

/// The SubjectPublicKeyInfo of the first certificate in `pem`.
fn cert_spki(pem: &str) -> Vec<u8> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = block.parse_x509().unwrap();
    cert.tbs_certificate.subject_pki.raw.to_vec()
}

/// The SubjectPublicKeyInfo of a PKCS#8 private key, through rcgen.
fn key_spki(pkcs8: &[u8]) -> Vec<u8> {
    let key = rcgen::KeyPair::try_from(pkcs8).unwrap();
    rcgen::PublicKeyData::subject_public_key_info(&key)
}

#[test]
fn the_v1_fixture_migrates_and_loads_its_ca() {
    let expected = expected();
    let (_tmp, data, key) = fixture_copy();
    let (store, records) = open(&data, &key);

    assert_eq!(
        meshca_migrations::schema_version(&*store).unwrap(),
        meshca_migrations::CURRENT_VERSION
    );
    assert_eq!(
        store.get(schema::CA_STATE_V1).unwrap(),
        None,
        "ca/state is split"
    );
    let index = store.index().unwrap();
    assert_eq!(
        index,
        expected["index"].as_u64().unwrap() + 3,
        "the fixture's index plus the commits of migrations 2 and 3, and of a new data key \
         (the fixture's is older than the rotation period at NOW)"
    );

    let ca: CaState = records.load_ca().unwrap().expect("the fixture's CA");
    assert_eq!(
        ca.cluster_id.to_string(),
        expected["cluster_id"].as_str().unwrap()
    );
    assert_eq!(ca.modify_index, index);
    let root = ca.active_root().expect("an active root");
    assert_eq!(root.id, expected["root_id"].as_str().unwrap());
    assert_eq!(
        root.signing_key_id,
        expected["signing_key_id"].as_str().unwrap()
    );
    assert_eq!(ca.roots.len(), 1);
    assert_eq!(
        ca.config.config.leaf_cert_ttl().to_string(),
        expected["leaf_cert_ttl"].as_str().unwrap()
    );
    let handles: Vec<&str> = ca.private_keys.keys().map(String::as_str).collect();
    let expected_handles: Vec<&str> = expected["private_key_handles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(handles, expected_handles);

    // The keys are the certificates' keys: sealing and the split kept them.
    let root_key = &ca.private_keys["builtin/root"];
    assert_eq!(key_spki(root_key.expose()), cert_spki(&root.root_cert));
    let signing = root
        .intermediate_certs
        .last()
        .expect("a signing certificate");
    let intermediate_key = &ca.private_keys["builtin/intermediate"];
    assert_eq!(key_spki(intermediate_key.expose()), cert_spki(signing));
    assert_ne!(
        key_spki(root_key.expose()),
        key_spki(intermediate_key.expose())
    );
}

#[test]
fn reopening_the_migrated_fixture_is_a_noop() {
    let (_tmp, data, key) = fixture_copy();
    let before = {
        let (store, records) = open(&data, &key);
        (store.snapshot().unwrap(), records.load_ca().unwrap())
    };
    let (store, records) = open(&data, &key);
    assert_eq!(store.snapshot().unwrap(), before.0, "nothing was written");
    assert_eq!(records.load_ca().unwrap(), before.1);
}

#[test]
fn the_fixture_is_refused_with_another_key_and_left_as_it_was() {
    let (_tmp, data, _) = fixture_copy();
    let before = std::fs::read(data.join("store/db")).unwrap();
    let err = SledStore::open(&data, &StoreKey::generate().unwrap()).unwrap_err();
    assert!(
        matches!(err, meshca_store::StoreError::WrongKey(_)),
        "{err:?}"
    );
    assert_eq!(std::fs::read(data.join("store/db")).unwrap(), before);
    assert!(!data.join(meshca_store_sled::MARK_FILE_NAME).exists());
}
