//! The audit trail (`audit { path }`): one JSON line per issued
//! certificate, with the serial the API returned, the SPIFFE ID, the
//! validity in RFC 3339, and never key material.

mod common;

use common::{csr_for_uri, service_uri, Server};
use serde_json::{json, Value};
use std::time::Duration;

#[test]
fn every_issuance_is_an_audit_line_with_rfc3339_times_and_no_secrets() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("audit.log");
    let server = Server::start_with_config(&json!({"audit": {"path": path}}), &[]);
    let leaf = server.get_json("/v1/agent/connect/ca/leaf/web");
    let td = server.trust_domain();
    let signed = server
        .sign(&csr_for_uri(&service_uri(&td, "dc1", "api")))
        .json();
    let serials = [&leaf["SerialNumber"], &signed["SerialNumber"]];
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    };
    assert!(
        common::wait_until(Duration::from_secs(5), || lines().len() >= 2),
        "two audit lines"
    );
    let text = std::fs::read_to_string(&path).expect("the audit log");
    assert!(!text.contains("PRIVATE KEY"), "no key material: {text}");
    for serial in serials {
        let line = lines()
            .into_iter()
            .find(|l| &l["fields"]["serial"] == serial)
            .unwrap_or_else(|| panic!("no audit line for {serial}: {text}"));
        let fields = &line["fields"];
        for key in ["valid_after", "valid_before"] {
            let t = fields[key].as_str().expect(key);
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|e| panic!("{key} {t:?} is not RFC 3339: {e}"));
        }
        assert!(fields["spiffe_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("spiffe://")));
        // Who asked, by AccessorID, from where, and in which request.
        assert!(
            fields["request_id"]
                .as_str()
                .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()),
            "{line}"
        );
        let requester = fields["requester"].as_str().unwrap_or_default();
        assert!(requester.starts_with("accessor:"), "{line}");
        assert!(
            fields["remote"]
                .as_str()
                .is_some_and(|r| r.starts_with("127.0.0.1:")),
            "{line}"
        );
    }
    let token = server.token().expect("the bootstrap token");
    assert!(
        !text.contains(&token),
        "the token's secret is in the audit log"
    );
}

#[test]
fn ca_and_acl_changes_are_audit_lines_naming_who_made_them() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("audit.log");
    let server = Server::start_with_config(&json!({"audit": {"path": path}}), &[]);
    let r = server.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(r.status, 200, "{r:?}");
    let request_id = r
        .header("x-request-id")
        .expect("every answer has X-Request-Id");
    let t = server.put("/v1/acl/token", json!({"Description": "x"}).to_string());
    assert_eq!(t.status, 200, "{t:?}");
    let secret = t.json()["SecretID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        common::wait_until(Duration::from_secs(5), || read()
            .contains("ACL token created")),
        "{}",
        read()
    );
    let lines: Vec<Value> = read()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let change = lines
        .iter()
        .find(|l| l["fields"]["message"] == "CA configuration changed")
        .unwrap_or_else(|| panic!("no CA change line: {lines:?}"));
    assert_eq!(change["fields"]["rotated"], true, "{change}");
    assert_eq!(
        change["fields"]["request_id"],
        request_id.as_str(),
        "{change}"
    );
    assert!(change["fields"]["requester"]
        .as_str()
        .is_some_and(|r| r.starts_with("accessor:")));
    assert!(
        !read().contains(&secret),
        "a token secret is in the audit log"
    );
    assert!(!read().contains(&server.token().unwrap_or_default()));

    // Deleting the token and a policy: one line each, naming what and who.
    let accessor = t.json()["AccessorID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let p = server.put(
        "/v1/acl/policy",
        json!({"Name": "gone", "Rules": "{}"}).to_string(),
    );
    assert_eq!(p.status, 200, "{p:?}");
    let policy = p.json()["ID"].as_str().unwrap_or_default().to_string();
    for path in [
        format!("/v1/acl/token/{accessor}"),
        format!("/v1/acl/policy/{policy}"),
    ] {
        let r = server.request(reqwest::Method::DELETE, &path, None);
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    let deleted = || -> Vec<Value> {
        read()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["fields"]["message"] == "ACL object deleted")
            .collect()
    };
    assert!(common::wait_until(Duration::from_secs(5), || deleted()
        .len()
        == 2));
    for (line, (object, id)) in deleted()
        .iter()
        .zip([("Token", &accessor), ("Policy", &policy)])
    {
        assert_eq!(line["fields"]["object"], object, "{line}");
        assert_eq!(line["fields"]["id"], id.as_str(), "{line}");
        assert!(line["fields"]["requester"]
            .as_str()
            .is_some_and(|r| r.starts_with("accessor:")));
    }
}

/// Every log line written while a request is handled names its request ID
/// (the one in `X-Request-Id`), including lines from the engine's work on
/// other threads; the query string, which may carry a token, is not logged.
#[test]
fn log_lines_of_a_request_carry_its_request_id() {
    let server = Server::start(&[]);
    let path = "/v1/connect/ca/configuration";
    let token = server.token().unwrap_or_default();
    let body =
        json!({"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}});
    let r = server.request_as(
        None,
        reqwest::Method::PUT,
        &format!("{path}?token={token}"),
        Some(body.to_string().into_bytes()),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.header("x-request-id").expect("X-Request-Id");
    assert!(
        common::wait_until(Duration::from_secs(5), || server
            .logs()
            .contains("root rotated")),
        "{}",
        server.logs()
    );
    let logs = server.logs();
    let rotated: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("root rotated"))
        .collect();
    assert_eq!(rotated.len(), 1, "{logs}");
    assert!(
        rotated[0].contains(&format!("request_id={id}")),
        "{}",
        rotated[0]
    );
    assert!(
        !logs.contains(&token),
        "the token from the query is in the log"
    );
}

#[test]
fn without_an_audit_file_the_audit_lines_are_in_the_log() {
    // They are written by a thread of their own; the line reaches the log
    // shortly after the answer, and before the server has stopped.
    let mut server = Server::start(&[]);
    let leaf = server.get_json("/v1/agent/connect/ca/leaf/web");
    let serial = leaf["SerialNumber"].as_str().expect("SerialNumber");
    let line = format!("serial={serial}");
    assert!(
        server.wait_for_log(&line, Duration::from_secs(10)),
        "no audit line for {serial} in the log:\n{}",
        server.logs()
    );
    let logs = server.logs();
    let audit = logs.lines().find(|l| l.contains(&line)).expect("the line");
    assert!(audit.contains("issued certificate"), "{audit}");
    assert!(!logs.contains("PRIVATE KEY"), "no key material: {logs}");
    server.stop();
}
