//! Issuance through the engine with a real journal on disk: when the
//! caller's turn is taken and given back relative to the signing and the
//! journal's sync.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

use meshca_ca::{default_provider_factory, CaEngine, CaError, Pace, Requester, SigningTurn};
use meshca_core::{CaConfig, Clock, SystemClock};
use meshca_journal::{read_segment, segments, Journal, DEFAULT_SEGMENT_BYTES};
use meshca_store::StoreKey;
use meshca_store_sled::SledStore;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// Regression: an EC issuance, signed inline on the runtime's worker, ran
/// ahead of the tasks that were ready before it, so a request with only its
/// answer left to write waited out someone else's signing.
#[test]
fn an_inline_issuance_lets_the_tasks_already_ready_run_first() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let order = runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = engine_with_journal(dir.path()).await;
        let (log_tx, mut log) = tokio::sync::mpsc::unbounded_channel();
        let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = tokio::sync::oneshot::channel::<()>();
        let issuer = tokio::spawn({
            let log_tx = log_tx.clone();
            async move {
                go.await.unwrap();
                // In one poll: another task becomes ready, then this one
                // issues a leaf.
                ready_tx.send(()).unwrap();
                ca.issue_service_leaf(&"web".parse().unwrap(), Requester::default(), move || {
                    log_tx.send("signed").unwrap();
                })
                .await
                .unwrap();
            }
        });
        let readied = tokio::spawn(async move {
            ready.await.unwrap();
            log_tx.send("already ready").unwrap();
        });
        go_tx.send(()).unwrap();
        issuer.await.unwrap();
        readied.await.unwrap();
        [log.recv().await, log.recv().await]
    });
    assert_eq!(order, [Some("already ready"), Some("signed")]);
}

/// A turn the test hands out when it says so, at the pace it says.
struct GatedTurn {
    go: Option<tokio::sync::oneshot::Receiver<()>>,
    signed: Arc<AtomicBool>,
    pace: Pace,
}

impl SigningTurn for GatedTurn {
    async fn take(&mut self) -> Pace {
        if let Some(go) = self.go.take() {
            go.await.unwrap();
        }
        self.pace
    }

    fn signed(&mut self) {
        self.signed.store(true, Ordering::SeqCst);
    }
}

/// The server hands its turns at signing round-robin between clients: an
/// inline issuance must not sign, nor journal anything, before its turn.
#[tokio::test(flavor = "current_thread")]
async fn an_inline_issuance_signs_in_its_turn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = engine_with_journal(dir.path()).await;
    let (go_tx, go) = tokio::sync::oneshot::channel();
    let signed = Arc::new(AtomicBool::new(false));
    let turn = GatedTurn {
        go: Some(go),
        signed: signed.clone(),
        pace: Pace::Batched,
    };
    let issuing = tokio::spawn({
        let ca = ca.clone();
        async move {
            ca.issue_service_leaf(&"web".parse().unwrap(), Requester::default(), turn)
                .await
        }
    });
    // The issuance runs up to its turn at the test's yields, and no further.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!issuing.is_finished(), "issued without its turn");
    assert!(!signed.load(Ordering::SeqCst));
    assert_eq!(journal_lines(dir.path()), 0);

    go_tx.send(()).unwrap();
    let leaf = issuing.await.unwrap().unwrap();
    assert!(signed.load(Ordering::SeqCst), "the turn was not given back");
    assert_eq!(journal_lines(dir.path()), 1);
    assert!(leaf.cert_pem.contains("BEGIN CERTIFICATE"));
}

/// Whatever the server's pacing (on the worker, on a signing thread; the
/// journal entry batched or prompt), a leaf is signed for what was asked,
/// durable in the journal before it is returned, and the turn given back.
#[tokio::test(flavor = "current_thread")]
async fn every_pace_issues_a_durable_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let ca = engine_with_journal(dir.path()).await;
    for (n, pace) in [Pace::Batched, Pace::Prompt, Pace::Background]
        .into_iter()
        .enumerate()
    {
        let signed = Arc::new(AtomicBool::new(false));
        let turn = GatedTurn {
            go: None,
            signed: signed.clone(),
            pace,
        };
        let leaf = ca
            .issue_service_leaf(&"web".parse().unwrap(), Requester::default(), turn)
            .await
            .unwrap();
        assert!(signed.load(Ordering::SeqCst), "{pace:?}: turn kept");
        assert_eq!(journal_lines(dir.path()), n + 1, "{pace:?}");
        assert!(leaf.spiffe_id.to_string().ends_with("/svc/web"), "{pace:?}");
        assert!(leaf.cert_pem.contains("BEGIN CERTIFICATE"), "{pace:?}");
        assert!(leaf.private_key_pem.is_some(), "{pace:?}");
    }
}

/// A CSR refused on a signing thread is refused as on the worker, and
/// journals nothing.
#[tokio::test(flavor = "current_thread")]
async fn a_refusal_on_a_signing_thread_is_the_same_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = engine_with_journal(dir.path()).await;
    let signed = Arc::new(AtomicBool::new(false));
    let turn = GatedTurn {
        go: None,
        signed: signed.clone(),
        pace: Pace::Background,
    };
    let err = ca
        .sign_csr("not a CSR".into(), Requester::default(), |_| Ok(()), turn)
        .await
        .unwrap_err();
    assert!(matches!(err, CaError::InvalidCsr(_)), "{err:?}");
    assert!(signed.load(Ordering::SeqCst));
    assert_eq!(journal_lines(dir.path()), 0);
}
