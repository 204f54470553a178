//! End-to-end: `GET /v1/agent/metrics?format=prometheus` on a real server:
//! what operators alert on moves with what the server does.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod common;

use common::{csr_for_uri, service_uri, Server};
use serde_json::json;

const METRICS: &str = "/v1/agent/metrics?format=prometheus";

/// The value of the sample `name{labels}` (exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn scrape(server: &Server) -> String {
    let r = server.get(METRICS);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type").unwrap().starts_with("text/plain"),
        "{r:?}"
    );
    r.body
}

#[test]
fn metrics_follow_signings_roots_and_requests() {
    let server = Server::start(&[]);
    assert_eq!(
        server
            .request_as(None, reqwest::Method::GET, METRICS, None)
            .status,
        403
    );
    let r = server.get("/v1/agent/metrics");
    r.assert_error(400);
    assert!(r.body.contains("format=prometheus"), "{r:?}");

    let td = server.trust_domain();
    assert_eq!(server.get("/v1/agent/connect/ca/leaf/web").status, 200);
    assert_eq!(
        server
            .sign(&csr_for_uri(&service_uri(&td, "dc1", "api")))
            .status,
        200
    );
    let other_dc = server.sign(&csr_for_uri(&service_uri(&td, "dc9", "api")));
    assert_eq!(other_dc.status, 400);

    let text = scrape(&server);
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(
        value(r#"meshca_leaf_signings_total{kind="agent_leaf",result="ok"}"#),
        1.0
    );
    assert_eq!(
        value(r#"meshca_leaf_signings_total{kind="csr",result="ok"}"#),
        1.0
    );
    assert_eq!(
        value(r#"meshca_leaf_signings_total{kind="csr",result="refused"}"#),
        1.0
    );
    assert_eq!(
        value(r#"meshca_leaf_signing_seconds_count{kind="csr"}"#),
        2.0
    );
    // One client, one request at a time: every signing (the refused one
    // too: its CSR is checked in its turn) at the batched pace.
    assert_eq!(
        value(r#"meshca_leaf_signings_paced_total{pace="batched"}"#),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            r#"meshca_leaf_signings_paced_total{pace="background"}"#
        ),
        None
    );
    let root = server.roots()["ActiveRootID"].as_str().unwrap().to_string();
    let leaves = format!(r#"meshca_ca_root_valid_leaves{{root_id="{root}"}}"#);
    assert_eq!(value(&leaves), 2.0);
    let year = 365.0 * 86_400.0;
    let root_left = value("meshca_ca_root_expiry_seconds");
    assert!(
        (9.9 * year..10.0 * year).contains(&root_left),
        "{root_left}"
    );
    let signing_left = value("meshca_ca_signing_cert_expiry_seconds");
    assert!(
        (0.99 * year..year).contains(&signing_left),
        "{signing_left}"
    );
    let route = r#"meshca_http_requests_total{route="/v1/agent/connect/ca/leaf/{service}",method="GET",status="200"}"#;
    assert_eq!(value(route), 1.0);
    assert_eq!(value("meshca_blocking_queries_open"), 0.0);

    // A parked blocking query is counted while it waits.
    let index = server.get("/v1/connect/ca/roots").index();
    let (http, url) = (
        server.http(),
        server.url(&format!("/v1/connect/ca/roots?index={index}&wait=30s")),
    );
    let parked = std::thread::spawn(move || http.send(reqwest::Method::GET, &url, None));
    assert!(common::wait_until(
        std::time::Duration::from_secs(10),
        || { sample(&scrape(&server), "meshca_blocking_queries_open") == Some(1.0) }
    ));

    // A rotation wakes it; the old root then has a time when pruning may
    // drop it, and still counts the leaves it vouches for.
    let r = server.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(parked.join().unwrap().status, 200);
    let text = scrape(&server);
    assert_eq!(sample(&text, &leaves), Some(2.0), "{text}");
    let prunable = format!(r#"meshca_ca_root_prunable_timestamp_seconds{{root_id="{root}"}}"#);
    let at = sample(&text, &prunable).unwrap_or_else(|| panic!("{text}"));
    let in_six_days = (common::unix_now() + 6 * 86_400) as f64;
    assert!(
        (in_six_days - 120.0..in_six_days + 120.0).contains(&at),
        "2 x 72h: {at}"
    );
    assert_eq!(sample(&text, "meshca_blocking_queries_open"), Some(0.0));
}

#[test]
fn rate_limited_requests_are_counted() {
    let server = Server::start(&[]);
    assert_eq!(
        server.put_config(json!({"CSRMaxPerSecond": 0.1})).status,
        200
    );
    let td = server.trust_domain();
    let statuses: Vec<u16> = (0..3)
        .map(|i| {
            server
                .sign(&csr_for_uri(&service_uri(&td, "dc1", &format!("s{i}"))))
                .status
        })
        .collect();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(refused >= 1, "{statuses:?}");
    let text = scrape(&server);
    assert_eq!(
        sample(&text, "meshca_rate_limited_requests_total"),
        Some(refused as f64),
        "{text}"
    );
}
