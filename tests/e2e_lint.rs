//! Every kind of certificate meshca issues passes an independent RFC 5280
//! linter (pkilint): root, intermediate, service leaf, CSR-signed leaf with
//! a DNS SAN, and the cross-signed certificate of a rotation — for an EC and
//! an RSA CA.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;

/// Lints PEM certificates with tests/lint_certs.py; panics with the findings.
fn lint(dir: &Path, certs: &[(&str, String)]) {
    let mut paths = Vec::new();
    for (name, pem) in certs {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, pem).expect("writing a certificate");
        paths.push(path);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/lint_certs.py");
    let out = Command::new("python3")
        .arg(script)
        .args(&paths)
        .output()
        .expect("running tests/lint_certs.py (pip install pkilint)");
    assert!(
        out.status.success(),
        "pkilint findings:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn lint_ca(key_type: &str, bits: u32, rotate_to: (&str, u32)) {
    let config =
        json!({"connect": {"ca_config": {"PrivateKeyType": key_type, "PrivateKeyBits": bits}}});
    let server = Server::start_with_config(&config, &[]);
    let td = server.trust_domain();
    let leaf_of = |resp: &Value| pem_blocks(resp["CertPEM"].as_str().expect("CertPEM"))[0].clone();
    let agent = server.get_json("/v1/agent/connect/ca/leaf/web");
    let csr = csr_with(
        &p256_key(),
        vec![
            uri_san(&service_uri(&td, "dc1", "api")),
            dns_san("api.service.consul"),
        ],
        |_| {},
    );
    let signed = server.sign(&csr).json();
    let before = server.roots();
    let root = active_root(&before);
    let mut certs = vec![
        (
            "root",
            root["RootCert"].as_str().expect("RootCert").to_string(),
        ),
        ("intermediate", intermediates_of(root)[0].clone()),
        ("agent-leaf", leaf_of(&agent)),
        ("csr-leaf", leaf_of(&signed)),
    ];
    let r =
        server.put_config(json!({"PrivateKeyType": rotate_to.0, "PrivateKeyBits": rotate_to.1}));
    assert_eq!(r.status, 200, "{r:?}");
    let after = server.roots();
    let chain = intermediates_of(active_root(&after));
    certs.push(("cross-signed", chain[0].clone()));
    certs.push(("new-intermediate", chain[1].clone()));
    lint(server.dir(), &certs);
}

use serde_json::Value;

#[test]
fn ec_ca_certificates_pass_the_linter() {
    lint_ca("ec", 256, ("rsa", 2048));
}

#[test]
fn rsa_ca_certificates_pass_the_linter() {
    lint_ca("rsa", 2048, ("ec", 384));
}
