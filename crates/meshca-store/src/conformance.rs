//! The conformance suite every [`Store`] backend must pass.
//!
//! Each check takes a fresh, empty store and panics on a violation. A
//! backend runs all of them, one test each, with
//! [`conformance_tests!`](crate::conformance_tests):
//!
//! ```text
//! meshca_store::conformance_tests!(|| (Arc::new(MyStore::new()) as Arc<dyn Store>, guard));
//! ```
//!
//! where `guard` is anything that must outlive the store (a temporary
//! directory). The first part states the trait's contract on raw records;
//! the second runs [`Records`] over the backend, because the sealing
//! guarantees (no plaintext key in any record, a moved or tampered sealed
//! record fails) must hold whatever the backend does with the bytes.

use crate::{schema, Records, Sealer, Snapshot, Store, StoreError, Txn};
use meshca_core::config::CaConfig;
use meshca_core::secret::SecretBytes;
use meshca_core::state::{CaRoot, CaState, StoredConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use time::macros::datetime;
use uuid::Uuid;

/// One conformance check: panics if `store` (fresh and empty) misbehaves.
pub type Check = fn(Arc<dyn Store>);

/// Every check, by name. [`conformance_tests!`](crate::conformance_tests)
/// generates a test for each and a test that it covers this whole list.
pub const ALL: &[(&str, Check)] = &[
    ("empty_store_is_at_index_zero", empty_store_is_at_index_zero),
    ("get_scan_and_commit", get_scan_and_commit),
    (
        "scan_matches_prefixes_exactly",
        scan_matches_prefixes_exactly,
    ),
    ("the_index_reads_as_a_record", the_index_reads_as_a_record),
    ("failed_checks_change_nothing", failed_checks_change_nothing),
    ("absence_can_be_checked", absence_can_be_checked),
    ("invalid_keys_are_refused", invalid_keys_are_refused),
    ("indexes_strictly_increase", indexes_strictly_increase),
    (
        "racing_commits_admit_exactly_one",
        racing_commits_admit_exactly_one,
    ),
    (
        "snapshot_and_restore_round_trip",
        snapshot_and_restore_round_trip,
    ),
    (
        "watch_wakes_only_for_its_prefix",
        watch_wakes_only_for_its_prefix,
    ),
    ("health_is_ok_after_writes", health_is_ok_after_writes),
    ("records_start_empty", records_start_empty),
    (
        "records_load_what_was_committed",
        records_load_what_was_committed,
    ),
    (
        "records_commit_is_one_transaction_guarded_by_the_index",
        records_commit_is_one_transaction_guarded_by_the_index,
    ),
    (
        "private_keys_never_appear_in_plaintext",
        private_keys_never_appear_in_plaintext,
    ),
    (
        "a_sealed_record_moved_to_another_key_fails_to_open",
        a_sealed_record_moved_to_another_key_fails_to_open,
    ),
    (
        "a_tampered_sealed_record_is_an_error",
        a_tampered_sealed_record_is_an_error,
    ),
    ("a_partial_ca_is_an_error", a_partial_ca_is_an_error),
];

/// Generates one `#[test]` per conformance check, each with a fresh store
/// from `$make` (a closure returning `(Arc<dyn Store>, guard)`), plus a test
/// that the generated list is [`ALL`](crate::conformance::ALL).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            empty_store_is_at_index_zero,
            get_scan_and_commit,
            scan_matches_prefixes_exactly,
            the_index_reads_as_a_record,
            failed_checks_change_nothing,
            absence_can_be_checked,
            invalid_keys_are_refused,
            indexes_strictly_increase,
            racing_commits_admit_exactly_one,
            snapshot_and_restore_round_trip,
            watch_wakes_only_for_its_prefix,
            health_is_ok_after_writes,
            records_start_empty,
            records_load_what_was_committed,
            records_commit_is_one_transaction_guarded_by_the_index,
            private_keys_never_appear_in_plaintext,
            a_sealed_record_moved_to_another_key_fails_to_open,
            a_tampered_sealed_record_is_an_error,
            a_partial_ca_is_an_error,
        );
    };
    (@each $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let (store, _guard) = ($make)();
                $crate::conformance::$check(store);
            }
        )*

        #[test]
        fn conformance_covers_every_check() {
            let generated: &[&str] = &[$(stringify!($check)),*];
            let all: Vec<&str> = $crate::conformance::ALL.iter().map(|(n, _)| *n).collect();
            assert_eq!(generated, all.as_slice());
        }
    };
}

/// A recognisable private key, to look for in record bytes.
pub const MARKER: &[u8] = b"-----BEGIN PRIVATE KEY-----\nMESHCA-CONFORMANCE-MARKER-7f3a\n";

/// A plausible CA state whose private keys (and supplied-root key in the
/// configuration) hold `secret`, so tests can look for it in the store.
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
        primary_datacenter: None,
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
        max_leaf_cert_ttl: meshca_core::GoDuration::from_hours(72),
        create_index: 1,
        modify_index: 1,
    }
}

/// The encodings in which a secret could leak into a record: raw, as
/// serde_json writes `SecretBytes` (an array of numbers), and base64.
pub fn leak_patterns(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let json = serde_json::to_vec(secret).expect("encoding the secret");
    let json_inner = json[1..json.len() - 1].to_vec();
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    vec![
        secret.to_vec(),
        json_inner,
        b64.as_bytes()[..b64.len() - 4].to_vec(),
    ]
}

/// Whether `bytes` contains any leak pattern of `secret`.
pub fn leaks(bytes: &[u8], secret: &[u8]) -> bool {
    leak_patterns(secret)
        .iter()
        .any(|p| bytes.windows(p.len()).any(|w| w == p.as_slice()))
}

fn commit(store: &dyn Store, txn: &Txn) -> u64 {
    store
        .commit(txn)
        .unwrap_or_else(|e| panic!("commit {txn:?} failed: {e}"))
}

fn index(store: &dyn Store) -> u64 {
    store
        .index()
        .unwrap_or_else(|e| panic!("index failed: {e}"))
}

fn get(store: &dyn Store, key: &str) -> Option<Vec<u8>> {
    store
        .get(key)
        .unwrap_or_else(|e| panic!("get {key} failed: {e}"))
}

fn scan(store: &dyn Store, prefix: &str) -> Vec<(String, Vec<u8>)> {
    store
        .scan(prefix)
        .unwrap_or_else(|e| panic!("scan {prefix:?} failed: {e}"))
}

fn snapshot(store: &dyn Store) -> Snapshot {
    store
        .snapshot()
        .unwrap_or_else(|e| panic!("snapshot failed: {e}"))
}

fn kv(key: &str, value: &[u8]) -> (String, Vec<u8>) {
    (key.to_string(), value.to_vec())
}

fn index_record(index: u64) -> (String, Vec<u8>) {
    kv(schema::INDEX, &schema::encode_u64(index))
}

/// A new store is at index 0 and holds no record.
pub fn empty_store_is_at_index_zero(store: Arc<dyn Store>) {
    assert_eq!(index(&*store), 0);
    assert_eq!(get(&*store, "ca/keys"), None);
    assert_eq!(scan(&*store, "ca/"), vec![]);
    let snap = snapshot(&*store);
    assert_eq!((snap.index, snap.records), (0, vec![]));
    store.health().expect("a new store is healthy");
}

/// Puts are read back by get and scan, in key order; deletes remove; a
/// commit returns the new index, which `index` then reports.
pub fn get_scan_and_commit(store: Arc<dyn Store>) {
    let first = commit(
        &*store,
        &Txn::new()
            .put("ca/roots", b"roots".to_vec())
            .put("acl/token/b", b"token b".to_vec())
            .put("acl/token/a", b"token a".to_vec())
            .put("ca/keys", b"keys".to_vec()),
    );
    assert_eq!(first, 1);
    assert_eq!(index(&*store), 1);
    assert_eq!(get(&*store, "ca/roots"), Some(b"roots".to_vec()));
    assert_eq!(get(&*store, "ca/absent"), None);
    assert_eq!(
        scan(&*store, "acl/"),
        vec![kv("acl/token/a", b"token a"), kv("acl/token/b", b"token b")]
    );
    assert_eq!(
        scan(&*store, "ca/"),
        vec![kv("ca/keys", b"keys"), kv("ca/roots", b"roots")]
    );

    let second = commit(
        &*store,
        &Txn::new()
            .delete("acl/token/a")
            .put("ca/keys", b"keys 2".to_vec())
            .delete("acl/absent"),
    );
    assert_eq!(second, 2);
    assert_eq!(get(&*store, "acl/token/a"), None);
    assert_eq!(get(&*store, "ca/keys"), Some(b"keys 2".to_vec()));
    assert_eq!(
        scan(&*store, ""),
        vec![
            kv("acl/token/b", b"token b"),
            kv("ca/keys", b"keys 2"),
            kv("ca/roots", b"roots"),
            index_record(2),
        ],
        "a scan of everything includes the index record"
    );
    // An empty transaction is still a commit.
    assert_eq!(commit(&*store, &Txn::new()), 3);
}

/// A prefix matches keys that start with it, across namespaces too.
pub fn scan_matches_prefixes_exactly(store: Arc<dyn Store>) {
    commit(
        &*store,
        &Txn::new()
            .put("ca/x", b"1".to_vec())
            .put("cab/y", b"2".to_vec())
            .put("c/z", b"3".to_vec())
            .put("acl/token/ab", b"4".to_vec())
            .put("acl/token/b", b"5".to_vec()),
    );
    let keys = |prefix: &str| -> Vec<String> {
        scan(&*store, prefix).into_iter().map(|(k, _)| k).collect()
    };
    assert_eq!(keys("ca/"), ["ca/x"]);
    assert_eq!(keys("ca"), ["ca/x", "cab/y"]);
    assert_eq!(keys("c"), ["c/z", "ca/x", "cab/y"]);
    assert_eq!(keys("acl/token/a"), ["acl/token/ab"]);
    assert_eq!(keys("zz"), Vec::<String>::new());
    assert_eq!(keys("meta/"), [schema::INDEX]);
}

/// The index record holds the index as 8 big-endian bytes, can be checked,
/// and cannot be written.
pub fn the_index_reads_as_a_record(store: Arc<dyn Store>) {
    assert_eq!(get(&*store, schema::INDEX), Some(index_record(0).1));
    commit(&*store, &Txn::new().put("ca/x", b"1".to_vec()));
    assert_eq!(get(&*store, schema::INDEX), Some(index_record(1).1));
    assert_eq!(commit(&*store, &Txn::new().check_index(1)), 2);
    match store.commit(&Txn::new().put(schema::INDEX, schema::encode_u64(9).to_vec())) {
        Err(StoreError::InvalidRecordKey(_)) => {}
        other => panic!("writing the index record returned {other:?}"),
    }
    assert_eq!(index(&*store), 2, "a refused write does not move the index");
}

/// A transaction with a failing check is `Conflict` and changes nothing:
/// no record, no index, no watcher.
pub fn failed_checks_change_nothing(store: Arc<dyn Store>) {
    let first = commit(
        &*store,
        &Txn::new()
            .put("ca/keys", b"kept".to_vec())
            .put("acl/token/a", b"a".to_vec()),
    );
    let before = snapshot(&*store);
    let mut watcher = store.watch("ca/");
    watcher.borrow_and_update();

    let stale_index = Txn::new()
        .check_index(first - 1)
        .put("ca/keys", b"lost".to_vec());
    match store.commit(&stale_index) {
        Err(StoreError::Conflict { expected, actual }) => {
            assert_eq!(
                (expected, actual),
                (first - 1, first),
                "Conflict names both"
            );
        }
        other => panic!("a stale index returned {other:?}, not Conflict"),
    }
    let stale_record = Txn::new()
        .check("acl/token/a", Some(b"a"))
        .check("ca/keys", Some(b"something else"))
        .put("ca/keys", b"lost".to_vec())
        .delete("acl/token/a")
        .put("ca/new", b"lost".to_vec());
    assert!(
        matches!(
            store.commit(&stale_record),
            Err(StoreError::Conflict { .. })
        ),
        "a failed record check must be Conflict"
    );
    let future_index = Txn::new().check_index(first + 1).delete("ca/keys");
    assert!(matches!(
        store.commit(&future_index),
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(snapshot(&*store), before, "a refused commit must not write");
    assert_eq!(index(&*store), first);
    assert!(
        !watcher.has_changed().expect("the store keeps the channel"),
        "a refused commit must not wake watchers"
    );
}

/// `expected: None` holds for an absent record only: create-if-absent.
pub fn absence_can_be_checked(store: Arc<dyn Store>) {
    let create = Txn::new()
        .check("acl/token/a", None)
        .put("acl/token/a", b"first".to_vec());
    commit(&*store, &create);
    let again = Txn::new()
        .check("acl/token/a", None)
        .put("acl/token/a", b"second".to_vec());
    assert!(matches!(
        store.commit(&again),
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(get(&*store, "acl/token/a"), Some(b"first".to_vec()));
}

/// Keys without a namespace are refused, whatever the operation.
pub fn invalid_keys_are_refused(store: Arc<dyn Store>) {
    for bad in ["nokey", "/x", "ca/", "CA/x"] {
        assert!(
            matches!(
                store.commit(&Txn::new().put(bad, b"x".to_vec())),
                Err(StoreError::InvalidRecordKey(_))
            ),
            "put {bad:?}"
        );
        assert!(
            matches!(store.get(bad), Err(StoreError::InvalidRecordKey(_))),
            "get {bad:?}"
        );
    }
    let bad_snapshot = Snapshot {
        index: 5,
        records: vec![kv("nokey", b"x")],
    };
    assert!(matches!(
        store.restore(&bad_snapshot),
        Err(StoreError::InvalidRecordKey(_))
    ));
    assert_eq!(index(&*store), 0);
}

/// Each commit returns exactly the index after the last one.
pub fn indexes_strictly_increase(store: Arc<dyn Store>) {
    let mut last = index(&*store);
    for round in 0..5u8 {
        let new = commit(&*store, &Txn::new().put("ca/x", vec![round]));
        assert_eq!(new, last + 1, "commit {round} after index {last}");
        assert_eq!(index(&*store), new);
        last = new;
    }
}

/// Of several writers committing against the same index (or creating the
/// same record), exactly one wins and the others get `Conflict`.
pub fn racing_commits_admit_exactly_one(store: Arc<dyn Store>) {
    for round in 0..2u8 {
        let base = index(&*store);
        let writers = 8u8;
        let results: Vec<Result<u64, StoreError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..writers)
                .map(|w| {
                    let store = store.clone();
                    scope.spawn(move || {
                        let txn = if round == 0 {
                            Txn::new().check_index(base)
                        } else {
                            Txn::new().check("acl/token/race", None)
                        };
                        store.commit(&txn.put("acl/token/race", vec![w]))
                    })
                })
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
        assert_eq!(winners, vec![base + 1], "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok(_) | Err(StoreError::Conflict { .. }))),
            "losers must get Conflict: {results:?}"
        );
        assert_eq!(index(&*store), base + 1);
        if round == 0 {
            commit(&*store, &Txn::new().delete("acl/token/race"));
        }
    }
}

/// A snapshot restores every record exactly; the index only moves forward.
pub fn snapshot_and_restore_round_trip(store: Arc<dyn Store>) {
    commit(
        &*store,
        &Txn::new()
            .put("ca/keys", b"sealed".to_vec())
            .put("acl/token/a", b"a".to_vec())
            .put("meta/schema_version", schema::encode_u64(2).to_vec()),
    );
    let snap = snapshot(&*store);
    assert_eq!(snap.index, 1);
    assert_eq!(
        snap.records,
        vec![
            kv("acl/token/a", b"a"),
            kv("ca/keys", b"sealed"),
            kv("meta/schema_version", &schema::encode_u64(2)),
        ],
        "a snapshot holds every record but the index, in key order"
    );
    commit(
        &*store,
        &Txn::new()
            .put("ca/keys", b"changed".to_vec())
            .delete("acl/token/a")
            .put("acl/token/b", b"added".to_vec()),
    );
    commit(&*store, &Txn::new());
    let mut ca = store.watch("ca/");
    ca.borrow_and_update();
    let mut other = store.watch("other/");
    other.borrow_and_update();

    let restored = store.restore(&snap).expect("restore");
    assert_eq!(restored, 4, "max(current 3, snapshot 1) + 1");
    assert_eq!(index(&*store), 4);
    assert_eq!(snapshot(&*store).records, snap.records);
    assert_eq!(get(&*store, "acl/token/b"), None);
    assert!(ca.has_changed().expect("channel open"), "ca/keys changed");
    assert_eq!(*ca.borrow_and_update(), 4);
    assert!(!other.has_changed().expect("channel open"));

    // Into a store that is behind the snapshot: the index passes it.
    let newer = Snapshot {
        index: 10,
        records: vec![kv("ca/keys", b"ten")],
    };
    assert_eq!(store.restore(&newer).expect("restore"), 11);
    assert_eq!(snapshot(&*store).records, newer.records);
}

/// A watcher wakes for commits under its prefix only, with their index; a
/// write elsewhere leaves it asleep and leaves other records' bytes alone.
pub fn watch_wakes_only_for_its_prefix(store: Arc<dyn Store>) {
    let first = commit(&*store, &Txn::new().put("ca/keys", b"keys".to_vec()));
    let mut ca = store.watch("ca/");
    assert!(*ca.borrow_and_update() >= first);
    let mut acl = store.watch("acl/");
    acl.borrow_and_update();

    let acl_write = commit(&*store, &Txn::new().put("acl/token/x", b"x".to_vec()));
    assert!(
        !ca.has_changed().expect("channel open"),
        "an acl/ write must not wake a ca/ watcher"
    );
    assert!(acl.has_changed().expect("channel open"));
    assert_eq!(*acl.borrow_and_update(), acl_write);
    assert_eq!(get(&*store, "ca/keys"), Some(b"keys".to_vec()));

    let ca_write = commit(&*store, &Txn::new().put("ca/roots", b"r".to_vec()));
    assert!(ca.has_changed().expect("channel open"));
    assert_eq!(*ca.borrow_and_update(), ca_write);
    assert!(!acl.has_changed().expect("channel open"));

    // A second watcher of the same prefix sees the same changes.
    let mut ca2 = store.watch("ca/");
    assert_eq!(*ca2.borrow_and_update(), ca_write);
    let woken_by = commit(&*store, &Txn::new().delete("ca/roots"));
    assert!(
        ca2.has_changed().expect("channel open"),
        "a delete wakes too"
    );
    assert_eq!(*ca2.borrow_and_update(), woken_by);
}

/// Health is `Ok` on a store whose writes succeed.
pub fn health_is_ok_after_writes(store: Arc<dyn Store>) {
    commit(&*store, &Txn::new().put("ca/x", b"1".to_vec()));
    store.health().expect("healthy after a successful write");
}

const NOW: time::OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

fn records(store: &Arc<dyn Store>) -> Records {
    Records::new(store.clone(), Sealer::generate(NOW).expect("a data key"))
}

fn load(records: &Records) -> Option<CaState> {
    records
        .load_ca()
        .unwrap_or_else(|e| panic!("load_ca failed: {e}"))
}

/// Before the first CA commit there is no CA.
pub fn records_start_empty(store: Arc<dyn Store>) {
    let records = records(&store);
    assert_eq!(load(&records), None);
    assert_eq!(records.index().expect("index"), 0);
}

/// `load_ca` returns exactly the committed state, private keys included,
/// with `modify_index` the commit's index.
pub fn records_load_what_was_committed(store: Arc<dyn Store>) {
    let records = records(&store);
    let state = sample_state(MARKER);
    let first = records.commit_ca(&state, 0).expect("first commit");
    assert_eq!(first, 1);
    let loaded = load(&records).expect("a CA");
    assert_eq!(
        loaded,
        CaState {
            modify_index: first,
            ..state.clone()
        }
    );

    let mut next = loaded.clone();
    next.private_keys
        .insert("root-2".into(), SecretBytes::new(b"second key".to_vec()));
    next.roots[0].active = false;
    next.config.config = CaConfig::from_wire(
        "consul",
        serde_json::json!({"LeafCertTTL": "1h"})
            .as_object()
            .expect("an object"),
        None,
    )
    .expect("a valid configuration");
    let second = records.commit_ca(&next, first).expect("second commit");
    let loaded = load(&records).expect("a CA");
    assert_eq!(
        loaded,
        CaState {
            modify_index: second,
            ..next
        }
    );
    assert_eq!(loaded.private_keys["root-2"].expose(), b"second key");
}

/// A CA commit is one transaction (the index moves by one, only `ca/`
/// records change), guarded by the index: a stale one is `Conflict` and
/// writes nothing.
pub fn records_commit_is_one_transaction_guarded_by_the_index(store: Arc<dyn Store>) {
    let records = records(&store);
    commit(&*store, &Txn::new().put("acl/token/a", b"a".to_vec()));
    let mut watcher = records.watch_ca();
    watcher.borrow_and_update();
    let index = records
        .commit_ca(&sample_state(MARKER), 1)
        .expect("commit at the current index");
    assert_eq!(index, 2);
    assert!(watcher.has_changed().expect("channel open"));
    assert_eq!(*watcher.borrow_and_update(), 2);
    let keys: Vec<String> = snapshot(&*store)
        .records
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        [
            "acl/token/a",
            "ca/config",
            "ca/keys",
            "ca/provider",
            "ca/roots"
        ]
    );

    let before = snapshot(&*store);
    for stale in [0, 1, 3] {
        match records.commit_ca(&sample_state(b"lost"), stale) {
            Err(StoreError::Conflict { expected, actual }) => {
                assert_eq!((expected, actual), (stale, 2));
            }
            other => panic!("commit at stale index {stale} returned {other:?}"),
        }
    }
    assert_eq!(snapshot(&*store), before);
    assert!(!watcher.has_changed().expect("channel open"));
}

/// No record's bytes contain a private key (or the configuration's
/// supplied root key) in any encoding, while the public records stay plain.
pub fn private_keys_never_appear_in_plaintext(store: Arc<dyn Store>) {
    let records = records(&store);
    let first = records.commit_ca(&sample_state(MARKER), 0).expect("commit");
    records
        .commit_ca(&sample_state(MARKER), first)
        .expect("second commit");
    let all = snapshot(&*store).records;
    assert!(!all.is_empty());
    for (key, bytes) in &all {
        assert!(
            !leaks(bytes, MARKER),
            "{key} holds the private key in plaintext"
        );
    }
    let roots = get(&*store, schema::CA_ROOTS).expect("ca/roots");
    assert!(
        leaks(&roots, b"-----BEGIN CERTIFICATE-----"),
        "ca/roots is public and stays readable"
    );
    let provider = get(&*store, schema::CA_PROVIDER).expect("ca/provider");
    assert!(leaks(&provider, b"intermediate-1"), "ca/provider is plain");
}

/// A sealed value copied under another record's key does not open there.
pub fn a_sealed_record_moved_to_another_key_fails_to_open(store: Arc<dyn Store>) {
    let records = records(&store);
    let index = records.commit_ca(&sample_state(MARKER), 0).expect("commit");
    let keys = get(&*store, schema::CA_KEYS).expect("ca/keys");
    commit(
        &*store,
        &Txn::new().check_index(index).put(schema::CA_CONFIG, keys),
    );
    match records.load_ca() {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains(schema::CA_CONFIG), "{msg}"),
        other => panic!("a moved sealed record loaded as {other:?}"),
    }
}

/// A sealed value with one bit changed is an error, never skipped or
/// replaced by a default; so is a sealed value that is not one at all.
pub fn a_tampered_sealed_record_is_an_error(store: Arc<dyn Store>) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let records = records(&store);
    records.commit_ca(&sample_state(MARKER), 0).expect("commit");
    let original = get(&*store, schema::CA_KEYS).expect("ca/keys");

    let mut envelope: serde_json::Value =
        serde_json::from_slice(&original).expect("a sealed record is JSON");
    let mut sealed = b64
        .decode(envelope["sealed"].as_str().expect("sealed is base64 text"))
        .expect("base64");
    let last = sealed.len() - 1;
    sealed[last] ^= 0x01;
    envelope["sealed"] = serde_json::Value::String(b64.encode(&sealed));
    let flipped = serde_json::to_vec(&envelope).expect("encode");

    for bad in [flipped, b"garbage".to_vec(), Vec::new()] {
        let index = index(&*store);
        commit(
            &*store,
            &Txn::new()
                .check_index(index)
                .put(schema::CA_KEYS, bad.clone()),
        );
        match records.load_ca() {
            Err(StoreError::Corrupt(msg)) => assert!(msg.contains(schema::CA_KEYS), "{msg}"),
            other => panic!("tampered ca/keys {bad:?} loaded as {other:?}"),
        }
    }
    commit(&*store, &Txn::new().put(schema::CA_KEYS, original));
    assert!(load(&records).is_some(), "the original opens again");
}

/// A CA with a record missing is an error, not a CA without it.
pub fn a_partial_ca_is_an_error(store: Arc<dyn Store>) {
    let records = records(&store);
    records.commit_ca(&sample_state(MARKER), 0).expect("commit");
    for missing in schema::CA_RECORDS {
        let value = get(&*store, missing).expect("record");
        commit(&*store, &Txn::new().delete(missing));
        match records.load_ca() {
            Err(StoreError::Corrupt(msg)) => assert!(msg.contains(missing), "{msg}"),
            other => panic!("a CA without {missing} loaded as {other:?}"),
        }
        commit(&*store, &Txn::new().put(missing, value));
    }
    commit(
        &*store,
        &Txn::new().put(schema::CA_STATE_V1, b"{}".to_vec()),
    );
    assert!(matches!(records.load_ca(), Err(StoreError::Corrupt(_))));
}
