//! End to end: encryption at rest with the real binary. `meshca keygen`,
//! starts that are refused without writing anything (a wrong, missing,
//! too-open or unrelated key; a damaged sealed registry), changing the store
//! key with `--old-store-key-file`, and no private key on disk in any form.

mod common;

use base64::Engine as _;
use common::{Server, StartFailure};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// SHA-256 of every file under `dir`, by path, sorted.
fn file_hashes(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("listing a directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("reading a file");
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
                out.push((path, hex(digest.as_ref())));
            }
        }
    }
    out.sort();
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts the stopped `server` with `args`, expects a refusal whose output
/// contains every one of `needles`, and checks that no file under the data
/// dir changed.
fn assert_refused_unchanged(server: &mut Server, args: &[&str], needles: &[&str]) {
    assert_refused(server, args, needles, false);
}

/// [`assert_refused_unchanged`] for a refusal that comes after sled opened
/// the database: sled 0.34 regenerates its snapshot file (`store/snap.*`,
/// derived from its log) at every open, so that file may change; the log,
/// the key check and the high-water mark may not.
fn assert_refused_after_sled_opened(server: &mut Server, args: &[&str], needles: &[&str]) {
    assert_refused(server, args, needles, true);
}

fn assert_refused(server: &mut Server, args: &[&str], needles: &[&str], sled_opened: bool) {
    let hashes = |server: &Server| -> Vec<(PathBuf, String)> {
        file_hashes(&server.data_dir())
            .into_iter()
            .filter(|(path, _)| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !(sled_opened && name.starts_with("snap."))
            })
            .collect()
    };
    let before = hashes(server);
    match server.try_start_again_with(args) {
        Ok(()) => panic!("started with {args:?}; logs:\n{}", server.logs()),
        Err(StartFailure::TimedOut { logs }) => panic!("hung with {args:?}:\n{logs}"),
        Err(StartFailure::Exited { status, logs }) => {
            assert!(!status.success(), "{args:?} exited 0:\n{logs}");
            for needle in needles {
                assert!(logs.contains(needle), "{args:?}: no {needle:?} in:\n{logs}");
            }
        }
    }
    assert_eq!(
        hashes(server),
        before,
        "a refused start with {args:?} changed the data dir"
    );
}

fn leaf(server: &Server, service: &str) -> Value {
    server.get_json(&format!("/v1/agent/connect/ca/leaf/{service}"))
}

#[test]
fn keygen_prints_base64_and_writes_a_private_raw_file_without_overwriting() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let printed: Vec<Vec<u8>> = (0..2)
        .map(|_| {
            let out = common::run_meshca(&["keygen"], &[], dir.path(), Duration::from_secs(20));
            assert!(out.status.success());
            let text = String::from_utf8(out.stdout).expect("UTF-8");
            B64.decode(text.trim()).expect("base64")
        })
        .collect();
    assert_eq!(printed[0].len(), 64, "32-byte key ID + 32-byte key");
    assert_ne!(printed[0], printed[1], "every key is new");

    let path = common::keygen(dir.path(), "store.key");
    let raw = std::fs::read(&path).expect("the key file");
    assert_eq!(raw.len(), 64, "binary layout");
    let mode = std::fs::metadata(&path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let out = common::run_meshca(
        &["keygen", "--out", &path],
        &[],
        dir.path(),
        Duration::from_secs(20),
    );
    assert!(!out.status.success(), "overwrote a key file");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    assert!(stderr.contains(&path), "{stderr}");
    assert_eq!(std::fs::read(&path).expect("the key file"), raw);

    // Both forms start a server; the printed one as a base64 file.
    let b64_file = dir.path().join("printed.key");
    std::fs::write(&b64_file, B64.encode(&printed[0])).expect("writing");
    std::fs::set_permissions(&b64_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for key in [path.as_str(), b64_file.to_str().expect("UTF-8")] {
        let mut server = Server::start(&["--store-key-file", key]);
        assert_eq!(leaf(&server, "web")["Service"], json!("web"));
        server.stop();
    }
}

#[test]
fn refused_starts_name_the_problem_and_change_no_file() {
    let keys = tempfile::tempdir().expect("a temporary directory");
    let key = common::keygen(keys.path(), "store.key");
    let other = common::keygen(keys.path(), "other.key");
    let third = common::keygen(keys.path(), "third.key");
    let mut server = Server::start(&["--store-key-file", &key]);
    leaf(&server, "web");
    let roots = server.roots();
    server.stop();

    // A wrong key.
    assert_refused_unchanged(
        &mut server,
        &["--store-key-file", &other],
        &["does not match this data directory", &other],
    );
    // No key for an existing store; a key file that does not exist.
    assert_refused_unchanged(&mut server, &[], &["holds a store but no store key"]);
    let absent = keys.path().join("absent.key");
    let absent = absent.to_str().expect("UTF-8");
    assert_refused_unchanged(
        &mut server,
        &["--store-key-file", absent],
        &["reading store key", absent],
    );
    // A key file others can read.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_refused_unchanged(
        &mut server,
        &["--store-key-file", &key],
        &[&format!("permissions 0644 for {key} are too open")],
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // An old key that did not seal the store, with a new key that did not
    // either: both files and the store's key are named.
    assert_refused_unchanged(
        &mut server,
        &["--store-key-file", &third, "--old-store-key-file", &other],
        &["neither the new store key", &third, &other],
    );
    // A rotation period that cannot apply.
    let config = server.dir().join("bad-period.hcl");
    std::fs::write(
        &config,
        format!(
            "encrypt_store {{\n  key_file = \"{key}\"\n  data_key_rotation_period = \"1w\"\n}}\n"
        ),
    )
    .expect("writing a config file");
    assert_refused_unchanged(
        &mut server,
        &["--config-file", config.to_str().expect("UTF-8")],
        &["data_key_rotation_period"],
    );

    // After all that, the right key still serves the same CA.
    server
        .try_start_again_with(&["--store-key-file", &key])
        .expect("the right key starts");
    assert_eq!(server.roots()["Roots"], roots["Roots"]);
}

/// A sealed registry altered on disk behind sled's and the mark's back
/// (through the store API, with the right key, so only the sealing layer
/// can notice) is refused as corrupt, and the refused start writes nothing.
#[test]
fn a_damaged_sealed_registry_is_refused_without_writing() {
    use meshca_store::{schema, Store, StoreKey, Txn};
    let keys = tempfile::tempdir().expect("a temporary directory");
    let key_file = common::keygen(keys.path(), "store.key");
    let mut server = Server::start(&["--store-key-file", &key_file]);
    leaf(&server, "web");
    server.stop();
    {
        let key = StoreKey::load(Path::new(&key_file)).expect("the key");
        let store = meshca_store_sled::SledStore::open(&server.data_dir(), &key).expect("open");
        let raw = store
            .get(schema::DATA_KEYS)
            .expect("get")
            .expect("a registry");
        let mut registry: Value = serde_json::from_slice(&raw).expect("JSON");
        let mut sealed = B64
            .decode(registry["sealed"].as_str().expect("sealed"))
            .expect("base64");
        let at = sealed.len() - 3;
        sealed[at] ^= 0x10;
        registry["sealed"] = B64.encode(&sealed).into();
        store
            .commit(&Txn::new().put(
                schema::DATA_KEYS,
                serde_json::to_vec(&registry).expect("JSON"),
            ))
            .expect("commit");
    }
    assert_refused_after_sled_opened(
        &mut server,
        &["--store-key-file", &key_file],
        &["store data is corrupt", "altered or damaged"],
    );
}

#[test]
fn the_store_key_changes_with_the_old_key_and_then_only_the_new_key_opens_it() {
    let keys = tempfile::tempdir().expect("a temporary directory");
    let old = common::keygen(keys.path(), "old.key");
    let new = common::keygen(keys.path(), "new.key");
    let mut server = Server::start(&["--store-key-file", &old]);
    leaf(&server, "web");
    let roots = server.roots();
    server.stop();

    // Through the config file, as an operator would keep it.
    let config = server.dir().join("rotate.hcl");
    std::fs::write(
        &config,
        format!("encrypt_store {{\n  key_file = \"{new}\"\n  old_key_file = \"{old}\"\n}}\n"),
    )
    .expect("writing a config file");
    server
        .try_start_again_with(&["--config-file", config.to_str().expect("UTF-8")])
        .expect("re-sealing under the new key");
    assert!(
        server.logs().contains("re-sealed under the new store key"),
        "{}",
        server.logs()
    );
    assert_eq!(server.roots()["Roots"], roots["Roots"]);
    assert_eq!(leaf(&server, "api")["Service"], json!("api"));
    server.stop();

    // The old key alone is refused; the new key alone serves the same CA.
    assert_refused_unchanged(
        &mut server,
        &["--store-key-file", &old],
        &["does not match this data directory"],
    );
    server
        .try_start_again_with(&["--store-key-file", &new])
        .expect("the new key alone");
    assert_eq!(server.roots()["Roots"], roots["Roots"]);
    server.stop();

    // Both flags again (a restart with the same command): nothing to do.
    server
        .try_start_again_with(&["--store-key-file", &new, "--old-store-key-file", &old])
        .expect("both keys again");
    assert!(server
        .logs()
        .contains("already sealed under the new store key"));
    assert_eq!(server.roots()["Roots"], roots["Roots"]);
}

/// Every raw file under `dir`, concatenated per file.
fn raw_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    file_hashes(dir)
        .into_iter()
        .map(|(path, _)| {
            let bytes = std::fs::read(&path).expect("reading a file");
            (path, bytes)
        })
        .collect()
}

/// The forms a private key could take on disk: its PEM text, its DER, the
/// base64 of its DER (a PEM body without line breaks) and the first PEM
/// body line.
fn forms(pem_text: &str) -> Vec<(String, Vec<u8>)> {
    let block = pem::parse(pem_text).expect("a PEM private key");
    let der = block.contents().to_vec();
    let first_line = pem_text
        .lines()
        .nth(1)
        .expect("a PEM body line")
        .to_string();
    vec![
        ("PEM".into(), pem_text.trim().as_bytes().to_vec()),
        ("DER".into(), der.clone()),
        ("base64 DER".into(), B64.encode(&der).into_bytes()),
        ("PEM body line".into(), first_line.into_bytes()),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_private_key_is_on_disk_in_plaintext() {
    let keys = tempfile::tempdir().expect("a temporary directory");
    let key_file = common::keygen(keys.path(), "store.key");
    let mut server = Server::start(&["--store-key-file", &key_file]);
    let mut known: Vec<(String, String)> = Vec::new();
    for service in ["web", "api", "db"] {
        let issued = leaf(&server, service);
        let pem_text = issued["PrivateKeyPEM"].as_str().expect("a leaf key");
        known.push((format!("leaf key of {service}"), pem_text.to_string()));
    }
    // A rotation to a new key type: the server makes a new root key.
    let r = server.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(r.status, 200, "{}", r.body);
    // A root the test brings, whose key it knows.
    let cluster_id = server
        .trust_domain()
        .strip_suffix(".consul")
        .expect("<cluster id>.consul")
        .to_string();
    let ca_dir = tempfile::tempdir().expect("a temporary directory");
    let out = common::run_meshca(
        &[
            "tls",
            "ca",
            "create",
            "--cluster-id",
            &cluster_id,
            "--days",
            "365",
        ],
        &[],
        ca_dir.path(),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read_to_string(ca_dir.path().join(f)).expect("a CA file");
    let (cert, root_key) = (read("consul-agent-ca.pem"), read("consul-agent-ca-key.pem"));
    let body = json!({"Provider": "consul", "Config": {"PrivateKey": root_key, "RootCert": cert}});
    let r = server.put("/v1/connect/ca/configuration", body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    known.push(("supplied root key".into(), root_key));
    let issued = leaf(&server, "after");
    known.push((
        "leaf key after the rotations".into(),
        issued["PrivateKeyPEM"]
            .as_str()
            .expect("a leaf key")
            .to_string(),
    ));
    server.stop();

    let files = raw_files(&server.data_dir());
    assert!(
        files.iter().any(|(p, _)| p.ends_with("store/db")),
        "{files:?}"
    );
    // The scan can fail: the certificates the server stored are found.
    let stored_cert = pem::parse(&cert).expect("the supplied certificate");
    assert!(
        files.iter().any(|(_, bytes)| contains(
            bytes,
            &B64.encode(stored_cert.contents()).as_bytes()[..64]
        )),
        "the supplied root certificate (public, stored in plain JSON) was not found: the scan \
         does not see the store's bytes"
    );
    for (what, pem_text) in &known {
        for (form, needle) in forms(pem_text) {
            for (path, bytes) in &files {
                assert!(
                    !contains(bytes, &needle),
                    "the {form} of the {what} is in {} in plaintext",
                    path.display()
                );
            }
        }
    }
}
