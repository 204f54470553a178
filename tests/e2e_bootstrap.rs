//! End-to-end: a fresh data directory bootstraps one CA; restarts (graceful
//! or crash) keep it; `--dev` writes nothing to disk.

mod common;

use common::{active_root, cert_facts, is_root_cn, openssl, Server};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// SHA-1 of the certificate's DER as lower-case colon hex, computed by
/// openssl (independently of the server).
fn sha1_colon_hex(cert_pem: &str) -> String {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    std::fs::write(dir.path().join("c.pem"), cert_pem).expect("writing a PEM file");
    let (ok, out) = openssl(
        dir.path(),
        &["x509", "-noout", "-fingerprint", "-sha1", "-in", "c.pem"],
    );
    assert!(ok, "{out}");
    out.trim()
        .split_once('=')
        .expect("Fingerprint=...")
        .1
        .to_lowercase()
}

fn is_lower_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && s.chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
}

#[test]
fn fresh_data_dir_bootstraps_one_active_root() {
    let server = Server::start(&[]);
    let r = server.get("/v1/connect/ca/roots");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.index() > 0, "X-Consul-Index must be positive: {r:?}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let roots = r.json();

    let list = roots["Roots"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{roots}");
    let root = &list[0];
    assert_eq!(root["Active"], json!(true));
    assert_eq!(roots["ActiveRootID"], root["ID"]);
    let cluster_id = root["ExternalTrustDomain"].as_str().unwrap();
    assert!(is_lower_uuid(cluster_id), "cluster id {cluster_id:?}");
    assert_eq!(
        roots["TrustDomain"].as_str().unwrap(),
        format!("{cluster_id}.consul")
    );
    assert_eq!(server.config()["ClusterID"].as_str(), Some(cluster_id));

    // ID is the SHA-1 of the root's DER, lower-case colon hex.
    let root_pem = root["RootCert"].as_str().unwrap();
    assert!(root_pem.ends_with('\n'), "RootCert must end in a newline");
    assert_eq!(root["ID"].as_str().unwrap(), sha1_colon_hex(root_pem));
    assert_eq!(root["PrivateKeyType"], json!("ec"));
    assert_eq!(root["PrivateKeyBits"], json!(256));
    assert!(root["Name"].as_str().is_some_and(|n| !n.is_empty()));

    // The root certificate itself (the root profile).
    let facts = cert_facts(root_pem);
    let td = roots["TrustDomain"].as_str().unwrap();
    assert_eq!(facts.uris, vec![format!("spiffe://{td}")]);
    assert_eq!(facts.ca, Some(true));
    assert!(facts.key_cert_sign);
    let cn = facts.subject_cn.clone().unwrap();
    assert!(is_root_cn(&cn, cluster_id), "root CN {cn:?}");
    assert_eq!(facts.issuer_cn.as_deref(), Some(cn.as_str()));
    assert_eq!(
        root["SerialNumber"].as_u64().unwrap(),
        u64::from_str_radix(&facts.serial.replace(':', ""), 16).unwrap(),
        "SerialNumber must be the root's serial"
    );
    let ttl = facts.not_after - facts.not_before;
    assert!(
        (87600 * 3600..=87600 * 3600 + 120).contains(&ttl),
        "root validity {ttl}s is not RootCertTTL (87600h)"
    );

    // One intermediate that signs leaves, issued by the root.
    let inters = root["IntermediateCerts"].as_array().unwrap();
    assert_eq!(inters.len(), 1, "{root}");
    let inter = cert_facts(inters[0].as_str().unwrap());
    assert_eq!(inter.ca, Some(true));
    assert_eq!(inter.path_len, Some(0));
    assert_eq!(inter.uris, facts.uris);
    assert_eq!(inter.issuer_cn.as_deref(), Some(cn.as_str()));
    assert_eq!(inter.authority_key_id, facts.subject_key_id);
    let ttl = inter.not_after - inter.not_before;
    assert!(
        (8760 * 3600..=8760 * 3600 + 120).contains(&ttl),
        "intermediate validity {ttl}s is not IntermediateCertTTL (8760h)"
    );

    // The store key sits next to the data, readable by the owner only.
    let key = server.data_dir().join("store.key");
    let mode = std::fs::metadata(&key)
        .unwrap_or_else(|e| panic!("{}: {e}", key.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "store.key mode {mode:o}");
}

/// The JSON field is Consul's `SigningKeyID` (Go's field name), not the
/// `SigningKeyId` a blanket PascalCase rename produces: Consul clients
/// decode it by that exact name.
#[test]
fn roots_json_names_signing_key_id_like_consul() {
    let server = Server::start(&[]);
    let roots = server.roots();
    let root = active_root(&roots);
    let inter = root["IntermediateCerts"][0].as_str().unwrap();
    let skid = cert_facts(inter)
        .subject_key_id
        .expect("the intermediate has a SubjectKeyId");
    let hex: Vec<String> = skid.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        root.get("SigningKeyID"),
        Some(&json!(hex.join(":"))),
        "CARoot must carry SigningKeyID (colon-hex SKID of the signing certificate): {root}"
    );
}

/// Everything the CA publishes that must survive a restart.
fn ca_identity(server: &Server) -> (Value, String) {
    let roots = server.roots();
    let cluster = server.config()["ClusterID"]
        .as_str()
        .expect("the response field is a string")
        .to_string();
    (roots, cluster)
}

#[test]
fn graceful_restart_keeps_the_ca_and_its_configuration() {
    let mut server = Server::start(&[]);
    let (roots, cluster) = ca_identity(&server);
    let key_before = std::fs::read(server.data_dir().join("store.key")).unwrap();
    assert_eq!(server.put_config(json!({"LeafCertTTL": "24h"})).status, 200);
    let index_before = server.get("/v1/connect/ca/roots").index();

    server.restart();
    assert!(
        server.logs().contains("meshca stopped"),
        "SIGTERM must shut down gracefully; logs:\n{}",
        server.logs()
    );

    let (roots_after, cluster_after) = ca_identity(&server);
    assert_eq!(cluster_after, cluster, "cluster ID changed on restart");
    // Same root ID, same SigningKeyID, same certificates: no new keys.
    assert_eq!(roots_after["Roots"], roots["Roots"]);
    assert_eq!(roots_after["ActiveRootID"], roots["ActiveRootID"]);
    assert_eq!(
        server
            .logs()
            .matches("CA initialised with a new root")
            .count(),
        1,
        "a restart must not create a new root; logs:\n{}",
        server.logs()
    );
    assert_eq!(
        std::fs::read(server.data_dir().join("store.key")).unwrap(),
        key_before,
        "the store key must not be replaced"
    );
    assert!(server.get("/v1/connect/ca/roots").index() >= index_before);
    assert_eq!(
        server.config()["Config"]["LeafCertTTL"],
        json!("24h0m0s"),
        "a configuration change must survive a restart"
    );

    // A leaf issued after the restart chains to the roots published before it.
    let leaf = server.get_json("/v1/agent/connect/ca/leaf/web");
    common::verify_issued_chain(
        leaf["CertPEM"].as_str().unwrap(),
        &common::roots_bundle(&roots),
        None,
    );
}

#[test]
fn crash_right_after_a_change_keeps_it() {
    let mut server = Server::start(&[]);
    let (roots, cluster) = ca_identity(&server);
    // A 200 means the change is durable: SIGKILL gives the server no chance
    // to flush anything afterwards.
    assert_eq!(server.put_config(json!({"LeafCertTTL": "36h"})).status, 200);
    server.crash_and_restart();
    let (roots_after, cluster_after) = ca_identity(&server);
    assert_eq!(cluster_after, cluster);
    assert_eq!(roots_after["Roots"], roots["Roots"]);
    assert_eq!(server.config()["Config"]["LeafCertTTL"], json!("36h0m0s"));
}

#[test]
fn dev_mode_writes_nothing_to_disk() {
    let mut server = Server::start(&["--dev"]);
    assert!(
        server.wait_for_log("dev mode", Duration::from_secs(5)),
        "--dev must say that the store is in memory; logs:\n{}",
        server.logs()
    );
    let (_, cluster) = ca_identity(&server);
    assert_eq!(server.put_config(json!({"LeafCertTTL": "24h"})).status, 200);
    assert_eq!(server.get("/v1/agent/connect/ca/leaf/web").status, 200);

    // Neither the --data-dir nor the working directory (the server's cwd is
    // the temporary directory) received anything.
    assert!(
        !server.data_dir().exists(),
        "--dev created {}",
        server.data_dir().display()
    );
    let entries: Vec<_> = std::fs::read_dir(server.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(entries.is_empty(), "--dev wrote {entries:?}");

    // And nothing survives a restart: a new CA each time.
    server.restart();
    let (_, cluster_after) = ca_identity(&server);
    assert_ne!(cluster_after, cluster, "--dev must not persist the CA");
    assert_eq!(server.config()["Config"]["LeafCertTTL"], json!("72h0m0s"));
}

/// Regression: a data dir whose store was sealed with a key given by
/// `--store-key-file`, started without it, used to get a new `store.key`
/// written into it before the start failed. Now nothing is created.
#[test]
fn a_store_without_its_key_is_refused_before_anything_is_created() {
    let keys = tempfile::tempdir().expect("a temporary directory");
    let key_file = keys.path().join("store.key");
    let raw: Vec<u8> = (0u8..64)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    std::fs::write(&key_file, raw).expect("writing a raw store key");
    // Owner-only, as a key file must be (others' access is refused).
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod 600");
    let key_arg = key_file.to_str().expect("UTF-8 path").to_string();
    let mut server = Server::start(&["--store-key-file", &key_arg]);
    server.stop();
    let data = server.data_dir();
    let out = common::run_server_once(&data, &[], server.dir(), Duration::from_secs(20));
    assert!(!out.status.success(), "started without its key");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no store key"), "{stderr}");
    assert!(
        !data.join("store.key").exists(),
        "a new key was written into the data dir"
    );
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused_naming_the_first() {
    let server = Server::start(&[]);
    let data = server.data_dir();
    let out = common::run_server_once(&data, &[], server.dir(), Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second server started: {stderr}");
    let want = format!("is in use by another meshca process (pid {})", server.pid());
    assert!(stderr.contains(&want), "{stderr}");
    assert!(!stderr.contains("WouldBlock"), "{stderr}");
}

#[test]
fn a_data_dir_keeps_the_datacenter_its_leaves_name() {
    let mut server = Server::start(&["--datacenter", "east"]);
    let uri = server.get_json("/v1/agent/connect/ca/leaf/web")["ServiceURI"].clone();
    assert!(uri.as_str().expect("a URI").contains("/dc/east/"), "{uri}");
    server.stop();
    let refused = server.try_start_again_with(&["--datacenter", "west"]);
    assert!(refused.is_err(), "started as another datacenter");
    let logs = server.logs();
    assert!(
        logs.contains("holds the CA of datacenter \"east\"") && logs.contains("--datacenter east"),
        "{logs}"
    );
    server
        .try_start_again_with(&["--datacenter", "east"])
        .expect("the original datacenter starts");
    let uri = server.get_json("/v1/agent/connect/ca/leaf/web")["ServiceURI"].clone();
    assert!(uri.as_str().expect("a URI").contains("/dc/east/"), "{uri}");
}

#[test]
fn log_level_debug_shows_meshca_not_the_storage_engine_internals() {
    let mut server = Server::start_with_config(&json!({"log_level": "debug"}), &[]);
    assert_eq!(server.get("/v1/agent/connect/ca/leaf/web").status, 200);
    server.stop();
    let logs = server.logs();
    assert!(!logs.contains("sled::"), "sled's debug lines: {logs}");
    assert!(logs.contains("meshca listening"), "{logs}");
}

#[test]
fn startup_says_what_runs() {
    let server = Server::start(&["--datacenter", "east"]);
    // The line follows the listeners' start, which is what `start` waits
    // for: it may not be written yet.
    server.wait_for_log("meshca ready", Duration::from_secs(10));
    let logs = server.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("meshca ready"))
        .unwrap_or_else(|| panic!("no ready line:\n{logs}"));
    let td = server.trust_domain();
    for part in [
        server.data_dir().display().to_string(),
        "datacenter east (primary)".to_string(),
        "ACLs on".to_string(),
        "TLS off".to_string(),
        "encrypted at rest".to_string(),
        td,
    ] {
        assert!(line.contains(&part), "{part:?} missing from: {line}");
    }
}
