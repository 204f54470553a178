//! The issuance journal through the real binary: every leaf the API returns
//! (CSR signing and agent leaves) has its entry in `<data-dir>/journal`
//! — serial, SPIFFE ID, validity, requester, request ID — before the answer
//! is sent, and the entries survive the process being killed at once.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod common;

use common::{csr_for_uri, service_uri, Server};
use serde_json::{json, Value};
use std::path::Path;

/// Every entry of the journal, oldest first.
fn journal(data_dir: &Path) -> Vec<Value> {
    let dir = data_dir.join("journal");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the journal directory")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                // The segment being written ends in blank fill.
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_returned_leaf_is_in_the_journal_before_the_answer_and_survives_a_kill() {
    let mut server = Server::start(&[]);
    let me = server.get_json("/v1/acl/token/self")["AccessorID"]
        .as_str()
        .unwrap()
        .to_string();
    let td = server.trust_domain();
    let signed = server.sign(&csr_for_uri(&service_uri(&td, "dc1", "web")));
    assert_eq!(signed.status, 200, "{signed:?}");
    let leaf = server.get("/v1/agent/connect/ca/leaf/api");
    assert_eq!(leaf.status, 200, "{leaf:?}");

    // Killed right after the answers: no chance to flush anything.
    server.kill();
    let entries = journal(&server.data_dir());
    assert_eq!(entries.len(), 2, "{entries:?}");
    for (entry, resp, kind) in [
        (&entries[0], &signed, "csr"),
        (&entries[1], &leaf, "agent_leaf"),
    ] {
        let issued = resp.json();
        assert_eq!(entry["Serial"], issued["SerialNumber"]);
        assert_eq!(entry["SPIFFEID"], issued["ServiceURI"]);
        assert_eq!(entry["ValidAfter"], issued["ValidAfter"]);
        assert_eq!(entry["ValidBefore"], issued["ValidBefore"]);
        assert_eq!(entry["Kind"], json!(kind));
        assert_eq!(entry["Requester"], json!(format!("accessor:{me}")));
        assert_eq!(
            entry["RequestId"].as_str(),
            resp.header("x-request-id").as_deref(),
            "the entry names the request"
        );
        assert!(!entry.to_string().contains("PRIVATE KEY"), "{entry}");
    }

    server.start_again();
    let again = server.get("/v1/agent/connect/ca/leaf/db");
    assert_eq!(again.status, 200, "{again:?}");
    let entries = journal(&server.data_dir());
    assert_eq!(entries.len(), 3, "appended after the restart: {entries:?}");
    assert_eq!(entries[2]["Serial"], again.json()["SerialNumber"]);
}
