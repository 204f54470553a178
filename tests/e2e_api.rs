//! End-to-end: every read endpoint and the configuration endpoint of the
//! Connect CA API, against the real binary.

mod common;

use common::{
    active_root, cert_facts, csr_for_uri, openssl, pem_blocks, roots_bundle, service_uri,
    verify_issued_chain, Server,
};
use serde_json::{json, Value};
use time::OffsetDateTime;

fn rfc3339(v: &Value) -> OffsetDateTime {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("not RFC 3339 ({e}): {s}"))
}

/// The server's clock, from the `Date` header (`Sun, 22 Nov 2026 10:00:10 GMT`).
fn http_date(r: &common::Resp) -> OffsetDateTime {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let s = r.header("date").expect("a Date header");
    time::PrimitiveDateTime::parse(&s, &fmt)
        .unwrap_or_else(|e| panic!("bad Date {s:?}: {e}"))
        .assume_utc()
}

#[test]
fn roots_json_pem_and_agent_roots_agree() {
    let server = Server::start(&[]);
    let json_resp = server.get("/v1/connect/ca/roots");
    assert_eq!(json_resp.status, 200);
    let roots = json_resp.json();
    let root = active_root(&roots);
    let expected_pem = format!(
        "{}{}",
        root["RootCert"].as_str().unwrap(),
        root["IntermediateCerts"][0].as_str().unwrap()
    );

    for query in ["pem=true", "pem=1", "pem=t", "pem=TRUE"] {
        let pem = server.get(&format!("/v1/connect/ca/roots?{query}"));
        assert_eq!(pem.status, 200, "{query}: {pem:?}");
        assert_eq!(
            pem.header("content-type").as_deref(),
            Some("application/pem-certificate-chain"),
            "{query}"
        );
        assert_eq!(pem.index(), json_resp.index());
        // The root, then its intermediate.
        assert_eq!(pem.body, expected_pem, "{query}");
        let blocks = pem_blocks(&pem.body);
        assert_eq!(blocks.len(), 2);
        assert_eq!(cert_facts(&blocks[0]).ca, Some(true));
        assert_eq!(
            cert_facts(&blocks[1]).issuer_cn,
            cert_facts(&blocks[0]).subject_cn
        );
    }
    for query in ["pem=false", "pem=0", "pem=F"] {
        let r = server.get(&format!("/v1/connect/ca/roots?{query}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), roots, "{query}");
    }

    let agent = server.get("/v1/agent/connect/ca/roots");
    assert_eq!(agent.status, 200);
    assert_eq!(agent.index(), json_resp.index());
    assert_eq!(agent.json(), roots);
    let agent_pem = server.get("/v1/agent/connect/ca/roots?pem=true");
    assert_eq!(agent_pem.body, expected_pem);
}

#[test]
fn configuration_shows_the_defaults_and_no_secrets() {
    let server = Server::start(&[]);
    let r = server.get("/v1/connect/ca/configuration");
    assert_eq!(r.status, 200);
    assert!(r.index() > 0);
    let cfg = r.json();
    assert_eq!(cfg["Provider"], json!("consul"));
    let c = &cfg["Config"];
    assert_eq!(c["LeafCertTTL"], json!("72h0m0s"));
    assert_eq!(c["IntermediateCertTTL"], json!("8760h0m0s"));
    assert_eq!(c["RootCertTTL"], json!("87600h0m0s"));
    assert_eq!(c["PrivateKeyType"], json!("ec"));
    assert_eq!(c["PrivateKeyBits"], json!(256));
    assert_eq!(c["CSRMaxPerSecond"].as_f64(), Some(50.0));
    assert_eq!(c["CSRMaxConcurrent"], json!(0));
    assert!(
        c.get("PrivateKey").is_none_or(|k| k == "hidden"),
        "the CA private key must never be returned: {c}"
    );
    assert!(!r.body.contains("PRIVATE KEY"), "{}", r.body);
    let cluster = cfg["ClusterID"].as_str().unwrap();
    assert_eq!(
        server.roots()["TrustDomain"].as_str().unwrap(),
        format!("{cluster}.consul")
    );
}

#[test]
fn ttl_change_applies_to_new_leaves_and_keeps_the_roots() {
    let server = Server::start(&[]);
    let roots_before = server.get("/v1/connect/ca/roots");
    let cfg_before = server.config();
    let td = server.trust_domain();

    let r = server.put_config(json!({"LeafCertTTL": "24h"}));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.is_empty(), "PUT answers with an empty body: {r:?}");

    let cfg = server.config();
    assert_eq!(cfg["Config"]["LeafCertTTL"], json!("24h0m0s"));
    assert_eq!(cfg["ClusterID"], cfg_before["ClusterID"]);
    assert!(cfg["ModifyIndex"].as_u64() > cfg_before["ModifyIndex"].as_u64());

    // The roots are the same; only the index moved.
    let roots_after = server.get("/v1/connect/ca/roots");
    assert!(roots_after.index() > roots_before.index());
    assert_eq!(roots_after.json()["Roots"], roots_before.json()["Roots"]);

    // New leaves, signed or server-generated, live 24h.
    for issued in [
        {
            let r = server.sign(&csr_for_uri(&service_uri(&td, "dc1", "db")));
            assert_eq!(r.status, 200, "{r:?}");
            r
        },
        server.get("/v1/agent/connect/ca/leaf/api"),
    ] {
        let leaf = issued.json();
        let after = rfc3339(&leaf["ValidAfter"]);
        let before = rfc3339(&leaf["ValidBefore"]);
        assert_eq!(before - after, time::Duration::hours(24), "{leaf}");
        let facts = cert_facts(leaf["CertPEM"].as_str().unwrap());
        assert_eq!(facts.not_after - facts.not_before, 24 * 3600);
        assert_eq!(facts.not_before, after.unix_timestamp());
        assert_eq!(facts.not_after, before.unix_timestamp());
        // NotBefore is backdated one minute for clock skew.
        let skew = http_date(&issued) - after;
        assert!(
            (time::Duration::seconds(55)..=time::Duration::seconds(65)).contains(&skew),
            "NotBefore should be the server's now - 1 min, got now - {skew}"
        );
    }
}

/// The CA's background upkeep runs at start and after every change. It must
/// not make an operator's configuration change fail with 409 `CA is already
/// in state "RENEWING"` when it has nothing to do.
#[test]
fn back_to_back_configuration_changes_are_not_refused_as_busy() {
    for key in [
        json!({"PrivateKeyType": "ec", "PrivateKeyBits": 256}),
        json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}),
    ] {
        let server = Server::start_with_config(&json!({"connect": {"ca_config": key}}), &[]);
        let mut refused = Vec::new();
        for i in 0..20 {
            let mut config = key.clone();
            config["LeafCertTTL"] = json!(format!("{}h", 24 + i % 2));
            let r = server.put_config(config);
            if r.status != 200 {
                refused.push(format!("PUT #{i}: {} {:?}", r.status, r.body));
            }
        }
        assert!(
            refused.is_empty(),
            "{key}: {} of 20 changes refused:\n{}",
            refused.len(),
            refused.join("\n")
        );
    }
}

#[test]
fn invalid_configuration_is_refused_naming_the_field() {
    let server = Server::start(&[]);
    let before = server.get("/v1/connect/ca/configuration");
    let cases = [
        (json!({"LeafCertTTL": "soon"}), "LeafCertTTL"),
        (json!({"LeafCertTTL": "30m"}), "LeafCertTTL"),
        (json!({"LeafCertTTL": 72}), "LeafCertTTL"),
        (
            json!({"LeafCertTTL": "72h", "IntermediateCertTTL": "100h"}),
            "IntermediateCertTTL",
        ),
        (json!({"RootCertTTL": "1000h"}), "RootCertTTL"),
        (json!({"PrivateKeyType": "dsa"}), "PrivateKeyType"),
        (json!({"PrivateKeyBits": 521}), "PrivateKeyBits"),
        (json!({"CSRMaxPerSecond": -1}), "CSRMaxPerSecond"),
        (json!({"CSRMaxConcurrent": 1.5}), "CSRMaxConcurrent"),
        (json!({"LeafTTL": "24h"}), "LeafTTL"),
        (
            json!({"PrivateKey": "-----BEGIN EC PRIVATE KEY-----"}),
            "RootCert",
        ),
    ];
    for (config, field) in cases {
        let r = server.put_config(config.clone());
        r.assert_error(400);
        assert!(
            r.body.contains(field),
            "{config}: the error must name {field}: {:?}",
            r.body
        );
    }
    // An unknown provider, and (regression) a missing or empty one, which
    // used to be taken as the built-in provider.
    for body in [
        json!({"Provider": "aws-pca", "Config": {}}),
        json!({"Provider": "", "Config": {"LeafCertTTL": "24h"}}),
        json!({"Config": {"LeafCertTTL": "24h"}}),
    ] {
        let r = server.put("/v1/connect/ca/configuration", body.to_string());
        r.assert_error(400);
        assert!(r.body.contains("Provider"), "{body}: {r:?}");
    }

    let after = server.get("/v1/connect/ca/configuration");
    assert_eq!(
        after.index(),
        before.index(),
        "a refused PUT changed the index"
    );
    assert_eq!(after.json(), before.json());
}

#[test]
fn provider_state_is_read_only() {
    let server = Server::start(&[]);
    let before = server.get("/v1/connect/ca/configuration");
    let r = server.put(
        "/v1/connect/ca/configuration",
        json!({"Provider": "consul", "Config": {"LeafCertTTL": "24h"}, "State": {"private_key": "x"}})
            .to_string(),
    );
    r.assert_error(400);
    assert_eq!(
        r.body,
        "Provider State is read-only. It must be omitted or identical to the current value"
    );
    let after = server.get("/v1/connect/ca/configuration");
    assert_eq!(after.index(), before.index());
    assert_eq!(after.json()["Config"]["LeafCertTTL"], json!("72h0m0s"));

    // Omitted or null State is fine.
    let r = server.put(
        "/v1/connect/ca/configuration",
        json!({"Provider": "consul", "Config": {"LeafCertTTL": "24h"}, "State": null}).to_string(),
    );
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn identical_put_is_a_no_op() {
    let server = Server::start(&[]);
    let before = server.get("/v1/connect/ca/configuration");
    let roots_index = server.get("/v1/connect/ca/roots").index();
    // What a Consul client does: GET, then PUT the same document back.
    let r = server.put("/v1/connect/ca/configuration", before.body.clone());
    assert_eq!(r.status, 200, "{r:?}");
    // The defaults written out are the same config too.
    let r = server.put_config(json!({"LeafCertTTL": "72h", "PrivateKeyType": "ec"}));
    assert_eq!(r.status, 200, "{r:?}");
    // A body without a Provider is not a no-op but a 400 (and changes nothing).
    server
        .put("/v1/connect/ca/configuration", "{}")
        .assert_error(400);

    let after = server.get("/v1/connect/ca/configuration");
    assert_eq!(after.index(), before.index(), "a no-op PUT moved the index");
    assert_eq!(after.json(), before.json());
    assert_eq!(server.get("/v1/connect/ca/roots").index(), roots_index);
}

#[test]
fn malformed_json_is_a_decode_error() {
    let server = Server::start(&[]);
    for body in [
        "{not json",
        "",
        r#"{"Provider": "consul", "Config": "LeafCertTTL=24h"}"#,
        r#"{"Provider": 7}"#,
    ] {
        let r = server.put("/v1/connect/ca/configuration", body);
        r.assert_error(400);
        assert!(
            r.body.starts_with("Request decode failed:"),
            "{body:?}: {:?}",
            r.body
        );
        assert_eq!(r.code(), "decode_failed");
    }
    for body in ["{not json", r#"{"CSR": 5}"#, "{}"] {
        let r = server.post("/v1/connect/ca/sign", body);
        r.assert_error(400);
        assert!(
            r.body.starts_with("Request decode failed:"),
            "{body:?}: {r:?}"
        );
    }
}

/// Consul decodes request bodies into Go structs, which refuses a JSON
/// array; serde's derived `Deserialize` would accept the fields
/// positionally (`["consul", {"LeafCertTTL": "24h"}]` applies a config).
#[test]
fn json_arrays_are_not_request_bodies() {
    let server = Server::start(&[]);
    let before = server.get("/v1/connect/ca/configuration");
    for body in ["[]", r#"["consul", {"LeafCertTTL": "24h"}]"#] {
        let r = server.put("/v1/connect/ca/configuration", body);
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "decode_failed"),
            "{body}: {r:?}"
        );
        assert!(
            r.body.starts_with("Request decode failed:"),
            "{body}: {r:?}"
        );
    }
    let after = server.get("/v1/connect/ca/configuration");
    assert_eq!(
        after.index(),
        before.index(),
        "a JSON array changed the configuration"
    );
    let td = server.trust_domain();
    let csr = csr_for_uri(&service_uri(&td, "dc1", "web"));
    let r = server.post("/v1/connect/ca/sign", json!([csr]).to_string());
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "decode_failed"),
        "{r:?}"
    );
}

/// The public key of a certificate and of a private key, as openssl prints
/// them (PEM SubjectPublicKeyInfo).
fn public_keys(cert_pem: &str, key_pem: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    std::fs::write(dir.path().join("c.pem"), cert_pem).expect("writing a PEM file");
    std::fs::write(dir.path().join("k.pem"), key_pem).expect("writing a PEM file");
    let (ok, cert_key) = openssl(dir.path(), &["x509", "-in", "c.pem", "-noout", "-pubkey"]);
    assert!(ok, "{cert_key}");
    let (ok, key) = openssl(dir.path(), &["pkey", "-in", "k.pem", "-pubout"]);
    assert!(ok, "{key}");
    (cert_key, key)
}

#[test]
fn leaf_endpoint_issues_a_cached_certificate_with_its_key() {
    let server = Server::start(&[]);
    let roots = server.roots();
    let td = roots["TrustDomain"].as_str().unwrap().to_string();
    let r = server.get("/v1/agent/connect/ca/leaf/web");
    assert_eq!(r.status, 200, "{r:?}");
    let leaf = r.json();
    assert_eq!(r.index(), leaf["ModifyIndex"].as_u64().unwrap());
    assert_eq!(leaf["Service"], json!("web"));
    assert_eq!(
        leaf["ServiceURI"].as_str().unwrap(),
        service_uri(&td, "dc1", "web")
    );
    let cert_pem = leaf["CertPEM"].as_str().unwrap();
    let key_pem = leaf["PrivateKeyPEM"].as_str().expect("PrivateKeyPEM");
    assert!(key_pem.contains("PRIVATE KEY-----"), "{key_pem}");
    let facts = cert_facts(cert_pem);
    assert_eq!(facts.uris, vec![service_uri(&td, "dc1", "web")]);
    assert_eq!(leaf["SerialNumber"].as_str().unwrap(), facts.serial);
    assert!(facts.key_is_ec && facts.key_bits == 256, "{facts:?}");
    let (cert_key, key) = public_keys(cert_pem, key_pem);
    assert_eq!(
        cert_key, key,
        "PrivateKeyPEM does not match the certificate"
    );
    // CertPEM = leaf + the active root's intermediate.
    let blocks = pem_blocks(cert_pem);
    assert_eq!(
        blocks[1..].concat(),
        active_root(&roots)["IntermediateCerts"][0]
            .as_str()
            .unwrap()
    );
    verify_issued_chain(cert_pem, &roots_bundle(&roots), None);

    // Cached: the same certificate (and key) again.
    let again = server.get_json("/v1/agent/connect/ca/leaf/web");
    assert_eq!(again["SerialNumber"], leaf["SerialNumber"]);
    assert_eq!(again["CertPEM"], leaf["CertPEM"]);
    assert_eq!(again["PrivateKeyPEM"], leaf["PrivateKeyPEM"]);

    // Another service gets its own certificate and key.
    let other = server.get_json("/v1/agent/connect/ca/leaf/api");
    assert_ne!(other["SerialNumber"], leaf["SerialNumber"]);
    assert_ne!(other["PrivateKeyPEM"], leaf["PrivateKeyPEM"]);
    assert_eq!(other["Service"], json!("api"));

    // A service name that cannot be a SPIFFE path segment is refused.
    for bad in ["Web", "a%20b", "x%2Fy"] {
        let r = server.get(&format!("/v1/agent/connect/ca/leaf/{bad}"));
        r.assert_error(400);
    }
}

#[test]
fn leader_and_health() {
    let server = Server::start(&[]);
    let roots = server.roots();
    let r = server.get("/v1/status/leader");
    assert_eq!(r.status, 200);
    r.index();
    // A server alone on its store leads itself: its own API address.
    let leader = r.json();
    let me = server.url("");
    assert_eq!(
        Some(me.trim_start_matches("http://").trim_end_matches('/')),
        leader.as_str(),
        "leader must be this server's host:port"
    );
    let r = server.get("/v1/health");
    assert_eq!(r.status, 200);
    r.index();
    let health = r.json();
    assert_eq!(health["Status"], json!("ok"));
    assert_eq!(health["ActiveRootID"], roots["ActiveRootID"]);
}
