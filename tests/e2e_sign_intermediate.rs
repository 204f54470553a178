//! End-to-end: `POST /v1/connect/ca/sign-intermediate`, the primary
//! signing a secondary datacenter's intermediate CA, with the built-in
//! provider and with the vault provider (OpenBao). The CSR is made with
//! openssl, the way a secondary built elsewhere would; the intermediate and
//! a leaf the secondary signs with it verify against the primary's root with
//! openssl -x509_strict and Python.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod common;
#[path = "common/openbao.rs"]
mod openbao;

use common::{active_root, cert_facts, openssl, verify_chain_against, Server};
use openbao::OpenBao;
use serde_json::json;
use std::path::Path;

const PATH: &str = "/v1/connect/ca/sign-intermediate";

/// An intermediate CSR made by openssl in `dir` (key in `int.key`) with
/// `basic` constraints and `san`.
fn openssl_csr(dir: &Path, basic: &str, san: &str) -> String {
    let (ok, out) = openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "int.key",
            "-out",
            "int.csr",
            "-subj",
            "/CN=dc2 intermediate",
            "-addext",
            basic,
            "-addext",
            san,
        ],
    );
    assert!(ok, "{out}");
    std::fs::read_to_string(dir.join("int.csr")).unwrap()
}

fn body(csr: &str) -> String {
    json!({ "CSR": csr }).to_string()
}

/// Signs an intermediate for dc2 and checks it, and a dc2 leaf signed with
/// it by openssl, against the primary's active root alone.
fn sign_and_check(server: &Server, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let roots = server.roots();
    let td = roots["TrustDomain"].as_str().unwrap().to_string();
    let root_pem = active_root(&roots)["RootCert"]
        .as_str()
        .unwrap()
        .to_string();
    let csr = openssl_csr(
        dir.path(),
        "basicConstraints=critical,CA:TRUE,pathlen:0",
        &format!("subjectAltName=URI:spiffe://{td}"),
    );
    let r = server.post(PATH, body(&csr));
    assert_eq!(r.status, 200, "{what}: {r:?}");
    let int_pem = r.json()["CertPEM"].as_str().unwrap().to_string();
    let int = cert_facts(&int_pem);
    assert_eq!(int.ca, Some(true), "{what}");
    assert_eq!(int.path_len, Some(0), "{what}");
    assert_eq!(int.uris, vec![format!("spiffe://{td}")], "{what}");
    assert_eq!(
        int.authority_key_id,
        cert_facts(&root_pem).subject_key_id,
        "{what}"
    );
    // The primary's IntermediateCertTTL (8760h) and never past the root.
    let days = (int.not_after - int.not_before) / 86_400;
    assert!((364..=366).contains(&days), "{what}: {days} days");
    assert!(int.not_after <= cert_facts(&root_pem).not_after);

    // dc2 signs a leaf with its key and the new intermediate.
    std::fs::write(dir.path().join("int.pem"), &int_pem).unwrap();
    std::fs::write(
        dir.path().join("leaf.ext"),
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth,clientAuth\nauthorityKeyIdentifier=keyid\n\
             subjectAltName=critical,URI:spiffe://{td}/ns/default/dc/dc2/svc/web\n"
        ),
    )
    .unwrap();
    for args in [
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/",
        ][..],
        &[
            "x509", "-req", "-in", "leaf.csr", "-CA", "int.pem", "-CAkey", "int.key", "-days", "1",
            "-extfile", "leaf.ext", "-out", "leaf.pem",
        ][..],
    ] {
        let (ok, out) = openssl(dir.path(), args);
        assert!(ok, "{what}: openssl {args:?}: {out}");
    }
    let leaf = std::fs::read_to_string(dir.path().join("leaf.pem")).unwrap();
    verify_chain_against(
        &format!("{leaf}{int_pem}"),
        &root_pem,
        &format!("{what}: dc2 leaf"),
    );
}

/// Requests that are not a path-length-0 CA for our trust domain are 400s
/// naming the rule; a token without operator:write gets 403. Nothing is
/// signed: the audit trail has no line for any of them.
fn refusals(server: &Server, audit: &Path) {
    let audited = || {
        std::fs::read_to_string(audit)
            .unwrap_or_default()
            .matches("signed a secondary intermediate")
            .count()
    };
    let before = audited();
    let dir = tempfile::tempdir().unwrap();
    let td = server.trust_domain();
    let ca_uri = format!("subjectAltName=URI:spiffe://{td}");
    for (what, basic, san, needle) in [
        (
            "a leaf request",
            "basicConstraints=critical,CA:FALSE",
            ca_uri.as_str(),
            "pathLen 0",
        ),
        (
            "pathlen 1",
            "basicConstraints=critical,CA:TRUE,pathlen:1",
            ca_uri.as_str(),
            "pathLen 0",
        ),
        (
            "a service SPIFFE ID",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            &format!("subjectAltName=URI:spiffe://{td}/ns/default/dc/dc2/svc/web"),
            "exactly one SAN",
        ),
        (
            "another trust domain",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "subjectAltName=URI:spiffe://11111111-2222-3333-4444-555555555555.consul",
            "exactly one SAN",
        ),
        (
            "two URIs",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            &format!("subjectAltName=URI:spiffe://{td},URI:spiffe://{td}/extra"),
            "exactly one SAN",
        ),
        (
            "no basicConstraints",
            "keyUsage=critical,keyCertSign",
            ca_uri.as_str(),
            "pathLen 0",
        ),
    ] {
        let r = server.post(PATH, body(&openssl_csr(dir.path(), basic, san)));
        r.assert_error(400);
        assert!(r.body.contains(needle), "{what}: {}", r.body);
    }
    let csr = openssl_csr(
        dir.path(),
        "basicConstraints=critical,CA:TRUE,pathlen:0",
        &ca_uri,
    );
    let r = server.request_as(
        None,
        reqwest::Method::POST,
        PATH,
        Some(body(&csr).into_bytes()),
    );
    r.assert_error(403);
    assert_eq!(audited(), before, "a refused request was signed");
    // The same request with the operator token is signed and audited,
    // which shows the count above would have seen a signature.
    let r = server.post(PATH, body(&csr));
    assert_eq!(r.status, 200, "{r:?}");
    let wait = std::time::Duration::from_secs(5);
    assert!(common::wait_until(wait, || audited() == before + 1));
}

#[test]
fn the_builtin_primary_signs_a_secondarys_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let server = Server::start_with_config(&json!({"audit": {"path": audit}}), &[]);
    sign_and_check(&server, "built-in");
    refusals(&server, &audit);
}

#[test]
fn a_vault_primary_signs_a_secondarys_intermediate_in_vault() {
    let bao = OpenBao::start();
    let server = Server::start(&[]);
    let config = json!({"Provider": "vault", "Config": bao.ca_config("pki", "pki-int")});
    let r = server.put("/v1/connect/ca/configuration", config.to_string());
    assert_eq!(r.status, 200, "{r:?}");
    sign_and_check(&server, "vault");
}
