//! End-to-end: blocking queries (`?index=N&wait=D`) on the roots and leaf
//! endpoints, and their parameter errors.

mod common;

use common::Server;
use serde_json::json;
use std::time::{Duration, Instant};

/// A 1 s wait returns after 1 s plus at most 1/16 of jitter; allow slack for
/// a loaded 2-core machine on the late side only.
fn assert_waited_about_one_second(elapsed: Duration) {
    assert!(
        elapsed >= Duration::from_millis(1000),
        "returned after {elapsed:?}, before the 1 s wait"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "returned after {elapsed:?}, far past the 1 s wait"
    );
}

#[test]
fn roots_query_at_the_current_index_waits_then_returns_the_same_index() {
    let server = Server::start(&[]);
    for path in ["/v1/connect/ca/roots", "/v1/agent/connect/ca/roots"] {
        let now = server.get(path);
        let index = now.index();
        let t = Instant::now();
        let r = server.get(&format!("{path}?index={index}&wait=1s"));
        assert_waited_about_one_second(t.elapsed());
        assert_eq!(r.status, 200);
        assert_eq!(r.index(), index);
        assert_eq!(r.body, now.body);
    }
}

#[test]
fn roots_query_below_the_current_index_returns_at_once() {
    let server = Server::start(&[]);
    // Move the index past 1 so that there is a positive index below it.
    assert_eq!(server.put_config(json!({"LeafCertTTL": "24h"})).status, 200);
    let index = server.get("/v1/connect/ca/roots").index();
    assert!(index >= 2);
    let t = Instant::now();
    let r = server.get(&format!(
        "/v1/connect/ca/roots?index={}&wait=30s",
        index - 1
    ));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "an old index must not block ({:?})",
        t.elapsed()
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.index(), index);
}

#[test]
fn blocked_roots_query_returns_when_the_configuration_changes() {
    let server = Server::start(&[]);
    let index = server.get("/v1/connect/ca/roots").index();
    let url = server.url(&format!("/v1/connect/ca/roots?index={index}&wait=30s"));
    let http = server.http();
    let t = Instant::now();
    let waiter = std::thread::spawn(move || {
        let r = http.send(reqwest::Method::GET, &url, None);
        (r, Instant::now())
    });
    // Nothing observable tells us the query has reached the server and is
    // parked; this pause only makes that interleaving likely. The assertions
    // hold either way: a PUT that lands first makes the query return at once.
    std::thread::sleep(Duration::from_millis(300));
    let put = server.put_config(json!({"LeafCertTTL": "24h"}));
    assert_eq!(put.status, 200);
    let put_done = Instant::now();
    let (r, returned) = waiter.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.index() > index,
        "the query must see the new index: {} <= {index}",
        r.index()
    );
    assert_eq!(r.index(), put.index());
    assert!(
        returned.duration_since(put_done) < Duration::from_secs(5)
            && t.elapsed() < Duration::from_secs(20),
        "the blocked query did not return promptly after the change ({:?} in all)",
        t.elapsed()
    );
}

#[test]
fn bad_blocking_parameters_are_consul_errors() {
    let mut server = Server::start(&[]);
    let cases = [
        (
            "/v1/connect/ca/roots?index=abc",
            "Invalid index",
            "invalid_index",
        ),
        (
            "/v1/connect/ca/roots?index=-1",
            "Invalid index",
            "invalid_index",
        ),
        (
            "/v1/connect/ca/roots?index=1&wait=soon",
            "Invalid wait time",
            "invalid_wait",
        ),
        (
            "/v1/connect/ca/roots?wait=10",
            "Invalid wait time",
            "invalid_wait",
        ),
        (
            "/v1/agent/connect/ca/roots?index=abc",
            "Invalid index",
            "invalid_index",
        ),
        (
            "/v1/agent/connect/ca/leaf/web?index=abc",
            "Invalid index",
            "invalid_index",
        ),
        (
            "/v1/agent/connect/ca/leaf/web?wait=soon",
            "Invalid wait time",
            "invalid_wait",
        ),
        (
            "/v1/connect/ca/roots?pem=maybe",
            "The 'pem' query parameter must be a boolean value",
            "invalid_pem_param",
        ),
    ];
    for (path, message, code) in cases {
        let r = server.get(path);
        r.assert_error(400);
        assert_eq!(r.body, message, "{path}");
        assert_eq!(r.code(), code, "{path}");
    }
    server.assert_alive();
}

#[test]
fn empty_parameters_count_as_absent_and_long_waits_are_capped_as_in_consul() {
    let server = Server::start(&[]);
    let json = server.get_json("/v1/connect/ca/roots");
    for path in [
        "/v1/connect/ca/roots?pem=",
        "/v1/connect/ca/roots?index=&wait=",
        "/v1/agent/connect/ca/roots?index=",
    ] {
        let r = server.get(path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.json(), json, "{path}: JSON, at once");
    }
    // Far past Go's range is still a duration: accepted (and capped at 10
    // minutes, which the unit tests check), where Consul answers 400.
    let r = server.get("/v1/connect/ca/roots?index=0&wait=99999999999999999999999h");
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn leaf_query_at_its_index_returns_the_same_certificate_after_the_wait() {
    let server = Server::start(&[]);
    let first = server.get("/v1/agent/connect/ca/leaf/web");
    assert_eq!(first.status, 200);
    let leaf = first.json();
    let index = leaf["ModifyIndex"].as_u64().unwrap();

    // Renewal is at 60-90% of 72h: far away, so the wait runs out.
    let t = Instant::now();
    let r = server.get(&format!(
        "/v1/agent/connect/ca/leaf/web?index={index}&wait=1s"
    ));
    assert_waited_about_one_second(t.elapsed());
    assert_eq!(r.status, 200);
    let same = r.json();
    assert_eq!(same["SerialNumber"], leaf["SerialNumber"]);
    assert_eq!(same["CertPEM"], leaf["CertPEM"]);
    assert_eq!(r.index(), index);

    // An older index returns the current certificate at once.
    let t = Instant::now();
    let r = server.get(&format!(
        "/v1/agent/connect/ca/leaf/web?index={}&wait=30s",
        index - 1
    ));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(r.json()["SerialNumber"], leaf["SerialNumber"]);
}
