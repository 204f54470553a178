//! Runs the shared Store conformance suite against both flavours of SledStore.

use meshca_store::conformance;
use meshca_store::{SledStore, Store, StoreKey};
use std::path::PathBuf;

/// A SledStore in a real temporary directory, kept alive with the store.
struct OnDisk {
    store: SledStore,
    _dir: tempfile::TempDir,
}

impl OnDisk {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path: PathBuf = dir.path().join("data");
        let key = StoreKey::generate().expect("store key");
        let store = SledStore::open(&path, key).expect("open store");
        Self { store, _dir: dir }
    }
}

/// Generates one test per conformance check for each backend flavour.
macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {
        mod on_disk {
            use super::*;
            $(#[test] fn $check() { conformance::$check(&OnDisk::new().store); })*
        }
        mod in_memory {
            use super::*;
            $(#[test] fn $check() { conformance::$check(&SledStore::temporary().unwrap()); })*
        }
    };
}

conformance_tests!(
    empty_store_has_no_state,
    first_commit_expects_zero,
    stale_index_conflicts_and_changes_nothing,
    load_returns_what_was_committed,
    indexes_strictly_increase,
    racing_commits_admit_exactly_one,
);

#[test]
fn every_check_is_covered_by_a_test_above() {
    // run_all also proves the list and the checks agree for a fresh backend.
    let mut make = || -> Box<dyn Store> { Box::new(SledStore::temporary().unwrap()) };
    conformance::run_all(&mut make);
    assert_eq!(
        conformance::ALL.len(),
        6,
        "add the new check to conformance_tests! above"
    );
}
