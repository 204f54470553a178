//! End-to-end: Schemathesis (PyPI) fuzzes the live server from
//! `api-docs/openapi.json`, with ACLs on and the management token, under
//! `tests/schemathesis.toml` (every check, a fixed number of examples per
//! operation, deterministic). It fails on any 5xx, any status, header or
//! body the document does not describe, a schema-invalid request that is
//! accepted, and a guarded operation that answers without a token. The
//! server must still be healthy afterwards and must not have panicked.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod common;

use common::Server;
use std::path::Path;
use std::process::Command;

/// Runs the `st` command line from the installed package, so that the test
/// does not depend on where pip put its scripts.
const ST: &str = "import sys; from schemathesis.cli import schemathesis; \
                  sys.exit(schemathesis(prog_name='st'))";

/// Seconds the whole fuzzing run may take (about 20 s on two cores).
const RUN_LIMIT_SECS: &str = "600";

/// Every operation in the document gets at least this many test cases.
const MIN_CASES: usize = 1000;

#[test]
fn schemathesis_finds_no_server_error_and_no_drift_from_the_openapi_document() {
    let mut server = Server::start(&[]);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("timeout")
        .arg(RUN_LIMIT_SECS)
        .args(["python3", "-c", ST, "--config-file"])
        .arg(repo.join("tests/schemathesis.toml"))
        .arg("run")
        .arg(repo.join("api-docs/openapi.json"))
        .args(["--url", &server.base, "--no-color"])
        .env("MESHCA_TOKEN", server.token().unwrap())
        .current_dir(server.dir())
        .output()
        .expect("running schemathesis (pip install schemathesis)");
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "schemathesis reported failures (above); server log:\n{}",
        server.logs()
    );

    let generated = cases_generated(&report).expect("the report's test-case count");
    assert!(
        generated >= MIN_CASES,
        "only {generated} test cases ran: was an operation filtered out?"
    );
    server.assert_alive();
    assert_eq!(server.get("/v1/health").status, 200);
    assert!(
        !server.logs().contains("panicked"),
        "the server panicked:\n{}",
        server.logs()
    );
}

/// `N` from the report's "N generated, …" line.
fn cases_generated(report: &str) -> Option<usize> {
    report.lines().find_map(|l| {
        let (n, _) = l.trim().split_once(" generated, ")?;
        n.parse().ok()
    })
}
