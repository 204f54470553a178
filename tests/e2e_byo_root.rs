//! End-to-end (issue #3): bring your own root, made with `meshca tls ca
//! create`, supplied as `PrivateKey` + `RootCert` (api-docs/rotation.md,
//! "Bring your own root"). Supplying it rotates the root with a
//! cross-signature like any other rotation; a root for another cluster is
//! refused without touching anything.

mod common;

use common::{
    active_root, cert_der, cert_facts, csr_for_uri, csr_with, dns_san, intermediates_of,
    openssl_verify_both, p256_key, pem_blocks, python_verify_all, root_by_id, run_meshca,
    service_uri, uri_san, PyCase, Server,
};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const CERT_FILE: &str = "consul-agent-ca.pem";
const KEY_FILE: &str = "consul-agent-ca-key.pem";

/// `meshca tls ca create --cluster-id <id> --common-name "Consul Agent CA"
/// --days 365 <extra>` in `dir`; returns (certificate, key).
fn tls_ca_create(dir: &Path, cluster_id: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "tls",
        "ca",
        "create",
        "--cluster-id",
        cluster_id,
        "--common-name",
        "Consul Agent CA",
        "--days",
        "365",
    ];
    args.extend_from_slice(extra);
    let out = run_meshca(&args, &[], dir, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "meshca {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("==> Saved ./{CERT_FILE}"))
            && stdout.contains(&format!("==> Saved ./{KEY_FILE}")),
        "{stdout}"
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("reading a created file");
    (read(CERT_FILE), read(KEY_FILE))
}

fn cluster_id(server: &Server) -> String {
    server
        .trust_domain()
        .strip_suffix(".consul")
        .expect("TrustDomain is <cluster id>.consul")
        .to_string()
}

fn byo_body(key: &str, cert: &str) -> String {
    json!({"Provider": "consul", "Config": {"PrivateKey": key, "RootCert": cert}}).to_string()
}

/// The DNS names a certificate's name constraints permit (`None` without
/// the extension).
fn permitted_dns(pem: &str) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("a PEM certificate");
    let cert = block.parse_x509().expect("a parsable certificate");
    let nc = cert.name_constraints().expect("a valid extension")?;
    assert!(nc.critical, "name constraints must be critical");
    let mut out = Vec::new();
    for s in nc.value.permitted_subtrees.iter().flatten() {
        match &s.base {
            GeneralName::DNSName(d) => out.push(d.to_string()),
            other => panic!("a name constraint that is not DNS: {other:?}"),
        }
    }
    assert!(nc.value.excluded_subtrees.is_none());
    Some(out)
}

/// Supplies `cert`/`key` and checks the rotation: the active root is the
/// file, cross-signed by the previous root; leaves verify against the new
/// root alone (openssl and Python) and through the cross-signature against
/// the old root alone. Returns the roots after.
fn supply_and_check(server: &Server, cert: &str, key: &str, what: &str) -> Value {
    let before = server.roots();
    let old = active_root(&before).clone();
    let old_pem = old["RootCert"].as_str().expect("RootCert").to_string();
    let r = server.put("/v1/connect/ca/configuration", byo_body(key, cert));
    assert_eq!(r.status, 200, "{what}: {r:?}\nlogs:\n{}", server.logs());

    let roots = server.roots();
    let list = roots["Roots"].as_array().expect("Roots");
    assert_eq!(
        list.len(),
        before["Roots"].as_array().expect("Roots").len() + 1
    );
    let new = active_root(&roots).clone();
    assert_eq!(
        new["RootCert"].as_str(),
        Some(cert),
        "{what}: the active root is the supplied file"
    );
    assert_eq!(root_by_id(&roots, &old["ID"])["Active"], json!(false));
    assert_eq!(new["PrivateKeyType"], json!("ec"));
    assert_eq!(new["PrivateKeyBits"], json!(256));
    let inters = intermediates_of(&new);
    assert_eq!(inters.len(), 2, "{what}: [cross-signed, signing]: {new}");
    assert_eq!(cert_der(&inters[0]).subject, cert_der(cert).subject);
    assert_eq!(cert_der(&inters[0]).spki, cert_der(cert).spki);
    assert_eq!(cert_der(&inters[0]).issuer, cert_der(&old_pem).subject);
    assert_eq!(
        cert_facts(&inters[1]).authority_key_id,
        cert_facts(cert).subject_key_id,
        "{what}: the signing intermediate is signed by the supplied root"
    );

    // GET shows the supplied key redacted, the certificate as supplied.
    let cfg = server.config();
    assert_eq!(cfg["Config"]["PrivateKey"], json!("hidden"), "{cfg}");
    assert_eq!(cfg["Config"]["RootCert"].as_str(), Some(cert), "{cfg}");

    // Leaves: agent leaf, a signed CSR, and a signed CSR with a DNS SAN
    // inside the name constraints (if any), checked by the server verifier.
    let td = server.trust_domain();
    let agent = server.get_json("/v1/agent/connect/ca/leaf/web");
    let signed = server.sign(&csr_for_uri(&service_uri(&td, "dc1", "api")));
    assert_eq!(signed.status, 200, "{what}: {signed:?}");
    let dns_csr = db_csr_with_dns(&td, "db.service.consul");
    let with_dns = server.sign(&dns_csr);
    assert_eq!(with_dns.status, 200, "{what}: {with_dns:?}");
    let mut py = Vec::new();
    for (leaf, name) in [
        (agent, "agent leaf"),
        (signed.json(), "signed CSR"),
        (with_dns.json(), "signed CSR with a DNS SAN"),
    ] {
        let chain = leaf["CertPEM"].as_str().expect("CertPEM").to_string();
        assert_eq!(pem_blocks(&chain)[1..], inters[..], "{what}: {name}");
        for (root, which) in [(cert, "supplied root alone"), (&old_pem, "old root alone")] {
            let case = format!("{what}: {name}, {which}");
            openssl_verify_both(&chain, root, &case);
            let mut c = PyCase::new(case, &chain, root);
            if name.ends_with("DNS SAN") {
                c.server_name = Some("db.service.consul".into());
            }
            py.push(c);
        }
    }
    python_verify_all(&py);
    roots
}

#[test]
fn a_root_from_tls_ca_create_is_supplied_cross_signed_and_trusted() {
    let server = Server::start(&[]);
    let cid = cluster_id(&server);

    // A plain one: generated root -> supplied root.
    let plain = tempfile::tempdir().expect("a temporary directory");
    let (cert, key) = tls_ca_create(plain.path(), &cid, &[]);
    assert_eq!(permitted_dns(&cert), None, "no --name-constraint");
    assert_eq!(
        cert_facts(&cert).uris,
        vec![format!("spiffe://{cid}.consul")]
    );
    supply_and_check(&server, &cert, &key, "plain supplied root");

    // A name-constrained one, cross-signed by the supplied root before it.
    let constrained = tempfile::tempdir().expect("a temporary directory");
    let (cert, key) = tls_ca_create(constrained.path(), &cid, &["--name-constraint"]);
    let permitted = permitted_dns(&cert).expect("--name-constraint writes name constraints");
    assert!(
        permitted.contains(&"consul".to_string()) && permitted.contains(&"localhost".to_string()),
        "{permitted:?}"
    );
    let roots = supply_and_check(&server, &cert, &key, "name-constrained supplied root");
    assert_eq!(roots["Roots"].as_array().expect("Roots").len(), 3);

    // Both survive a restart (the supplied keys are restored from the store).
    let mut server = server;
    server.restart();
    assert_eq!(server.roots()["Roots"], roots["Roots"]);
    let td = server.trust_domain();
    let r = server.sign(&csr_for_uri(&service_uri(&td, "dc1", "web")));
    assert_eq!(r.status, 200, "{r:?}");
    openssl_verify_both(
        r.json()["CertPEM"].as_str().expect("CertPEM"),
        &cert,
        "after restart, supplied root",
    );
}

#[test]
fn a_root_for_another_cluster_is_refused_and_nothing_changes() {
    let server = Server::start(&[]);
    let roots = server.get("/v1/connect/ca/roots");
    let config = server.config();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let other = "9e4b3a66-0d3c-4f4b-9b8e-7f0c1a2b3c4d";
    assert_ne!(other, cluster_id(&server));
    let (cert, key) = tls_ca_create(dir.path(), other, &[]);
    let r = server.put("/v1/connect/ca/configuration", byo_body(&key, &cert));
    r.assert_error(400);
    let after = server.get("/v1/connect/ca/roots");
    assert_eq!(after.index(), roots.index(), "nothing was committed");
    assert_eq!(after.body, roots.body, "the roots are untouched");
    assert_eq!(server.config(), config, "the configuration is untouched");

    // Running `tls ca create` again in the same directory fails and leaves
    // both files as they were.
    let before = (
        std::fs::read(dir.path().join(CERT_FILE)).expect("the certificate"),
        std::fs::read(dir.path().join(KEY_FILE)).expect("the key"),
    );
    let out = run_meshca(
        &[
            "tls",
            "ca",
            "create",
            "--cluster-id",
            other,
            "--common-name",
            "Consul Agent CA",
            "--days",
            "365",
        ],
        &[],
        dir.path(),
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "a second create must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    let after = (
        std::fs::read(dir.path().join(CERT_FILE)).expect("the certificate"),
        std::fs::read(dir.path().join(KEY_FILE)).expect("the key"),
    );
    assert_eq!(after, before, "the existing CA files were overwritten");
}

/// The cross-signature ends at min(rotation + 2 x LeafCertTTL, old root's
/// NotAfter): rotating away from a supplied root that expires in two days
/// (before the 144 h of 2 x 72h) gives a cross-signed certificate that
/// ends exactly with it.
#[test]
fn the_cross_signature_never_outlives_the_old_root() {
    let server = Server::start(&[]);
    let cid = cluster_id(&server);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut args = vec!["tls", "ca", "create", "--cluster-id", cid.as_str()];
    args.extend(["--days", "2"]);
    let out = run_meshca(&args, &[], dir.path(), Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("a created file");
    let (cert, key) = (read(CERT_FILE), read(KEY_FILE));
    let r = server.put("/v1/connect/ca/configuration", byo_body(&key, &cert));
    assert_eq!(r.status, 200, "{r:?}");

    let r = server.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(r.status, 200, "{r:?}");
    let roots = server.roots();
    let inters = intermediates_of(active_root(&roots));
    let cross = cert_facts(&inters[0]);
    let old = cert_facts(&cert);
    assert!(old.not_after < common::unix_now() + 2 * 72 * 3600);
    assert_eq!(
        cross.not_after, old.not_after,
        "the cross-signature ends with the old root"
    );
    let td = server.trust_domain();
    let r = server.sign(&csr_for_uri(&service_uri(&td, "dc1", "web")));
    assert_eq!(r.status, 200, "{r:?}");
    openssl_verify_both(
        r.json()["CertPEM"].as_str().expect("CertPEM"),
        &cert,
        "new leaf, short-lived old root alone",
    );
}

/// Supplies a `--name-constraint` root; returns the server and the
/// certificate.
fn server_with_a_constrained_root() -> (Server, String) {
    let server = Server::start(&[]);
    let cid = cluster_id(&server);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (cert, key) = tls_ca_create(dir.path(), &cid, &["--name-constraint"]);
    let r = server.put("/v1/connect/ca/configuration", byo_body(&key, &cert));
    assert_eq!(r.status, 200, "{r:?}");
    (server, cert)
}

/// Regression (cross-signing dropped name constraints): the certificate that
/// re-issues a name-constrained root under the old root must carry the same
/// NameConstraints, or a proxy that trusts only the old root accepts, from
/// the new CA's keys, names the new root does not permit.
#[test]
fn the_cross_signed_certificate_keeps_the_roots_name_constraints() {
    let (server, cert) = server_with_a_constrained_root();
    let roots = server.roots();
    let inters = intermediates_of(active_root(&roots));
    let root_nc = permitted_dns(&cert).expect("the supplied root is constrained");
    assert_eq!(
        permitted_dns(&inters[0]),
        Some(root_nc),
        "the cross-signed certificate must keep the root's name constraints"
    );
}

/// Regression (500 for a client error): a CSR asking for a DNS SAN that the
/// supplied root's name constraints exclude was refused by the post-signing
/// self-check as `500 internal`. The request is what is wrong, so it is a
/// 400 naming the constraint, like every other CSR rule.
#[test]
fn a_csr_outside_the_roots_name_constraints_is_a_400() {
    let (server, _) = server_with_a_constrained_root();
    let td = server.trust_domain();
    let csr = db_csr_with_dns(&td, "db.example.com");
    let r = server.sign(&csr);
    r.assert_error(400);
}

/// A CSR for service `db` with one DNS SAN.
fn db_csr_with_dns(td: &str, dns: &str) -> String {
    csr_with(
        &p256_key(),
        vec![uri_san(&service_uri(td, "dc1", "db")), dns_san(dns)],
        |_| {},
    )
}

/// A self-signed certificate for the server's trust domain made by openssl
/// with `newkey` and `basic` constraints; returns (certificate, key).
fn openssl_root(dir: &Path, td: &str, newkey: &[&str], basic: &str) -> (String, String) {
    let san = format!("subjectAltName=URI:spiffe://{td}");
    let mut args = vec![
        "req", "-x509", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
    ];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&["-days", "30", "-subj", "/CN=Hostile Root"]);
    args.extend_from_slice(&["-addext", basic, "-addext", &san]);
    let (ok, out) = common::openssl(dir, &args);
    assert!(ok, "openssl req: {out}");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("reading an openssl file");
    (read("c.pem"), read("k.pem"))
}

/// Hostile supplied roots through the ACL-guarded API: a key that does not
/// match the certificate, a certificate that is not a CA, an RSA-1024 root
/// and a body nested past the JSON depth limit each get a 400 naming the
/// problem; a token without operator:write gets 403 for a valid root. None
/// of them changes the roots or the configuration.
#[test]
fn hostile_supplied_roots_are_refused_and_change_nothing() {
    let server = Server::start(&[]);
    let td = server.trust_domain();
    let roots = server.get("/v1/connect/ca/roots");
    let config = server.config();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (good_cert, good_key) = tls_ca_create(dir.path(), &cluster_id(&server), &[]);
    let other_key = p256_key().serialize_pem();
    let p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let not_a_ca = "basicConstraints=critical,CA:FALSE";
    let (not_ca, not_ca_key) = openssl_root(dir.path(), &td, &p256, not_a_ca);
    let a_ca = "basicConstraints=critical,CA:TRUE";
    let (weak, weak_key) = openssl_root(dir.path(), &td, &["-newkey", "rsa:1024"], a_ca);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases = [
        (
            "a key that does not match",
            byo_body(&other_key, &good_cert),
            "match",
        ),
        (
            "a certificate that is not a CA",
            byo_body(&not_ca_key, &not_ca),
            "CA",
        ),
        ("an RSA-1024 root", byo_body(&weak_key, &weak), "1024"),
        (
            "a body nested 100 000 deep",
            format!("{{\"Config\":{deep}}}"),
            "recursion limit",
        ),
    ];
    for (what, body, needle) in cases {
        let r = server.put("/v1/connect/ca/configuration", body);
        r.assert_error(400);
        assert!(r.body.contains(needle), "{what}: {}", r.body);
    }
    // A valid root from a token with no policies: 403.
    let reader = server.put(
        "/v1/acl/token",
        json!({"Description": "reader", "Policies": []}).to_string(),
    );
    assert_eq!(reader.status, 200, "{reader:?}");
    let secret = reader.json()["SecretID"]
        .as_str()
        .expect("SecretID")
        .to_string();
    let r = server.request_as(
        Some(&secret),
        reqwest::Method::PUT,
        "/v1/connect/ca/configuration",
        Some(byo_body(&good_key, &good_cert).into_bytes()),
    );
    r.assert_error(403);

    let after = server.get("/v1/connect/ca/roots");
    assert_eq!(after.index(), roots.index(), "nothing was committed");
    assert_eq!(after.body, roots.body, "the roots are untouched");
    assert_eq!(server.config(), config, "the configuration is untouched");
}
