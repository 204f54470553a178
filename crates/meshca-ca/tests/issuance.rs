//! Issuance through the engine with a real journal on disk: when the
//! caller's `signed` hook runs relative to the journal's sync.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

use meshca_ca::{default_provider_factory, CaEngine, CaError, Requester};
use meshca_core::{CaConfig, Clock, SystemClock};
use meshca_journal::{read_segment, segments, Journal, DEFAULT_SEGMENT_BYTES};
use meshca_store::StoreKey;
use meshca_store_sled::SledStore;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

async fn engine_with_journal(dir: &Path) -> Arc<CaEngine> {
    let key = StoreKey::generate().unwrap();
    let store = Arc::new(
        meshca_migrations::open(
            Arc::new(SledStore::open(&dir.join("store"), &key).unwrap()),
            &key,
            SystemClock.now(),
        )
        .unwrap(),
    );
    let ca = CaEngine::start(
        store,
        Arc::new(SystemClock) as Arc<dyn Clock>,
        "dc1".into(),
        CaConfig::default(),
        default_provider_factory(),
    )
    .await
    .unwrap();
    let journal = Journal::open(&dir.join("journal"), DEFAULT_SEGMENT_BYTES).unwrap();
    assert!(ca.journal_issuance(Arc::new(journal)));
    ca
}

fn journal_lines(dir: &Path) -> usize {
    segments(&dir.join("journal"))
        .unwrap()
        .iter()
        .map(|s| read_segment(s).unwrap().len())
        .sum()
}

/// The server gives its `CSRMaxConcurrent` permit back in `signed`: it
/// must run after the signing and before the leaf's journal entry is
/// written, so that a request waiting for a disk sync holds no permit.
#[tokio::test]
async fn signed_runs_once_the_leaf_is_signed_and_before_its_entry_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let ca = engine_with_journal(dir.path()).await;
    let journal_dir = dir.path().to_path_buf();
    let seen_at_signed = Arc::new(AtomicUsize::new(usize::MAX));
    let seen = seen_at_signed.clone();
    let leaf = ca
        .issue_service_leaf(&"web".parse().unwrap(), Requester::default(), move || {
            seen.store(journal_lines(&journal_dir), Ordering::SeqCst);
        })
        .await
        .unwrap();
    assert_eq!(
        seen_at_signed.load(Ordering::SeqCst),
        0,
        "signed ran after the journal write"
    );
    assert_eq!(journal_lines(dir.path()), 1);
    assert!(leaf.cert_pem.contains("BEGIN CERTIFICATE"));
}

/// A refused request gives its permit back too, and journals nothing.
#[tokio::test]
async fn signed_runs_when_the_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = engine_with_journal(dir.path()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let err = ca
        .sign_csr(
            "not a CSR".into(),
            Requester::default(),
            |_| Ok(()),
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CaError::InvalidCsr(_)), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(journal_lines(dir.path()), 0);
}
