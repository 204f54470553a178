//! TLS on the HTTP API, end to end: the real binary serving HTTPS with
//! certificates from `meshca tls cert create` or from its own Connect CA
//! (`auto_tls`), checked with `openssl s_client` and Python's `ssl`: TLS
//! versions, cipher suites, client certificates (required, from another CA,
//! expired, absent), the handshake timeout, the CLI's TLS variables, and
//! the `auto_tls` certificate renewed after a root rotation.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod common;

use common::tls::{
    agent_ca, agent_cert, https_addr, python_get, s_client, served_cert_pem, wait_for_new_cert,
    x509,
};
use common::{openssl, run_meshca, Server};
use serde_json::json;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn tls_cert_create_makes_certificates_openssl_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = agent_ca(dir.path());
    let cases = [
        (
            "--server",
            vec!["--node", "n1", "--additional-dnsname", "ca.example.com"],
            "dc1-server-consul-0.pem",
            vec![
                "DNS:server.dc1.consul",
                "DNS:n1.server.dc1.consul",
                "DNS:localhost",
                "DNS:ca.example.com",
                "IP Address:127.0.0.1",
            ],
            "TLS Web Server Authentication, TLS Web Client Authentication",
        ),
        (
            "--client",
            vec!["--additional-ipaddress", "10.0.0.7"],
            "dc1-client-consul-0.pem",
            vec![
                "DNS:client.dc1.consul",
                "DNS:localhost",
                "IP Address:127.0.0.1",
                "IP Address:10.0.0.7",
            ],
            "TLS Web Server Authentication, TLS Web Client Authentication",
        ),
        (
            "--cli",
            vec![],
            "dc1-cli-consul-0.pem",
            vec!["DNS:cli.client.dc1.consul", "DNS:localhost"],
            "TLS Web Client Authentication",
        ),
    ];
    for (kind, extra, name, sans, eku) in cases {
        let (cert, key) = agent_cert(dir.path(), kind, &extra);
        assert!(cert.ends_with(name), "{cert:?}");
        assert!(key.to_str().unwrap().ends_with("-0-key.pem"), "{key:?}");
        let (ok, out) = openssl(
            dir.path(),
            &["verify", "-x509_strict", "-CAfile", p(&ca), p(&cert)],
        );
        assert!(ok, "{kind}: {out}");
        let text = x509(
            dir.path(),
            &std::fs::read_to_string(&cert).unwrap(),
            &["-ext", "subjectAltName,extendedKeyUsage"],
        );
        for san in sans {
            assert!(text.contains(san), "{kind}: {san} missing in {text}");
        }
        assert!(text.contains(eku), "{kind}: {text}");
    }
    // The counter moves on and nothing is overwritten.
    let first = std::fs::read(dir.path().join("dc1-server-consul-0.pem")).unwrap();
    let (again, _) = agent_cert(dir.path(), "--server", &[]);
    assert!(again.ends_with("dc1-server-consul-1.pem"), "{again:?}");
    assert_eq!(
        std::fs::read(dir.path().join("dc1-server-consul-0.pem")).unwrap(),
        first
    );
}

/// A client certificate from the agent CA in `ca_dir` that expired in 2021.
fn expired_client_cert(ca_dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let ca_pem = std::fs::read_to_string(ca_dir.join("consul-agent-ca.pem")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(ca_dir.join("consul-agent-ca-key.pem")).unwrap(),
    )
    .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["cli.client.dc1.consul".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::macros::datetime!(2020-01-01 00:00 UTC);
    params.not_after = time::macros::datetime!(2021-01-01 00:00 UTC);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (c, k) = (ca_dir.join("expired.pem"), ca_dir.join("expired-key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

#[test]
fn https_with_files_enforces_versions_suites_and_client_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, _) = agent_ca(certs.path());
    let (server_cert, server_key) = agent_cert(certs.path(), "--server", &[]);
    let (cli_cert, cli_key) = agent_cert(certs.path(), "--cli", &[]);
    // A key others can read is served, with a warning.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let other = tempfile::tempdir().unwrap();
    agent_ca(other.path());
    let (other_cert, other_key) = agent_cert(other.path(), "--cli", &[]);
    let (expired_cert, expired_key) = expired_client_cert(certs.path());

    let config = json!({"tls": {"defaults": {
        "ca_file": p(&ca), "cert_file": p(&server_cert), "key_file": p(&server_key),
        "verify_incoming": true,
        "tls_cipher_suites": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        "timeout": 1,
    }}});
    let server = Server::start_with_config(&config, &["--https-port", "0"]);
    let addr = https_addr(&server);
    let logs = server.logs();
    assert!(logs.contains("is readable by others"), "{logs}");
    assert!(logs.contains("stays open without TLS"), "{logs}");
    // Consul's behaviour: the HTTP port stays on unless ports.http = -1.
    assert_eq!(server.get("/v1/health").status, 200);

    let me = [
        "-CAfile",
        p(&ca),
        "-verify_return_error",
        "-cert",
        p(&cli_cert),
        "-key",
        p(&cli_key),
    ];
    let with = |extra: &[&str]| {
        let mut args = me.to_vec();
        args.extend_from_slice(extra);
        s_client(&addr, &args)
    };
    let r = with(&["-tls1_2"]);
    assert!(r.ok, "TLS 1.2 with a client certificate: {}", r.output);
    // openssl prefers AES-256 first; the server offers only the two listed.
    assert!(
        r.output.contains("ECDHE-ECDSA-CHACHA20-POLY1305")
            || r.output.contains("ECDHE-ECDSA-AES128-GCM-SHA256"),
        "{}",
        r.output
    );
    let r = with(&["-tls1_3"]);
    assert!(r.ok, "TLS 1.3 with a client certificate: {}", r.output);
    let r = with(&["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"]);
    assert!(!r.ok, "a suite not allowed: {}", r.output);

    let anonymous = ["-CAfile", p(&ca), "-verify_return_error"];
    for version in ["-tls1_2", "-tls1_3"] {
        let mut args = anonymous.to_vec();
        args.push(version);
        let r = s_client(&addr, &args);
        assert!(!r.ok, "no client certificate ({version}): {}", r.output);
        for (what, cert, key) in [
            ("another CA", &other_cert, &other_key),
            ("expired", &expired_cert, &expired_key),
        ] {
            let mut args = args.clone();
            args.extend_from_slice(&["-cert", p(cert), "-key", p(key)]);
            let r = s_client(&addr, &args);
            assert!(!r.ok, "{what} ({version}): {}", r.output);
        }
    }

    // Python's ssl as a second client.
    let r = python_get(&addr, &ca, Some((&cli_cert, &cli_key)), "TLSv1_2");
    assert!(r.ok, "python with a client certificate: {}", r.output);
    let r = python_get(&addr, &ca, None, "TLSv1_2");
    assert!(!r.ok, "python without a client certificate: {}", r.output);
    let r = python_get(&addr, &ca, Some((&expired_cert, &expired_key)), "TLSv1_3");
    assert!(!r.ok, "python with an expired certificate: {}", r.output);

    // A client that never starts the handshake is closed after `timeout`.
    let started = Instant::now();
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    let closed = matches!(idle.read(&mut buf), Ok(0) | Err(_));
    let took = started.elapsed();
    assert!(closed, "the idle connection got data");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}, want about 1 s"
    );

    // The CLI over https://, with meshca's variables and with Consul's.
    let url = format!("https://{addr}");
    let run = |envs: &[(&str, &str)]| {
        run_meshca(
            &["connect", "ca", "roots"],
            envs,
            certs.path(),
            Duration::from_secs(30),
        )
    };
    let ours = run(&[
        ("MESHCA_HTTP_ADDR", &url),
        ("MESHCA_CACERT", p(&ca)),
        ("MESHCA_CLIENT_CERT", p(&cli_cert)),
        ("MESHCA_CLIENT_KEY", p(&cli_key)),
    ]);
    assert!(ours.status.success(), "{ours:?}");
    assert!(String::from_utf8_lossy(&ours.stdout).contains("ActiveRootID"));
    let consuls = run(&[
        ("MESHCA_HTTP_ADDR", &url),
        ("CONSUL_CACERT", p(&ca)),
        ("CONSUL_CLIENT_CERT", p(&cli_cert)),
        ("CONSUL_CLIENT_KEY", p(&cli_key)),
    ]);
    assert!(consuls.status.success(), "{consuls:?}");
    let without = run(&[("MESHCA_HTTP_ADDR", &url), ("MESHCA_CACERT", p(&ca))]);
    assert!(
        !without.status.success(),
        "no client certificate: {without:?}"
    );
}

#[test]
fn auto_tls_serves_a_connect_ca_certificate_and_renews_it_after_rotation() {
    let config = json!({"tls": {"auto_tls": true, "defaults": {"tls_min_version": "tls13"}}});
    let server = Server::start_with_config(&config, &["--https-port", "0"]);
    let addr = https_addr(&server);
    let dir = server.dir().to_path_buf();
    let roots_file = dir.join("roots.pem");
    let fetch_roots = || {
        let r = server.get("/v1/connect/ca/roots?pem=true");
        assert_eq!(r.status, 200);
        std::fs::write(&roots_file, &r.body).unwrap();
    };
    fetch_roots();
    let verify = [
        "-CAfile",
        p(&roots_file),
        "-verify_return_error",
        "-verify_hostname",
        "localhost",
    ];
    let r = s_client(&addr, &[&verify[..], &["-tls1_3"]].concat());
    assert!(r.ok, "verified with the CA's roots: {}", r.output);
    let r = s_client(&addr, &["-tls1_2"]);
    assert!(!r.ok, "TLS 1.2 below tls_min_version: {}", r.output);
    let r = python_get(&addr, &roots_file, None, "TLSv1_3");
    assert!(r.ok, "python: {}", r.output);

    let first = served_cert_pem(&addr);
    let sans = x509(&dir, &first, &["-ext", "subjectAltName"]);
    for san in [
        "DNS:server.dc1.consul",
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "/agent/server/dc/dc1",
    ] {
        assert!(sans.contains(san), "{san} missing: {sans}");
    }
    let serial = x509(&dir, &first, &["-serial"]);

    // A root rotation: the listener gets a certificate from the new CA.
    let r = server.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(r.status, 200, "{}", r.body);
    let renewed = wait_for_new_cert(&dir, &addr, &serial, Duration::from_secs(30));
    assert!(server.logs().contains("renewed the HTTPS certificate"));
    fetch_roots();
    let r = s_client(&addr, &verify);
    assert!(r.ok, "verified with the roots after rotation: {}", r.output);
    let r = python_get(&addr, &roots_file, None, "TLSv1_3");
    assert!(r.ok, "python after rotation: {}", r.output);
    assert_ne!(x509(&dir, &renewed, &["-serial"]), serial);
}

/// `method path` over HTTPS with Python's `http.client`, presenting `client`
/// (certificate chain, key) when given and no token; returns the status
/// and the body.
fn https_as(
    addr: &str,
    cafile: &Path,
    client: Option<(&Path, &Path)>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let (cert, key) = client
        .map(|(c, k)| (c.display().to_string(), k.display().to_string()))
        .unwrap_or_default();
    let script = r#"
import http.client, ssl, sys
host, port, cafile, cert, key, method, path, body = sys.argv[1:9]
ctx = ssl.create_default_context(cafile=cafile)
if cert:
    ctx.load_cert_chain(cert, key)
c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=20)
c.request(method, path, body=body.encode() if body else None)
r = c.getresponse()
print(r.status)
sys.stdout.write(r.read().decode())
"#;
    let out = std::process::Command::new("timeout")
        .args(["30", "python3", "-c", script, host, port])
        .arg(cafile)
        .args([cert.as_str(), key.as_str(), method, path, body])
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python https: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, rest) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    (
        status.trim().parse().expect("a status line"),
        rest.to_string(),
    )
}

#[test]
fn verify_and_map_lets_a_mesh_leaf_renew_its_own_service_and_nothing_else() {
    let config = json!({"tls": {"auto_tls": true, "defaults": {"verify_and_map": true}}});
    let server = Server::start_with_config(&config, &["--https-port", "0"]);
    let addr = https_addr(&server);
    let dir = server.dir().to_path_buf();
    let roots = dir.join("roots.pem");
    std::fs::write(&roots, server.get("/v1/connect/ca/roots?pem=true").body).unwrap();
    // The proxy's current leaf, fetched once with the management token.
    let leaf = server.get_json("/v1/agent/connect/ca/leaf/web");
    let (cert, key) = (dir.join("web.pem"), dir.join("web-key.pem"));
    std::fs::write(&cert, leaf["CertPEM"].as_str().unwrap()).unwrap();
    std::fs::write(&key, leaf["PrivateKeyPEM"].as_str().unwrap()).unwrap();
    let web = Some((cert.as_path(), key.as_path()));
    let td = server.trust_domain();
    let csr = |uri: &str| json!({"CSR": common::csr_for_uri(uri)}).to_string();

    // Its own service: renew the leaf, have its CSR signed.
    let (status, body) = https_as(
        &addr,
        &roots,
        web,
        "GET",
        "/v1/agent/connect/ca/leaf/web",
        "",
    );
    assert_eq!(status, 200, "{body}");
    let renewed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(renewed["Service"], "web");
    let own = csr(&common::service_uri(&td, "dc1", "web"));
    let (status, body) = https_as(&addr, &roots, web, "POST", "/v1/connect/ca/sign", &own);
    assert_eq!(status, 200, "{body}");

    // Nothing else: another service, a server identity, operator and ACL
    // endpoints (a mesh leaf never grants operator access).
    let denied = [
        ("GET", "/v1/agent/connect/ca/leaf/db", String::new()),
        (
            "POST",
            "/v1/connect/ca/sign",
            csr(&common::service_uri(&td, "dc1", "db")),
        ),
        (
            "POST",
            "/v1/connect/ca/sign",
            csr(&format!("spiffe://{td}/agent/server/dc/dc1")),
        ),
        ("GET", "/v1/connect/ca/configuration", String::new()),
        (
            "PUT",
            "/v1/connect/ca/configuration",
            json!({"Provider": "consul", "Config": {"LeafCertTTL": "1h"}}).to_string(),
        ),
        ("GET", "/v1/acl/tokens", String::new()),
        ("PUT", "/v1/acl/token", json!({}).to_string()),
    ];
    for (method, path, body) in &denied {
        let (status, text) = https_as(&addr, &roots, web, method, path, body);
        assert_eq!(status, 403, "{method} {path}: {text}");
        assert!(
            text.starts_with("Permission denied"),
            "{method} {path}: {text}"
        );
    }
    // Without the certificate (no token either) even web's leaf is denied.
    let (status, _) = https_as(
        &addr,
        &roots,
        None,
        "GET",
        "/v1/agent/connect/ca/leaf/web",
        "",
    );
    assert_eq!(status, 403);
    assert_eq!(
        server.config()["Config"]["LeafCertTTL"],
        "72h0m0s",
        "nothing changed"
    );
}
