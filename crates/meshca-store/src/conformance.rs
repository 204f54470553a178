//! The conformance suite every [`Store`] backend must pass.
//!
//! Each check takes a fresh, empty store and panics on a violation, so a
//! backend's tests call them one by one (or [`run_all`]) with a new store each
//! time. The checks state the trait's contract as tests: empty means index 0,
//! commits are compare-and-swap on the index, indexes strictly increase, a
//! stale writer changes nothing, and what is loaded is exactly what was
//! committed, private keys included.

use crate::{Store, StoreError};
use meshca_core::config::CaConfig;
use meshca_core::secret::SecretBytes;
use meshca_core::state::{CaRoot, CaState, StoredConfig};
use std::collections::BTreeMap;
use time::macros::datetime;
use uuid::Uuid;

/// One conformance check: panics if `store` (fresh and empty) misbehaves.
pub type Check = fn(&dyn Store);

/// Every check, by name, for [`run_all`] and for reporting.
pub const ALL: &[(&str, Check)] = &[
    ("empty_store_has_no_state", empty_store_has_no_state),
    ("first_commit_expects_zero", first_commit_expects_zero),
    (
        "stale_index_conflicts_and_changes_nothing",
        stale_index_conflicts_and_changes_nothing,
    ),
    (
        "load_returns_what_was_committed",
        load_returns_what_was_committed,
    ),
    ("indexes_strictly_increase", indexes_strictly_increase),
    (
        "racing_commits_admit_exactly_one",
        racing_commits_admit_exactly_one,
    ),
];

/// Runs every check, each against a new store from `make`.
pub fn run_all(make: &mut dyn FnMut() -> Box<dyn Store>) {
    for (name, check) in ALL {
        let store = make();
        eprintln!("conformance: {name}");
        check(store.as_ref());
    }
}

/// A plausible CA state whose private keys (and BYO config key) hold `secret`,
/// so tests can look for it on disk.
pub fn sample_state(secret: &[u8]) -> CaState {
    let wire = serde_json::json!({
        "PrivateKey": String::from_utf8_lossy(secret),
        "RootCert": "-----BEGIN CERTIFICATE-----\nconformance\n-----END CERTIFICATE-----\n",
    });
    let config = CaConfig::from_wire("consul", wire.as_object().expect("an object"), None)
        .expect("a valid configuration");
    let mut private_keys = BTreeMap::new();
    private_keys.insert("root-1".to_string(), SecretBytes::new(secret.to_vec()));
    private_keys.insert(
        "intermediate-1".to_string(),
        SecretBytes::new(vec![0, 1, 2, 255]),
    );
    CaState {
        cluster_id: Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0),
        config: StoredConfig {
            config,
            create_index: 1,
            modify_index: 1,
        },
        roots: vec![sample_root()],
        provider_state: BTreeMap::from([("signing_key".to_string(), "intermediate-1".to_string())]),
        private_keys,
        modify_index: 0,
    }
}

fn sample_root() -> CaRoot {
    CaRoot {
        id: "aa:bb:cc".into(),
        name: "meshca CA Primary Cert".into(),
        serial_number: 7,
        signing_key_id: "01:02:03".into(),
        external_trust_domain: "12345678-9abc-def0-1234-56789abcdef0".into(),
        not_before: datetime!(2030-01-01 00:00 UTC),
        not_after: datetime!(2040-01-01 00:00 UTC),
        root_cert: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
        intermediate_certs: vec![],
        active: true,
        rotated_out_at: None,
        key_spec: meshca_core::KeySpec::EcP256,
        create_index: 1,
        modify_index: 1,
    }
}

/// The state as the store should return it after committing at `index`.
fn as_committed(state: &CaState, index: u64) -> CaState {
    CaState {
        modify_index: index,
        ..state.clone()
    }
}

fn commit(store: &dyn Store, state: &CaState, expected: u64) -> u64 {
    store
        .commit_ca_state(state, expected)
        .unwrap_or_else(|e| panic!("commit at expected index {expected} failed: {e}"))
}

fn load(store: &dyn Store) -> Option<CaState> {
    store
        .load_ca_state()
        .unwrap_or_else(|e| panic!("load failed: {e}"))
}

fn index(store: &dyn Store) -> u64 {
    store
        .current_index()
        .unwrap_or_else(|e| panic!("current_index failed: {e}"))
}

/// A new store holds no state, at index 0.
pub fn empty_store_has_no_state(store: &dyn Store) {
    assert_eq!(load(store), None, "a new store must hold no CA state");
    assert_eq!(index(store), 0, "a new store must be at index 0");
}

/// The first commit expects index 0 and moves the store past it.
pub fn first_commit_expects_zero(store: &dyn Store) {
    let new = commit(store, &sample_state(b"first"), 0);
    assert!(new > 0, "the first commit returned index {new}");
    assert_eq!(
        index(store),
        new,
        "current_index must report the commit's index"
    );
}

/// A writer with a stale index gets `Conflict` and leaves the store as it was.
pub fn stale_index_conflicts_and_changes_nothing(store: &dyn Store) {
    let state = sample_state(b"kept");
    let first = commit(store, &state, 0);
    for stale in [0, first + 1, u64::MAX] {
        match store.commit_ca_state(&sample_state(b"lost"), stale) {
            Err(StoreError::Conflict { expected, actual }) => {
                assert_eq!(
                    (expected, actual),
                    (stale, first),
                    "Conflict must name both indexes"
                );
            }
            other => panic!("commit at stale index {stale} returned {other:?}, not Conflict"),
        }
    }
    assert_eq!(
        index(store),
        first,
        "a refused commit must not move the index"
    );
    assert_eq!(
        load(store),
        Some(as_committed(&state, first)),
        "a refused commit must not write"
    );
}

/// Loading returns exactly the committed state, private keys included, with
/// `modify_index` set to the commit's index.
pub fn load_returns_what_was_committed(store: &dyn Store) {
    let state = sample_state(b"-----BEGIN PRIVATE KEY-----\nconformance\n");
    let first = commit(store, &state, 0);
    assert_eq!(load(store), Some(as_committed(&state, first)));

    let mut next = state.clone();
    next.private_keys
        .insert("root-2".into(), SecretBytes::new(b"second key".to_vec()));
    next.roots[0].active = false;
    let second = commit(store, &next, first);
    let loaded = load(store).expect("state after the second commit");
    assert_eq!(loaded, as_committed(&next, second));
    assert_eq!(loaded.private_keys["root-2"].expose(), b"second key");
}

/// Each commit returns an index greater than every one before.
pub fn indexes_strictly_increase(store: &dyn Store) {
    let mut last = index(store);
    for round in 0..5u8 {
        let new = commit(store, &sample_state(&[round]), last);
        assert!(new > last, "commit {round} went from index {last} to {new}");
        assert_eq!(load(store).map(|s| s.modify_index), Some(new));
        last = new;
    }
}

/// Of several writers committing at the same expected index, exactly one wins
/// and the others get `Conflict`.
pub fn racing_commits_admit_exactly_one(store: &dyn Store) {
    let writers = 8u8;
    let results: Vec<Result<u64, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| scope.spawn(move || store.commit_ca_state(&sample_state(&[w]), 0)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer thread panicked"))
            .collect()
    });
    let winners: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one racing commit must win: {results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(_) | Err(StoreError::Conflict { .. }))),
        "losers must get Conflict: {results:?}"
    );
    assert_eq!(index(store), winners[0]);
}
