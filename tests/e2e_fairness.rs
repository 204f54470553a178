//! End-to-end: fair shares on a real server. Beside a client that keeps
//! several signing requests in the server, another client's single request
//! signs at once on its worker (pace `prompt`) while the busy client signs
//! on the engine's signing threads (`background`), and every answer is a
//! leaf for what was asked. The paces are read from the metrics: nothing
//! here is timed.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod common;

use common::{csr_for_uri, service_uri, Http, Resp, Server};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent requests of the busy client.
const FLOOD: usize = 6;

fn token_for_web(server: &Server, name: &str) -> String {
    let body = json!({"Description": name, "ServiceIdentities": [{"ServiceName": "web"}]});
    let t = server.put("/v1/acl/token", body.to_string());
    assert_eq!(t.status, 200, "{t:?}");
    t.json()["SecretID"].as_str().unwrap().to_string()
}

fn paced(server: &Server, pace: &str) -> f64 {
    let text = server.get("/v1/agent/metrics?format=prometheus").body;
    let series = format!(r#"meshca_leaf_signings_paced_total{{pace="{pace}"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn assert_signed(r: &Resp, uri: &str) {
    assert_eq!(r.status, 200, "{r:?}");
    let leaf = r.json();
    assert_eq!(leaf["ServiceURI"], uri, "{r:?}");
    assert!(leaf["CertPEM"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

#[test]
fn beside_a_busy_client_a_single_request_signs_promptly() {
    let server = Server::start(&[]);
    let r = server.put_config(json!({"CSRMaxPerSecond": 0}));
    assert_eq!(r.status, 200, "{r:?}");
    let uri = service_uri(&server.trust_domain(), "dc1", "web");
    let body = json!({"CSR": csr_for_uri(&uri)}).to_string().into_bytes();
    let url = server.url("/v1/connect/ca/sign");
    let (busy, quiet) = (
        Http::with_token(Some(token_for_web(&server, "busy"))),
        Http::with_token(Some(token_for_web(&server, "quiet"))),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let (busy, url, body, stop) = (busy.clone(), url.clone(), body.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    answers.push(busy.send(reqwest::Method::POST, &url, Some(body.clone())));
                }
                answers
            })
        })
        .collect();

    // The quiet client signs one request at a time until both paces were
    // seen, or for at most 30 s on a slow machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_answers = Vec::new();
    while Instant::now() < deadline
        && (paced(&server, "prompt") < 1.0 || paced(&server, "background") < 1.0)
    {
        quiet_answers.push(quiet.send(reqwest::Method::POST, &url, Some(body.clone())));
    }
    stop.store(true, Ordering::Relaxed);
    let busy_answers: Vec<Resp> = flood.into_iter().flat_map(|t| t.join().unwrap()).collect();

    assert!(
        paced(&server, "prompt") >= 1.0,
        "the quiet client never signed promptly"
    );
    assert!(
        paced(&server, "background") >= 1.0,
        "the busy client never signed on the signing threads"
    );
    for r in quiet_answers.iter().chain(&busy_answers) {
        assert_signed(r, &uri);
    }
}
