//! End-to-end: secondary datacenters. A primary (dc1) and secondaries (dc2,
//! dc3) run as separate `meshca` processes on 127.0.0.1, each with its own
//! data dir and ACLs on; the secondaries reach the primary with a
//! replication token that has `operator:write` there. Every leaf verifies
//! against the primary's roots with openssl -x509_strict and Python, and
//! leaves of different datacenters complete real mutual-TLS handshakes.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod common;
#[path = "common/openbao.rs"]
mod openbao;

use common::{
    active_root, cert_facts, colon_hex, pem_blocks, roots_bundle, verify_chain_against, wait_until,
    Server,
};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const DC1: &str = "dc1";

/// A loopback port nothing listens on now (for a primary that must come
/// back on the same address after a stop).
fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port().to_string()
}

/// A primary datacenter with ACLs on (its bootstrap token in use).
fn primary(args: &[&str]) -> Server {
    let mut all = vec!["--datacenter", DC1];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// A token of the primary whose policy grants `operator = "write"`: what a
/// secondary needs to have its intermediate signed.
fn replication_token(primary: &Server, name: &str, rules: &str) -> String {
    let p = primary.put(
        "/v1/acl/policy",
        json!({"Name": name, "Rules": rules}).to_string(),
    );
    assert_eq!(p.status, 200, "{p:?}");
    let t = primary.put(
        "/v1/acl/token",
        json!({"Policies": [{"Name": name}]}).to_string(),
    );
    assert_eq!(t.status, 200, "{t:?}");
    t.json()["SecretID"].as_str().unwrap().to_string()
}

fn secondary_config(dc: &str, primary_base: &str, token: &str) -> Value {
    json!({
        "datacenter": dc,
        "primary_datacenter": DC1,
        "primary_addresses": [primary_base],
        "acl": {"tokens": {"replication": token}},
    })
}

fn secondary(dc: &str, primary: &Server, token: &str) -> Server {
    Server::start_with_config(&secondary_config(dc, &primary.base, token), &[])
}

/// A leaf for `service` from the agent endpoint: (CertPEM with its chain,
/// PrivateKeyPEM).
fn leaf(server: &Server, service: &str) -> (String, String) {
    let r = server.get(&format!("/v1/agent/connect/ca/leaf/{service}"));
    assert_eq!(r.status, 200, "{r:?}\nlogs:\n{}", server.logs());
    let j = r.json();
    (
        j["CertPEM"].as_str().unwrap().to_string(),
        j["PrivateKeyPEM"].as_str().unwrap().to_string(),
    )
}

fn uri_of(cert_pem: &str) -> String {
    cert_facts(&pem_blocks(cert_pem)[0]).uris[0].clone()
}

/// A mutual-TLS handshake between two leaves, each side verifying the
/// other against `roots_pem` alone (tests/mtls_handshake.py, on OpenSSL).
fn mtls(server_leaf: &(String, String), client_leaf: &(String, String), roots_pem: &str) {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let args = [
        write("server.pem", &server_leaf.0),
        write("server.key", &server_leaf.1),
        write("client.pem", &client_leaf.0),
        write("client.key", &client_leaf.1),
        write("roots.pem", roots_pem),
    ];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/mtls_handshake.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(&args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mTLS {} <- {}: {stdout}{}",
        uri_of(&server_leaf.0),
        uri_of(&client_leaf.0),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["server_saw"], json!([uri_of(&client_leaf.0)]));
    assert_eq!(seen["client_saw"], json!([uri_of(&server_leaf.0)]));
}

fn active_id(server: &Server) -> String {
    server.roots()["ActiveRootID"].as_str().unwrap().to_string()
}

fn root_ids(roots: &Value) -> Vec<String> {
    roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ID"].as_str().unwrap().to_string())
        .collect()
}

/// The secondary's roots are the primary's, with its own intermediate last
/// in the active root's chain, named by SigningKeyID.
fn assert_follows(secondary: &Server, primary: &Server, dc: &str) {
    let (ours, theirs) = (secondary.roots(), primary.roots());
    assert_eq!(ours["TrustDomain"], theirs["TrustDomain"], "{dc}");
    assert_eq!(ours["ActiveRootID"], theirs["ActiveRootID"], "{dc}");
    assert_eq!(root_ids(&ours), root_ids(&theirs), "{dc}");
    let (a, b) = (active_root(&ours), active_root(&theirs));
    let chain: Vec<&Value> = a["IntermediateCerts"].as_array().unwrap().iter().collect();
    let primary_chain: Vec<&Value> = b["IntermediateCerts"].as_array().unwrap().iter().collect();
    assert_eq!(chain.len(), primary_chain.len() + 1, "{dc}: {a}");
    assert_eq!(chain[..primary_chain.len()], primary_chain[..], "{dc}");
    let own = cert_facts(chain.last().unwrap().as_str().unwrap());
    assert_eq!(
        a["SigningKeyID"].as_str().unwrap(),
        colon_hex(&own.subject_key_id.clone().unwrap()),
        "{dc}"
    );
    assert_eq!(
        own.uris,
        vec![format!(
            "spiffe://{}",
            ours["TrustDomain"].as_str().unwrap()
        )]
    );
    assert_ne!(a["SigningKeyID"], b["SigningKeyID"], "{dc} has its own key");
}

/// dc1 (the primary) and its secondaries dc2 and dc3.
fn three_datacenters() -> (Server, Server, Server) {
    let dc1 = primary(&[]);
    let token = replication_token(&dc1, "replication", r#"operator = "write""#);
    let dc2 = secondary("dc2", &dc1, &token);
    let dc3 = secondary("dc3", &dc1, &token);
    (dc1, dc2, dc3)
}

#[test]
fn three_datacenters_issue_leaves_that_trust_each_other() {
    let (dc1, dc2, dc3) = three_datacenters();
    assert_follows(&dc2, &dc1, "dc2");
    assert_follows(&dc3, &dc1, "dc3");

    let bundle = roots_bundle(&dc1.roots());
    let td = dc1.trust_domain();
    let leaves: Vec<(String, String)> = [(&dc1, "dc1"), (&dc2, "dc2"), (&dc3, "dc3")]
        .iter()
        .map(|(server, dc)| {
            let l = leaf(server, "web");
            assert_eq!(uri_of(&l.0), common::service_uri(&td, dc, "web"));
            verify_chain_against(&l.0, &bundle, &format!("{dc} leaf"));
            l
        })
        .collect();
    // Every pair of datacenters, both directions across dc2 and dc3.
    mtls(&leaves[1], &leaves[2], &bundle);
    mtls(&leaves[2], &leaves[1], &bundle);
    mtls(&leaves[1], &leaves[0], &bundle);
    mtls(&leaves[0], &leaves[2], &bundle);

    // Only the primary signs intermediates.
    let csr = common::csr_for_uri(&format!("spiffe://{td}"));
    let r = dc2.post(
        "/v1/connect/ca/sign-intermediate",
        json!({"CSR": csr}).to_string(),
    );
    r.assert_error(400);
    assert_eq!(r.body.trim(), "not the primary datacenter");
    assert_eq!(r.code(), "not_primary");

    let health = dc2.get_json("/v1/health");
    assert_eq!(health["Status"], "ok", "{health}");
    assert_eq!(health["Primary"]["Datacenter"], DC1, "{health}");
    assert_eq!(health["Primary"]["Error"], Value::Null, "{health}");
}

#[test]
fn a_primary_rotation_reaches_every_secondary_with_the_cross_signed_chain() {
    let (dc1, dc2, dc3) = three_datacenters();
    let old_root = active_root(&dc1.roots())["RootCert"]
        .as_str()
        .unwrap()
        .to_string();
    let old_id = active_id(&dc1);
    let before = dc2.get("/v1/agent/connect/ca/leaf/api");
    assert_eq!(before.status, 200);

    // A blocked leaf query in dc2 wakes when dc2 follows the rotation.
    let http = dc2.http();
    let url = dc2.url(&format!(
        "/v1/agent/connect/ca/leaf/api?index={}&wait=60s",
        before.index()
    ));
    let blocked = std::thread::spawn(move || http.send(reqwest::Method::GET, &url, None));

    let start = Instant::now();
    let r = dc1.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(r.status, 200, "{r:?}");
    let new_id = active_id(&dc1);
    assert_ne!(new_id, old_id);
    let secondaries = [(&dc2, "dc2"), (&dc3, "dc3")];
    // When each secondary first serves the new root (they are polled in
    // turn, every 20 ms).
    let mut seen: [Option<Duration>; 2] = [None; 2];
    wait_until(Duration::from_secs(30), || {
        for (i, (server, _)) in secondaries.iter().enumerate() {
            if seen[i].is_none() && active_id(server) == new_id {
                seen[i] = Some(start.elapsed());
            }
        }
        seen.iter().all(Option::is_some)
    });
    for ((server, dc), seen) in secondaries.into_iter().zip(seen) {
        let seen = seen.unwrap_or_else(|| panic!("{dc} did not follow; logs:\n{}", server.logs()));
        eprintln!(
            "propagation: {dc} serves the new root {} ms after the primary's rotation returned",
            seen.as_millis()
        );
        assert_follows(server, &dc1, dc);
        let l = leaf(server, "after-rotation");
        verify_chain_against(
            &l.0,
            &roots_bundle(&dc1.roots()),
            &format!("{dc}: new bundle"),
        );
        // A peer that still trusts only the old root accepts the new leaf
        // through the cross-signed certificate in its chain.
        verify_chain_against(&l.0, &old_root, &format!("{dc}: old root only"));
    }
    let woke = blocked.join().unwrap();
    assert_eq!(woke.status, 200);
    assert!(woke.index() > before.index(), "the blocked leaf query woke");
    let renewed = woke.json()["CertPEM"].as_str().unwrap().to_string();
    let own_intermediate = pem_blocks(&renewed).pop().unwrap();
    assert_eq!(
        cert_facts(&own_intermediate).authority_key_id,
        cert_facts(active_root(&dc1.roots())["RootCert"].as_str().unwrap()).subject_key_id,
        "the woken leaf is signed under the new root"
    );
}

#[test]
fn secondaries_keep_signing_while_the_primary_is_stopped() {
    let port = free_port();
    let mut dc1 = primary(&["--http-port", &port]);
    let token = replication_token(&dc1, "replication", r#"operator = "write""#);
    let mut dc2 = secondary("dc2", &dc1, &token);
    let bundle = roots_bundle(&dc1.roots());
    let signing = active_root(&dc2.roots())["SigningKeyID"].clone();

    dc1.stop();
    let l = leaf(&dc2, "while-primary-down");
    verify_chain_against(&l.0, &bundle, "dc2 leaf with the primary stopped");
    let degraded = wait_until(Duration::from_secs(20), || {
        dc2.get_json("/v1/health")["Primary"]["Error"].is_string()
    });
    let health = dc2.get_json("/v1/health");
    assert!(degraded, "{health}\nlogs:\n{}", dc2.logs());
    assert_eq!(health["Status"], "degraded");
    assert!(
        health["Primary"]["Failures"].as_u64().unwrap() >= 1,
        "{health}"
    );
    assert!(dc2
        .logs()
        .contains("could not follow its primary datacenter"));
    let metrics = dc2.get("/v1/agent/metrics?format=prometheus").body;
    assert!(
        metrics.contains("\nmeshca_primary_link_up 0\n"),
        "{metrics}"
    );

    // Restarted while the primary is still down: the stored intermediate.
    dc2.restart();
    assert_eq!(active_root(&dc2.roots())["SigningKeyID"], signing);
    let l = leaf(&dc2, "after-restart");
    verify_chain_against(
        &l.0,
        &bundle,
        "dc2 leaf after a restart without its primary",
    );

    // The primary comes back on the same address: the secondary recovers,
    // and follows a rotation again.
    dc1.start_again();
    let recovered = wait_until(Duration::from_secs(45), || {
        dc2.get_json("/v1/health")["Status"] == "ok"
    });
    assert!(
        recovered,
        "{}\nlogs:\n{}",
        dc2.get_json("/v1/health"),
        dc2.logs()
    );
    let r = dc1.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(r.status, 200, "{r:?}");
    let new_id = active_id(&dc1);
    assert!(wait_until(Duration::from_secs(30), || active_id(&dc2) == new_id));
    assert_follows(&dc2, &dc1, "dc2");
}

#[test]
fn a_secondary_changes_only_its_own_key_settings() {
    let dc1 = primary(&[]);
    let token = replication_token(&dc1, "replication", r#"operator = "write""#);
    let dc2 = secondary("dc2", &dc1, &token);
    let primary_config = dc1.config();
    let before = dc2.roots();

    let r = dc2.put_config(json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}));
    assert_eq!(r.status, 200, "{r:?}\nlogs:\n{}", dc2.logs());
    let after = dc2.roots();
    assert_eq!(root_ids(&after), root_ids(&before), "no root of its own");
    assert_ne!(
        active_root(&after)["SigningKeyID"],
        active_root(&before)["SigningKeyID"]
    );
    assert_follows(&dc2, &dc1, "dc2");
    let own = active_root(&after)["IntermediateCerts"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let own = cert_facts(&own);
    assert!(
        !own.key_is_ec && own.key_bits == 2048,
        "dc2's key type: {own:?}"
    );
    assert_eq!(dc2.config()["Config"]["PrivateKeyType"], "rsa");
    assert_eq!(
        dc1.config(),
        primary_config,
        "the primary's configuration is its own"
    );
    let l = leaf(&dc2, "web");
    verify_chain_against(
        &l.0,
        &roots_bundle(&dc1.roots()),
        "dc2 leaf under an RSA intermediate",
    );

    // What a secondary cannot change: the root.
    let root = active_root(&dc1.roots())["RootCert"].clone();
    let r = dc2.put_config(json!({"RootCert": root, "PrivateKey": "x"}));
    r.assert_error(400);
    let r = dc2.put(
        "/v1/connect/ca/configuration",
        json!({"Provider": "consul", "Config": {"LeafCertTTL": "24h"},
               "ForceWithoutCrossSigning": true})
        .to_string(),
    );
    r.assert_error(400);
    assert!(r.body.contains("ForceWithoutCrossSigning"), "{r:?}");
    assert_eq!(root_ids(&dc2.roots()), root_ids(&before));
}

#[test]
fn a_secondary_the_primary_refuses_does_not_start_and_says_why() {
    let dc1 = primary(&[]);
    let weak = replication_token(&dc1, "read-only", r#"operator = "read""#);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        secondary_config("dc2", &dc1.base, &weak).to_string(),
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = common::run_server_once(
        &data,
        &["--config-file", config.to_str().unwrap()],
        dir.path(),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the primary datacenter refused"),
        "{stderr}"
    );
    assert!(stderr.contains("403"), "{stderr}");
    assert!(!stderr.contains(&weak), "the token never reaches the log");

    // A primary's data dir cannot become a secondary's (same datacenter
    // name, now following a primary "dc0").
    let mut old_primary = primary(&[]);
    old_primary.stop();
    let base = dc1.base.clone();
    let args = [
        "--datacenter",
        DC1,
        "--primary-datacenter",
        "dc0",
        "--primary-address",
        &base,
    ];
    assert!(old_primary.try_start_again_with(&args).is_err());
    let logs = old_primary.logs();
    assert!(
        logs.contains("holds the CA of a primary datacenter")
            && logs.contains("use another data dir"),
        "{logs}"
    );
}

#[test]
fn a_vault_primary_signs_a_built_in_secondary() {
    let bao = openbao::OpenBao::start();
    let dc1 = Server::start_with_config(
        &json!({"datacenter": DC1, "connect": {"ca_provider": "vault",
                "ca_config": bao.ca_config("dc1-root", "dc1-int")}}),
        &[],
    );
    let token = replication_token(&dc1, "replication", r#"operator = "write""#);
    let dc2 = secondary("dc2", &dc1, &token);
    assert_follows(&dc2, &dc1, "dc2");
    let bundle = roots_bundle(&dc1.roots());
    let (l1, l2) = (leaf(&dc1, "web"), leaf(&dc2, "web"));
    verify_chain_against(&l2.0, &bundle, "dc2 leaf under a Vault root");
    mtls(&l2, &l1, &bundle);
    mtls(&l1, &l2, &bundle);
}

#[test]
fn a_secondary_reaches_an_https_primary_with_its_client_certificate() {
    use common::tls::{agent_ca, agent_cert, https_addr};
    let certs = tempfile::tempdir().unwrap();
    let (ca, _) = agent_ca(certs.path());
    let (server_cert, server_key) = agent_cert(certs.path(), "--server", &[]);
    let (client_cert, client_key) = agent_cert(certs.path(), "--client", &[]);
    let p = |path: &Path| path.to_str().unwrap().to_string();
    // The primary asks every HTTPS client for a certificate of its CA.
    let dc1 = Server::start_with_config(
        &json!({"datacenter": DC1, "tls": {"defaults": {
            "ca_file": p(&ca), "cert_file": p(&server_cert), "key_file": p(&server_key),
            "verify_incoming": true}}}),
        &["--https-port", "0"],
    );
    let token = replication_token(&dc1, "replication", r#"operator = "write""#);
    let mut config = secondary_config("dc2", &format!("https://{}", https_addr(&dc1)), &token);
    config["tls"] = json!({"defaults": {
        "ca_file": p(&ca), "cert_file": p(&client_cert), "key_file": p(&client_key)}});
    let dc2 = Server::start_with_config(&config, &[]);
    assert_follows(&dc2, &dc1, "dc2 over mutual TLS");
    let l = leaf(&dc2, "web");
    verify_chain_against(&l.0, &roots_bundle(&dc1.roots()), "dc2 leaf");
}
