//! The shared Store conformance suite against SledStore on a real disk,
//! plus what only a durable backend promises: records survive closing and
//! reopening.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

use meshca_store::{Store, StoreKey, Txn};
use meshca_store_sled::SledStore;
use std::sync::Arc;

/// A SledStore in a fresh temporary data directory; the directory is the
/// guard that outlives the store.
fn on_disk() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = StoreKey::generate().expect("a store key");
    let store = SledStore::open(&dir.path().join("data"), &key).expect("opening the store");
    (Arc::new(store), dir)
}

meshca_store::conformance_tests!(on_disk);

#[test]
fn committed_records_survive_closing_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = StoreKey::generate().unwrap();
    let store = SledStore::open(&data, &key).unwrap();
    store
        .commit(
            &Txn::new()
                .put("ca/keys", b"sealed keys".to_vec())
                .put("acl/token/a", b"a".to_vec()),
        )
        .unwrap();
    store
        .commit(
            &Txn::new()
                .delete("acl/token/a")
                .put("ca/roots", b"r".to_vec()),
        )
        .unwrap();
    let before = store.snapshot().unwrap();
    drop(store);

    let store = SledStore::open(&data, &key).unwrap();
    assert_eq!(store.snapshot().unwrap(), before);
    assert_eq!(store.index().unwrap(), 2);
    // The index carries on from where it was, not from 0.
    assert_eq!(store.commit(&Txn::new().check_index(2)).unwrap(), 3);
}
