//! End-to-end: the README's promises. A new user's first steps (roots,
//! a leaf, `openssl verify`), the client commands (`meshca leaf`,
//! `meshca connect ca ...`), and how `meshca server` treats its config file.

mod common;

use common::{
    cert_facts, openssl, openssl_csr, openssl_verify, pem_blocks, run_meshca, service_uri, Server,
    ACLS_DISABLED_WARNING,
};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a client command against `server` through `MESHCA_HTTP_ADDR`, with
/// the server's management token in `MESHCA_HTTP_TOKEN`.
fn client(server: &Server, cwd: &Path, args: &[&str]) -> Output {
    let token = server.token().unwrap_or_default();
    run_meshca(
        args,
        &[
            ("MESHCA_HTTP_ADDR", &server.base),
            ("MESHCA_HTTP_TOKEN", &token),
        ],
        cwd,
        CLIENT_TIMEOUT,
    )
}

/// `meshca connect ca set-config --config-file <file>`.
fn set_config(server: &Server, cwd: &Path, file: &Path) -> Output {
    let file = file.to_str().expect("UTF-8 path");
    client(
        server,
        cwd,
        &["connect", "ca", "set-config", "--config-file", file],
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn readme_first_steps_verify_with_openssl() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| std::fs::write(dir.path().join(name), body).unwrap();

    // curl -s localhost:8500/v1/connect/ca/roots (and ?pem=true)
    let roots = server.roots();
    let pem = server.get("/v1/connect/ca/roots?pem=true");
    assert_eq!(pem.status, 200);
    assert_eq!(pem_blocks(&pem.body).len(), 2);
    // curl -s localhost:8500/v1/agent/connect/ca/leaf/web > web.json
    let leaf = server.get("/v1/agent/connect/ca/leaf/web");
    assert_eq!(leaf.status, 200);
    write("web.json", &leaf.body);
    // The README's python one-liners.
    write("web.pem", leaf.json()["CertPEM"].as_str().unwrap());
    let roots_pem: String = roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["RootCert"].as_str().unwrap())
        .collect();
    write("roots.pem", &roots_pem);
    // The README's openssl command, verbatim.
    let (ok, out) = openssl(
        dir.path(),
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            "roots.pem",
            "-untrusted",
            "web.pem",
            "web.pem",
        ],
    );
    assert!(ok && out.contains("web.pem: OK"), "{out}");

    // Proxies that keep their own key send a CSR instead.
    let td = roots["TrustDomain"].as_str().unwrap();
    let csr = openssl_csr(
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &format!("URI:{}", service_uri(td, "dc1", "web")),
    );
    let r = server.post("/v1/connect/ca/sign", json!({ "CSR": csr }).to_string());
    assert_eq!(r.status, 200, "{r:?}");
    write("signed.pem", r.json()["CertPEM"].as_str().unwrap());
    let (ok, out) = openssl(
        dir.path(),
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            "roots.pem",
            "-untrusted",
            "signed.pem",
            "signed.pem",
        ],
    );
    assert!(ok, "{out}");
}

#[test]
fn leaf_command_writes_verifiable_files() {
    let server = Server::start(&[]);
    let cwd = tempfile::tempdir().unwrap();
    let out_dir = cwd.path().join("certs");
    // A key file left world-readable by someone else gets narrowed.
    std::fs::create_dir_all(&out_dir).unwrap();
    let key_path = out_dir.join("web-key.pem");
    std::fs::write(&key_path, "old").unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();

    let out = client(
        &server,
        cwd.path(),
        &["leaf", "web", "--out-dir", out_dir.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "meshca leaf failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    for name in ["web.pem", "web-key.pem", "ca.pem"] {
        assert!(
            text(&out.stdout).contains(name),
            "stdout should name {name}: {}",
            text(&out.stdout)
        );
    }
    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap();
    let (cert, key, ca) = (read("web.pem"), read("web-key.pem"), read("ca.pem"));
    assert_eq!(mode(&key_path), 0o600, "the private key must be 0600");
    assert!(key.contains("PRIVATE KEY-----"));

    // The files are what the API serves.
    let leaf = server.get_json("/v1/agent/connect/ca/leaf/web");
    assert_eq!(cert, leaf["CertPEM"].as_str().unwrap());
    assert_eq!(key, leaf["PrivateKeyPEM"].as_str().unwrap());
    assert_eq!(ca, common::roots_bundle(&server.roots()));

    // The README's command, verbatim, from the parent directory.
    let (ok, text_out) = openssl(
        cwd.path(),
        &[
            "verify",
            "-CAfile",
            "certs/ca.pem",
            "-untrusted",
            "certs/web.pem",
            "certs/web.pem",
        ],
    );
    assert!(ok && text_out.contains("certs/web.pem: OK"), "{text_out}");
    // And strictly, for both purposes.
    let blocks = pem_blocks(&cert);
    for purpose in ["sslclient", "sslserver"] {
        openssl_verify(&blocks[0], &blocks[1..].concat(), &ca, purpose)
            .unwrap_or_else(|e| panic!("{purpose}: {e}"));
    }
    // The key belongs to the certificate.
    let (ok, cert_pub) = openssl(
        out_dir.as_path(),
        &["x509", "-in", "web.pem", "-noout", "-pubkey"],
    );
    assert!(ok, "{cert_pub}");
    let (ok, key_pub) = openssl(
        out_dir.as_path(),
        &["pkey", "-in", "web-key.pem", "-pubout"],
    );
    assert!(ok, "{key_pub}");
    assert_eq!(cert_pub, key_pub);
    assert_eq!(cert_facts(&cert).uris.len(), 1);
}

#[test]
fn connect_ca_commands_print_json_and_set_the_configuration() {
    let server = Server::start(&[]);
    let cwd = tempfile::tempdir().unwrap();

    let out = client(&server, cwd.path(), &["connect", "ca", "roots"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).expect("roots prints JSON");
    assert_eq!(printed, server.roots());

    let out = client(&server, cwd.path(), &["connect", "ca", "get-config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).expect("get-config prints JSON");
    assert_eq!(printed["Provider"], json!("consul"));
    assert_eq!(printed["Config"]["LeafCertTTL"], json!("72h0m0s"));

    let file = cwd.path().join("ca.json");
    std::fs::write(
        &file,
        json!({"Provider": "consul", "Config": {"LeafCertTTL": "48h"}}).to_string(),
    )
    .unwrap();
    let out = set_config(&server, cwd.path(), &file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(server.config()["Config"]["LeafCertTTL"], json!("48h0m0s"));

    // The flags work as well as the environment variables.
    let token = server.token().unwrap_or_default();
    let out = run_meshca(
        &[
            "connect",
            "ca",
            "get-config",
            "--http-addr",
            &server.base,
            "--token",
            &token,
        ],
        &[],
        cwd.path(),
        CLIENT_TIMEOUT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["Config"]["LeafCertTTL"], json!("48h0m0s"));

    // A refused configuration is reported, with the server's reason.
    std::fs::write(
        &file,
        json!({"Provider": "consul", "Config": {"LeafCertTTL": "soon"}}).to_string(),
    )
    .unwrap();
    let out = set_config(&server, cwd.path(), &file);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("400") && err.contains("LeafCertTTL"), "{err}");
    assert_eq!(server.config()["Config"]["LeafCertTTL"], json!("48h0m0s"));

    // A file that is not JSON is refused before anything is sent.
    std::fs::write(&file, "LeafCertTTL = 24h").unwrap();
    let out = set_config(&server, cwd.path(), &file);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not valid JSON"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn client_commands_fail_cleanly_without_a_server() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("http://127.0.0.1:{port}");
    let cwd = tempfile::tempdir().unwrap();
    for args in [
        &["connect", "ca", "roots"][..],
        &["leaf", "web", "--out-dir", "certs"][..],
    ] {
        let out = run_meshca(
            args,
            &[("MESHCA_HTTP_ADDR", &addr)],
            cwd.path(),
            CLIENT_TIMEOUT,
        );
        assert!(!out.status.success(), "{args:?} succeeded without a server");
        assert!(
            text(&out.stderr).starts_with("Error:"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(!cwd.path().join("certs").join("web-key.pem").exists());
}

#[test]
fn unknown_config_keys_stop_the_server_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("top.json", r#"{"datacentre": "dc1"}"#, "datacentre"),
        ("ports.json", r#"{"ports": {"grpc": 8502}}"#, "grpc"),
        (
            "ca.json",
            r#"{"connect": {"ca_config": {"LeafTTL": "24h"}}}"#,
            "LeafTTL",
        ),
        (
            "top.hcl",
            "data_dir = \"x\"\nlog_levle = \"debug\"\n",
            "log_levle",
        ),
        ("connect.hcl", "connect {\n  enabeld = true\n}\n", "enabeld"),
    ];
    for (name, body, key) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let data = dir.path().join(format!("data-{name}"));
        let out = common::run_server_once(
            &data,
            &["--config-file", path.to_str().unwrap()],
            dir.path(),
            Duration::from_secs(30),
        );
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{name}: the server started:\n{err}");
        assert!(
            err.contains(key),
            "{name}: stderr must name {key:?}:\n{err}"
        );
        assert!(!err.contains("listening"), "{name}: {err}");
        assert!(
            !data.exists(),
            "{name}: a refused config created the data dir"
        );
    }
}

#[test]
fn every_start_without_acls_warns_that_every_request_is_allowed() {
    let mut dev = Server::start(&["--dev"]);
    dev.restart();
    let logs = dev.logs();
    assert_eq!(
        logs.matches(ACLS_DISABLED_WARNING).count(),
        2,
        "one warning per start:\n{logs}"
    );
    let default = Server::start(&[]);
    assert!(
        !default.logs().contains(ACLS_DISABLED_WARNING),
        "ACLs are on by default:\n{}",
        default.logs()
    );
    assert!(
        default.token().is_some(),
        "the first start writes a bootstrap token"
    );
}

#[test]
fn consul_habits_work_and_flags_belong_to_their_commands() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let host_port = server.base.trim_start_matches("http://").to_string();
    let token = server.token().expect("a bootstrap token");
    let td = server.trust_domain();

    // Consul's variables, and an address without a scheme.
    let out = run_meshca(
        &["connect", "ca", "roots"],
        &[
            ("CONSUL_HTTP_ADDR", host_port.as_str()),
            ("CONSUL_HTTP_TOKEN", token.as_str()),
        ],
        dir.path(),
        CLIENT_TIMEOUT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&td), "{}", text(&out.stdout));

    // Go-style flags: one dash, `=value`.
    let out = run_meshca(
        &[
            "connect",
            "ca",
            "get-config",
            &format!("-http-addr={host_port}"),
            &format!("-token={token}"),
        ],
        &[],
        dir.path(),
        CLIENT_TIMEOUT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("LeafCertTTL"),
        "{}",
        text(&out.stdout)
    );

    // A flag that cannot apply is an error, named.
    let out = run_meshca(
        &["server", "-dev", "-data-dir=elsewhere", "-http-port=0"],
        &[],
        dir.path(),
        CLIENT_TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--dev keeps the store in memory"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.path().join("elsewhere").exists());
    let out = run_meshca(&["server", "--token", "x"], &[], dir.path(), CLIENT_TIMEOUT);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--token"),
        "{}",
        text(&out.stderr)
    );

    // The server's help lists the server's flags only.
    let out = run_meshca(&["server", "--help"], &[], dir.path(), CLIENT_TIMEOUT);
    let help = text(&out.stdout);
    assert!(
        help.contains("--data-dir") && help.contains("--primary-address"),
        "{help}"
    );
    assert!(
        !help.contains("--http-addr") && !help.contains("--token"),
        "{help}"
    );
}

#[test]
fn a_changed_ca_config_in_the_file_is_reported_not_silently_ignored() {
    let config = |ttl: &str| json!({"connect": {"ca_config": {"leaf_cert_ttl": ttl}}});
    let mut server = Server::start_with_config(&config("24h"), &[]);
    const SEEDS: &str = "only seed a new CA";
    assert!(!server.logs().contains(SEEDS), "{}", server.logs());
    server.stop();
    std::fs::write(server.dir().join("config.json"), config("48h").to_string()).unwrap();
    server.start_again();
    assert!(server.logs().contains(SEEDS), "{}", server.logs());
    assert_eq!(server.config()["Config"]["LeafCertTTL"], json!("24h0m0s"));
}

#[test]
fn set_config_merge_changes_one_key_and_keeps_the_others() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ttl = dir.path().join("ttl.json");
    std::fs::write(
        &ttl,
        json!({"Provider": "consul", "Config": {"LeafCertTTL": "24h"}}).to_string(),
    )
    .unwrap();
    assert!(set_config(&server, dir.path(), &ttl).status.success());
    let root_before = server.roots()["ActiveRootID"].clone();

    let key = dir.path().join("key.json");
    std::fs::write(
        &key,
        json!({"Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}}).to_string(),
    )
    .unwrap();
    let file = key.to_str().unwrap();
    let out = client(
        &server,
        dir.path(),
        &[
            "connect",
            "ca",
            "set-config",
            "--config-file",
            file,
            "--merge",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = server.config()["Config"].clone();
    assert_eq!(config["LeafCertTTL"], json!("24h0m0s"), "kept: {config}");
    assert_eq!(config["PrivateKeyBits"], json!(384), "{config}");
    assert_ne!(
        server.roots()["ActiveRootID"],
        root_before,
        "the key change rotated"
    );

    // Without --merge the whole configuration is replaced, as in Consul.
    let file = ttl.to_str().unwrap();
    std::fs::write(
        &ttl,
        json!({"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}})
            .to_string(),
    )
    .unwrap();
    assert!(client(
        &server,
        dir.path(),
        &["connect", "ca", "set-config", "--config-file", file]
    )
    .status
    .success());
    assert_eq!(server.config()["Config"]["LeafCertTTL"], json!("72h0m0s"));
}

#[test]
fn a_slow_answer_shows_progress_on_a_terminal_only() {
    // A server that takes 2.5 s to answer, for one request each.
    let slow = |port: u16| {
        let script = format!(
            "import http.server, time\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20   def do_GET(self):\n\
             \x20       time.sleep(2.5)\n\
             \x20       body = b'{{\"Roots\": []}}'\n\
             \x20       self.send_response(200)\n\
             \x20       self.send_header('Content-Length', str(len(body)))\n\
             \x20       self.end_headers()\n\
             \x20       self.wfile.write(body)\n\
             \x20   def log_message(self, *a): pass\n\
             s = http.server.HTTPServer(('127.0.0.1', {port}), H)\n\
             print('listening', flush=True)\n\
             s.handle_request()\n"
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Returns once the server is bound (it says so).
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening");
        child
    };
    let free_port = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();

    // On a terminal (script(1) gives the command a pseudo-terminal).
    let port = free_port();
    let mut server = slow(port);
    let cmd = format!("{} connect ca roots", common::BIN);
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("MESHCA_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let _ = server.wait();
    let seen = text(&out.stdout);
    assert!(out.status.success(), "{seen}");
    assert!(seen.contains("waiting for the server… 2s"), "{seen:?}");

    // Not on a terminal: only the answer.
    let port = free_port();
    let mut server = slow(port);
    let addr = format!("127.0.0.1:{port}");
    let out = run_meshca(
        &["connect", "ca", "roots"],
        &[("MESHCA_HTTP_ADDR", addr.as_str())],
        dir.path(),
        CLIENT_TIMEOUT,
    );
    let _ = server.wait();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("waiting"),
        "{}",
        text(&out.stderr)
    );
}
