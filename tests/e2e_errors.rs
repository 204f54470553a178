//! End-to-end: HTTP-level errors (unknown paths, wrong methods, oversized
//! bodies) carry Consul's status codes and an `X-Meshca-Error` code.

mod common;

use common::Server;
use reqwest::Method;

#[test]
fn unknown_paths_are_404() {
    let mut server = Server::start(&[]);
    for path in [
        "/",
        "/v1",
        "/v1/connect/ca/rootz",
        "/v1/connect/ca/roots/extra",
        "/v1/agent/connect/ca/leaf",
        "/v1/agent/connect/ca/leaf/",
        "/v1/kv/anything",
    ] {
        let r = server.get(path);
        r.assert_error(404);
        assert_eq!(r.code(), "not_found", "{path}");
    }
    let r = server.post("/v1/nope", "{}");
    r.assert_error(404);
    server.assert_alive();
}

#[test]
fn wrong_methods_are_405_with_allow() {
    let mut server = Server::start(&[]);
    let cases = [
        (Method::DELETE, "/v1/connect/ca/roots", &["GET"][..]),
        (Method::POST, "/v1/connect/ca/roots", &["GET"][..]),
        (
            Method::POST,
            "/v1/connect/ca/configuration",
            &["GET", "PUT"][..],
        ),
        (
            Method::DELETE,
            "/v1/connect/ca/configuration",
            &["GET", "PUT"][..],
        ),
        (Method::GET, "/v1/connect/ca/sign", &["POST", "PUT"][..]),
        (Method::PUT, "/v1/agent/connect/ca/leaf/web", &["GET"][..]),
        (Method::PUT, "/v1/health", &["GET"][..]),
        (Method::POST, "/v1/status/leader", &["GET"][..]),
    ];
    for (method, path, allowed) in cases {
        let r = server.request(method.clone(), path, Some(b"{}".to_vec()));
        r.assert_error(405);
        assert_eq!(r.code(), "method_not_allowed", "{method} {path}");
        let allow = r
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: 405 without Allow: {r:?}"));
        let listed: Vec<&str> = allow.split(',').map(str::trim).collect();
        for m in allowed {
            assert!(
                listed.contains(m),
                "{method} {path}: Allow {allow:?} lacks {m}"
            );
        }
        assert!(
            !listed.contains(&method.as_str()),
            "{method} {path}: Allow {allow:?} lists the refused method"
        );
    }
    server.assert_alive();
}

#[test]
fn bodies_over_one_mib_are_413() {
    let mut server = Server::start(&[]);
    const MIB: usize = 1024 * 1024;
    // Valid JSON, so the only thing wrong is the size.
    let big_json = |size: usize| {
        let filler = "A".repeat(size - r#"{"CSR":""}"#.len());
        format!(r#"{{"CSR":"{filler}"}}"#)
    };
    for (method, path) in [
        ("POST", "/v1/connect/ca/sign"),
        ("PUT", "/v1/connect/ca/sign"),
        ("PUT", "/v1/connect/ca/configuration"),
    ] {
        for size in [MIB + 1, 2 * MIB] {
            let (status, head, body) =
                common::raw_request(&server.base, method, path, big_json(size).into_bytes());
            assert_eq!(status, 413, "{method} {path} {size}: {head}\n{body}");
            assert!(
                head.contains("x-meshca-error: payload_too_large"),
                "{method} {path} {size}: {head}"
            );
        }
    }
    // Just under the limit the body is read and judged on its content.
    let r = server.post("/v1/connect/ca/sign", big_json(MIB - 16));
    r.assert_error(400);
    assert_eq!(r.code(), "invalid_csr", "{r:?}");
    server.assert_alive();
}

/// Regression: a Go duration with a non-ASCII character panicked the
/// duration parser, and the connection closed without an answer.
#[test]
fn non_ascii_durations_are_parsed_or_refused_never_a_closed_connection() {
    let mut server = Server::start(&[]);
    // `1µs` (micro sign) and `1μs` (Greek mu) are valid Go durations.
    for ok in ["1%C2%B5s", "1%CE%BCs"] {
        let r = server.get(&format!("/v1/connect/ca/roots?wait={ok}"));
        assert_eq!(r.status, 200, "wait={ok}: {r:?}");
    }
    for bad in ["1%C3%A9s", "1h%C3%A9", "%F0%9F%98%80"] {
        let r = server.get(&format!("/v1/connect/ca/roots?index=1&wait={bad}"));
        r.assert_error(400);
        assert_eq!(r.body, "Invalid wait time", "wait={bad}");
    }
    let r = server.put_config(serde_json::json!({"LeafCertTTL": "1h\u{e9}"}));
    r.assert_error(400);
    assert!(r.body.contains("LeafCertTTL"), "{r:?}");
    server.assert_alive();
}

/// Regression: a key given twice took the last value silently (one such
/// body rotated the root), and rate limits took absurd values.
#[test]
fn duplicate_keys_and_absurd_numbers_are_refused_and_change_nothing() {
    let mut server = Server::start(&[]);
    let before = server.get("/v1/connect/ca/configuration");
    let roots = server.roots();
    let bodies = [
        r#"{"Provider": "consul", "Config": {"LeafCertTTL": "24h"}, "Config": {"PrivateKeyType": "rsa"}}"#,
        r#"{"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyType": "rsa"}}"#,
        r#"{"Provider": "consul", "Config": {"LeafCertTTL": "24h", "leaf_cert_ttl": "48h"}}"#,
        r#"{"Provider": "consul", "Config": {"CSRMaxPerSecond": 1e-300}}"#,
        r#"{"Provider": "consul", "Config": {"CSRMaxPerSecond": -0.0}}"#,
        r#"{"Provider": "consul", "Config": {"CSRMaxConcurrent": 2147483648}}"#,
    ];
    for body in bodies {
        let r = server.put("/v1/connect/ca/configuration", body);
        r.assert_error(400);
        assert!(
            r.body.contains("duplicate key")
                || r.body.contains("more than once")
                || r.body.contains("CSRMax"),
            "{body}: {r:?}"
        );
    }
    let after = server.get("/v1/connect/ca/configuration");
    assert_eq!(after.index(), before.index());
    assert_eq!(server.roots(), roots, "no rotation");
    server.assert_alive();
}

/// A body labelled as something other than JSON is a 415; curl's default
/// label for `--data` (form-urlencoded) keeps working, as in Consul's docs.
#[test]
fn bodies_labelled_as_not_json_are_415() {
    let mut server = Server::start(&[]);
    let url = server.url("/v1/connect/ca/configuration");
    let client = reqwest::blocking::Client::new();
    let body = r#"{"Provider": "consul", "Config": {"LeafCertTTL": "24h"}}"#;
    for (content_type, want) in [
        ("application/xml", 415),
        ("multipart/form-data; boundary=x", 415),
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("application/x-www-form-urlencoded", 200),
    ] {
        let r = client
            .put(&url)
            .header("X-Consul-Token", server.token().unwrap_or_default())
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .expect("a response");
        assert_eq!(r.status().as_u16(), want, "{content_type}");
        if want == 415 {
            assert_eq!(r.headers()["x-meshca-error"], "unsupported_media_type");
        }
    }
    server.assert_alive();
}
