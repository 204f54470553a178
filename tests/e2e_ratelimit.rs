//! End-to-end: CSR rate limits (`CSRMaxPerSecond`, `CSRMaxConcurrent`) set
//! through the configuration endpoint take effect at once and can be lifted.

mod common;

use common::{csr_for_uri, service_uri, Resp, Server};
use serde_json::json;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const RATE_LIMITED: &str = "Rate limit reached, try again later";

/// `n` valid CSRs for distinct services, made before any request is sent
/// so that the requests themselves go out back to back.
fn csrs(server: &Server, n: usize) -> Vec<String> {
    let td = server.trust_domain();
    (0..n)
        .map(|i| csr_for_uri(&service_uri(&td, "dc1", &format!("svc-{i}"))))
        .collect()
}

fn assert_rate_limited(r: &Resp) {
    r.assert_error(429);
    assert_eq!(r.body, RATE_LIMITED);
    assert_eq!(r.code(), "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {r:?}"))
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(retry >= 1, "Retry-After {retry}");
}

/// Sends every CSR from its own thread, all released at once; returns the
/// statuses.
fn sign_in_parallel(server: &Server, csrs: &[String]) -> Vec<Resp> {
    let barrier = Arc::new(Barrier::new(csrs.len()));
    let url = server.url("/v1/connect/ca/sign");
    let threads: Vec<_> = csrs
        .iter()
        .map(|csr| {
            let (barrier, url, http) = (barrier.clone(), url.clone(), server.http());
            let body = json!({ "CSR": csr }).to_string().into_bytes();
            std::thread::spawn(move || {
                barrier.wait();
                http.send(reqwest::Method::POST, &url, Some(body))
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("joining a request thread"))
        .collect()
}

#[test]
fn csr_max_per_second_refuses_bursts_until_lifted() {
    let server = Server::start(&[]);
    let batch = csrs(&server, 10);
    let r = server.put_config(json!({"CSRMaxPerSecond": 1}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        server.config()["Config"]["CSRMaxPerSecond"].as_f64(),
        Some(1.0)
    );

    let results: Vec<Resp> = batch.iter().map(|csr| server.sign(csr)).collect();
    let ok = results.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Resp> = results.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + limited.len(), results.len(), "{results:?}");
    assert!(ok >= 1, "the first request fits the burst: {results:?}");
    assert!(
        !limited.is_empty(),
        "10 requests at 1/s must hit the limit: {results:?}"
    );
    for r in limited {
        assert_rate_limited(r);
    }

    // Lifted: 0 means no limit.
    assert_eq!(server.put_config(json!({"CSRMaxPerSecond": 0})).status, 200);
    for csr in csrs(&server, 20) {
        let r = server.sign(&csr);
        assert_eq!(r.status, 200, "no limit is configured: {r:?}");
    }
}

#[test]
fn csr_max_concurrent_refuses_parallel_requests_until_lifted() {
    // An RSA CA makes each signature take long enough for requests to
    // overlap reliably on a small machine.
    let server = Server::start_with_config(
        &json!({"connect": {"ca_config": {"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}}}),
        &[],
    );
    let r = server.put_config(json!({
        "PrivateKeyType": "rsa", "PrivateKeyBits": 2048, "CSRMaxConcurrent": 1
    }));
    assert_eq!(r.status, 200, "{r:?}");

    // Overlap is a matter of scheduling, so retry bursts (bounded) until one
    // collides; one is normally enough.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_429 = false;
    let mut seen_200 = false;
    while !seen_429 && Instant::now() < deadline {
        for r in sign_in_parallel(&server, &csrs(&server, 12)) {
            match r.status {
                200 => seen_200 = true,
                429 => {
                    assert_rate_limited(&r);
                    seen_429 = true;
                }
                _ => panic!("unexpected {r:?}"),
            }
        }
    }
    assert!(
        seen_429,
        "parallel requests with CSRMaxConcurrent=1 never got 429"
    );
    assert!(seen_200, "at least one parallel request must get through");

    // Lifted: every parallel request succeeds.
    let r = server.put_config(json!({
        "PrivateKeyType": "rsa", "PrivateKeyBits": 2048,
        "CSRMaxConcurrent": 0, "CSRMaxPerSecond": 0
    }));
    assert_eq!(r.status, 200, "{r:?}");
    for _ in 0..3 {
        for r in sign_in_parallel(&server, &csrs(&server, 12)) {
            assert_eq!(r.status, 200, "no limit is configured: {r:?}");
        }
    }
}
