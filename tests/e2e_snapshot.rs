//! End-to-end: backups. `meshca snapshot save`, a root rotation, `meshca
//! snapshot restore` into the running server: the saved roots and
//! configuration are back, leaves verify against them, indexes keep
//! growing. Damaged files, snapshots of another store and of a newer schema
//! are refused and change nothing.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod common;

use common::{roots_bundle, run_meshca, verify_chain_against, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

fn snapshot_cmd(server: &Server, cwd: &Path, args: &[&str]) -> Output {
    let token = server.token().unwrap_or_default();
    let mut all = vec!["snapshot"];
    all.extend_from_slice(args);
    run_meshca(
        &all,
        &[
            ("MESHCA_HTTP_ADDR", &server.base),
            ("MESHCA_HTTP_TOKEN", &token),
        ],
        cwd,
        Duration::from_secs(60),
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The roots without what a restore may change (indexes).
fn roots_view(roots: &Value) -> Value {
    let roots: Vec<Value> = roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            json!([
                r["ID"],
                r["Active"],
                r["RootCert"],
                r["IntermediateCerts"],
                r["SigningKeyID"]
            ])
        })
        .collect();
    json!({"active": roots_active(&roots), "roots": roots})
}

fn roots_active(roots: &[Value]) -> usize {
    roots.iter().filter(|r| r[1] == json!(true)).count()
}

#[test]
fn save_rotate_restore_brings_the_saved_roots_back() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(server.put_config(json!({"LeafCertTTL": "24h"})).status, 200);
    let saved_roots = server.roots();
    let saved_config = server.config()["Config"].clone();

    let out = snapshot_cmd(&server, dir.path(), &["save", "backup.snap"]);
    assert!(out.status.success(), "{}", text(&out));
    let file = dir.path().join("backup.snap");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let bytes = std::fs::read(&file).unwrap();
    let again = snapshot_cmd(&server, dir.path(), &["save", "backup.snap"]);
    assert!(
        !again.status.success(),
        "an existing file is never replaced"
    );
    assert_eq!(std::fs::read(&file).unwrap(), bytes);

    // A token made after the save is gone after the restore.
    let t = server.put("/v1/acl/token", "{}");
    assert_eq!(t.status, 200, "{t:?}");
    let later = t.json()["SecretID"].as_str().unwrap().to_string();
    let whoami = |secret: &str| {
        server
            .request_as(
                Some(secret),
                reqwest::Method::GET,
                "/v1/acl/token/self",
                None,
            )
            .status
    };
    assert_eq!(whoami(&later), 200);

    let r = server.put_config(json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}));
    assert_eq!(r.status, 200, "{r:?}");
    let rotated = server.roots();
    assert_ne!(rotated["ActiveRootID"], saved_roots["ActiveRootID"]);
    let index_before_restore = server.get("/v1/connect/ca/roots").index();

    let out = snapshot_cmd(&server, dir.path(), &["restore", "backup.snap"]);
    assert!(out.status.success(), "{}", text(&out));
    let restored = server.get("/v1/connect/ca/roots");
    assert!(
        restored.index() > index_before_restore,
        "indexes keep growing"
    );
    assert_eq!(roots_view(&restored.json()), roots_view(&saved_roots));
    assert_eq!(server.config()["Config"], saved_config);
    let leaf = server.get_json("/v1/agent/connect/ca/leaf/web");
    verify_chain_against(
        leaf["CertPEM"].as_str().unwrap(),
        &roots_bundle(&saved_roots),
        "a leaf after the restore",
    );
    assert!(server.logs().contains("snapshot restored"));
    assert_eq!(whoami(&later), 403, "the ACL table is the snapshot's");
}

#[test]
fn snapshots_that_cannot_apply_are_refused_and_change_nothing() {
    let server = Server::start(&[]);
    let other = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    assert!(snapshot_cmd(&server, dir.path(), &["save", "ours.snap"])
        .status
        .success());
    assert!(snapshot_cmd(&other, dir.path(), &["save", "theirs.snap"])
        .status
        .success());
    let before = (server.roots(), server.config());
    let put = |bytes: Vec<u8>| server.put("/v1/snapshot", bytes);

    // Another store: its data keys do not open under our store key.
    let theirs = std::fs::read(dir.path().join("theirs.snap")).unwrap();
    let r = put(theirs);
    r.assert_error(400);
    assert!(r.body.contains("another store"), "{r:?}");

    // Damaged: one byte of a record changed.
    let ours = std::fs::read(dir.path().join("ours.snap")).unwrap();
    let mut file: Value = serde_json::from_slice(&ours).unwrap();
    let v = file["Records"][0]["Value"].as_str().unwrap().to_string();
    // Another first base64 digit: the same length, other bytes.
    let first = if v.starts_with('A') { "B" } else { "A" };
    let flipped = format!("{first}{}", &v[1..]);
    file["Records"][0]["Value"] = json!(flipped);
    let r = put(serde_json::to_vec(&file).unwrap());
    r.assert_error(400);
    assert!(r.body.contains("checksum"), "{r:?}");

    // A newer schema, checksummed as a newer meshca would.
    let mut snapshot = meshca_store::snapshot_file::decode(&ours).unwrap();
    for (key, value) in snapshot.records.iter_mut() {
        if key == "meta/schema_version" {
            *value = 99u64.to_be_bytes().to_vec();
        }
    }
    let r = put(meshca_store::snapshot_file::encode(&snapshot).unwrap());
    r.assert_error(400);
    assert!(r.body.contains("schema 99"), "{r:?}");

    // Without operator:write.
    let r = server.request_as(
        None,
        reqwest::Method::PUT,
        "/v1/snapshot",
        Some(ours.clone()),
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        server
            .request_as(None, reqwest::Method::GET, "/v1/snapshot", None)
            .status,
        403
    );

    assert_eq!((server.roots(), server.config()), before, "nothing changed");
    // And the server still restores a good one.
    assert_eq!(put(ours).status, 200);
}
