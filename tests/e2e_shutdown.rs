//! End-to-end: shutting down while proxies hold blocking queries, as real
//! proxies always do. SIGTERM answers every parked query at once with the
//! current state, lets requests in flight finish within the grace period,
//! and exits; a second signal exits at once.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod common;

use common::Server;
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn sigterm_answers_parked_blocking_queries_at_once_and_exits() {
    let mut server = Server::start(&[]);
    let leaf = server.get("/v1/agent/connect/ca/leaf/web");
    let roots = server.get("/v1/connect/ca/roots");
    assert_eq!((leaf.status, roots.status), (200, 200));
    let parked: Vec<_> = [
        format!(
            "/v1/agent/connect/ca/leaf/web?index={}&wait=10m",
            leaf.index()
        ),
        format!("/v1/connect/ca/roots?index={}&wait=10m", roots.index()),
    ]
    .into_iter()
    .map(|path| {
        let (http, url) = (server.http(), server.url(&path));
        std::thread::spawn(move || {
            let r = http.send(reqwest::Method::GET, &url, None);
            (r, Instant::now())
        })
    })
    .collect();
    let open = |server: &Server| {
        let m = server.get("/v1/agent/metrics?format=prometheus").body;
        m.contains("\nmeshca_blocking_queries_open 2\n")
    };
    assert!(
        common::wait_until(Duration::from_secs(10), || open(&server)),
        "both queries park"
    );

    let signalled = Instant::now();
    server.signal("TERM");
    let answers: Vec<_> = parked.into_iter().map(|t| t.join().unwrap()).collect();
    for (r, at) in &answers {
        assert_eq!(r.status, 200, "{r:?}");
        let took = at.duration_since(signalled);
        assert!(
            took < Duration::from_secs(5),
            "answered {took:?} after SIGTERM"
        );
    }
    assert_eq!(answers[0].0.index(), leaf.index(), "the current leaf");
    assert_eq!(answers[1].0.index(), roots.index(), "the current roots");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        server.logs()
    );
    let logs = server.logs();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(logs.contains("meshca stopped"), "{logs}");
}

#[test]
fn a_second_signal_exits_without_waiting_for_requests_in_flight() {
    let mut server = Server::start_with_config(
        &serde_json::json!({"shutdown_grace_period": "60s"}),
        &["--dev"],
    );
    // A request in flight: its body never arrives in full.
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(
        b"PUT /v1/connect/ca/configuration HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    server.signal("TERM");
    assert!(
        server.wait_exit(Duration::from_secs(2)).is_none(),
        "the grace period holds the shutdown for the request in flight"
    );
    let second = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some(),
        "a second signal exits at once\n{}",
        server.logs()
    );
    assert!(second.elapsed() < Duration::from_secs(5));
    assert_eq!(status.unwrap().code(), Some(130));
    assert!(server.logs().contains("second signal"), "{}", server.logs());
    drop(slow);
}
