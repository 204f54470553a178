//! End-to-end: for every CA key type meshca supports, a fresh server issues
//! leaves (server-generated and CSR-signed) whose chains verify with
//! `openssl verify -x509_strict` (client and server purposes) and with
//! pyca/cryptography, and whose certificates follow the certificate profiles.

mod common;

use common::{
    active_root, cert_facts, csr_for_uri, is_root_cn, openssl_verify, pem_blocks, python_verify,
    roots_bundle, service_uri, verify_issued_chain, CertFacts, Server,
};
use serde_json::{json, Value};

/// The leaf profile, for a leaf whose only SAN is `uri`.
fn check_leaf(facts: &CertFacts, uri: &str, ttl_hours: i64) {
    assert!(facts.subject_is_empty, "subject must be empty: {facts:?}");
    assert_eq!(facts.san_critical, Some(true), "SAN must be critical");
    assert_eq!(facts.uris, vec![uri.to_string()], "exactly one URI SAN");
    assert!(facts.dns.is_empty() && facts.emails.is_empty() && facts.other_san_count == 0);
    assert_eq!(facts.ca, Some(false));
    assert!(facts.digital_signature && !facts.key_cert_sign);
    assert_eq!(
        facts.eku,
        Some(vec!["serverAuth".to_string(), "clientAuth".to_string()])
    );
    assert_eq!(
        facts.not_after - facts.not_before,
        ttl_hours * 3600,
        "NotAfter - NotBefore must be LeafCertTTL"
    );
}

fn check_key_type(key_type: &str, bits: u32, leaf_ttl_hours: i64) {
    let server = Server::start_with_config(
        &json!({"connect": {"ca_config": {
            "PrivateKeyType": key_type,
            "PrivateKeyBits": bits,
            "LeafCertTTL": format!("{leaf_ttl_hours}h"),
        }}}),
        &[],
    );
    let cfg = server.config();
    assert_eq!(cfg["Config"]["PrivateKeyType"], json!(key_type));
    assert_eq!(cfg["Config"]["PrivateKeyBits"], json!(bits));
    let cluster = cfg["ClusterID"]
        .as_str()
        .expect("the response field is a string")
        .to_string();

    let roots = server.roots();
    let root: &Value = active_root(&roots);
    assert_eq!(root["PrivateKeyType"], json!(key_type));
    assert_eq!(root["PrivateKeyBits"], json!(bits));
    let root_facts = cert_facts(
        root["RootCert"]
            .as_str()
            .expect("the response field is a string"),
    );
    let inter_facts = cert_facts(
        root["IntermediateCerts"][0]
            .as_str()
            .expect("the response field is a string"),
    );
    for (what, f) in [("root", &root_facts), ("intermediate", &inter_facts)] {
        assert_eq!(
            (f.key_is_ec, f.key_bits),
            (key_type == "ec", bits as usize),
            "{what} key"
        );
        assert_eq!(f.ca, Some(true), "{what}");
    }
    let cn = root_facts.subject_cn.clone().expect("the root has a CN");
    assert!(is_root_cn(&cn, &cluster), "root CN {cn:?}");
    let bundle = roots_bundle(&roots);
    let td = roots["TrustDomain"]
        .as_str()
        .expect("the response field is a string");

    // A server-generated leaf (agent endpoint).
    let leaf = server.get_json("/v1/agent/connect/ca/leaf/web");
    let cert_pem = leaf["CertPEM"]
        .as_str()
        .expect("the response field is a string");
    assert_eq!(
        pem_blocks(cert_pem).len(),
        2,
        "CertPEM = leaf + intermediate"
    );
    verify_issued_chain(cert_pem, &bundle, None);
    let facts = cert_facts(cert_pem);
    check_leaf(&facts, &service_uri(td, "dc1", "web"), leaf_ttl_hours);
    assert_eq!((facts.key_is_ec, facts.key_bits), (true, 256), "leaf key");
    assert!(!facts.key_encipherment, "an EC leaf key cannot encipher");
    assert_eq!(facts.authority_key_id, inter_facts.subject_key_id);

    // A CSR-signed leaf.
    let uri = service_uri(td, "dc1", "api");
    let r = server.sign(&csr_for_uri(&uri));
    assert_eq!(r.status, 200, "{r:?}");
    let cert_pem = r.json()["CertPEM"]
        .as_str()
        .expect("the response field is a string")
        .to_string();
    verify_issued_chain(&cert_pem, &bundle, None);
    let facts = cert_facts(&cert_pem);
    check_leaf(&facts, &uri, leaf_ttl_hours);
    assert_eq!(facts.authority_key_id, inter_facts.subject_key_id);
}

/// The two verifiers are not vacuous: a chain from another CA, or a leaf
/// without its intermediate, is refused by both.
#[test]
fn verifiers_refuse_a_foreign_root_and_a_missing_intermediate() {
    let (a, b) = (Server::start(&[]), Server::start(&[]));
    let leaf = a.get_json("/v1/agent/connect/ca/leaf/web");
    let blocks = pem_blocks(leaf["CertPEM"].as_str().expect("CertPEM is a string"));
    let inters = blocks[1..].concat();
    let (own, foreign) = (roots_bundle(&a.roots()), roots_bundle(&b.roots()));
    for purpose in ["sslclient", "sslserver"] {
        assert!(openssl_verify(&blocks[0], &inters, &own, purpose).is_ok());
        assert!(openssl_verify(&blocks[0], &inters, &foreign, purpose).is_err());
        assert!(openssl_verify(&blocks[0], "", &own, purpose).is_err());
    }
    assert!(python_verify(&blocks[0], &inters, &own, None).is_ok());
    assert!(python_verify(&blocks[0], &inters, &foreign, None).is_err());
    assert!(python_verify(&blocks[0], "", &own, None).is_err());
    // The leaf has no DNS name, so a server name check must fail.
    assert!(python_verify(&blocks[0], &inters, &own, Some("web.example.com")).is_err());
}

#[test]
fn ec_256() {
    check_key_type("ec", 256, 72);
}

#[test]
fn ec_384() {
    check_key_type("ec", 384, 24);
}

#[test]
fn rsa_2048() {
    check_key_type("rsa", 2048, 12);
}

#[test]
fn rsa_3072() {
    check_key_type("rsa", 3072, 1);
}

#[test]
fn rsa_4096() {
    check_key_type("rsa", 4096, 72);
}
