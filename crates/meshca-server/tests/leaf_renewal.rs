//! The agent leaf endpoint over a real socket with a manual clock: a blocked
//! leaf query returns a fresh certificate once the cached one reaches its
//! renewal point, and not before.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod support;

use meshca_core::{Clock, ManualClock};
use meshca_server::CaEngine;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use time::macros::datetime;

struct Harness {
    base: String,
    ca: Arc<CaEngine>,
    clock: Arc<ManualClock>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Harness {
    let clock = Arc::new(ManualClock::new(datetime!(2030-01-01 00:00 UTC)));
    let ca = support::engine_with(clock.clone() as Arc<dyn Clock>).await;
    let (base, stop) = meshca_server::spawn_on_loopback(ca.clone()).await.unwrap();
    Harness {
        base,
        ca,
        clock,
        _stop: stop,
    }
}

async fn get_leaf(base: &str, query: &str) -> (Value, u64) {
    let resp = reqwest::get(format!("{base}/v1/agent/connect/ca/leaf/web{query}"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let index: u64 = resp.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (resp.json().await.unwrap(), index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_leaf_query_returns_a_fresh_certificate_at_the_renewal_point() {
    let h = start().await;
    let (first, index) = get_leaf(&h.base, "").await;
    assert_eq!(first["ModifyIndex"].as_u64(), Some(index));

    // Before the renewal point the blocked query times out with the same leaf.
    let (same, same_index) = get_leaf(&h.base, &format!("?index={index}&wait=1s")).await;
    assert_eq!(same["SerialNumber"], first["SerialNumber"]);
    assert_eq!(same_index, index);

    let base = h.base.clone();
    let waiter =
        tokio::spawn(async move { get_leaf(&base, &format!("?index={index}&wait=60s")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "must block until the renewal point");

    // 91% of the 72h lifetime is past every possible renewal point (60-90%).
    h.clock.advance(time::Duration::minutes(72 * 60 * 91 / 100));
    h.ca.wake_waiters();
    let (fresh, fresh_index) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("blocked query returns promptly after the renewal point")
        .unwrap();
    assert_ne!(fresh["SerialNumber"], first["SerialNumber"]);
    assert!(fresh_index > index);
    assert_ne!(fresh["PrivateKeyPEM"], first["PrivateKeyPEM"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_for_a_service_share_one_certificate() {
    let h = start().await;
    let requests = (0..8).map(|_| {
        let base = h.base.clone();
        tokio::spawn(async move { get_leaf(&base, "").await.0["SerialNumber"].clone() })
    });
    let mut serials = Vec::new();
    for r in requests {
        serials.push(r.await.unwrap());
    }
    serials.dedup();
    assert_eq!(
        serials.len(),
        1,
        "one issuance per service, not one per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_index_this_server_never_gave_out_does_not_block() {
    let h = start().await;
    let (first, index) = get_leaf(&h.base, "").await;
    let started = std::time::Instant::now();
    let (same, _) = get_leaf(&h.base, &format!("?index={}&wait=30s", index + 1000)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once"
    );
    assert_eq!(same["SerialNumber"], first["SerialNumber"]);
}
