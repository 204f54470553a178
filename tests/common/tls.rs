//! TLS helpers of the end-to-end tests: the HTTPS address a server logged,
//! agent CAs and certificates made with `meshca tls … create`, and clients
//! that report whether a TLS request succeeded: `openssl s_client` and
//! Python's `ssl`.

use super::{run_meshca, wait_until, Server};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The line `meshca server` logs once it accepts HTTPS connections.
const LISTENING_TLS: &str = "meshca listening on https://";

/// How long one TLS client may take.
const CLIENT_TIMEOUT: &str = "20";

/// `127.0.0.1:PORT` of the server's HTTPS listener (logged before HTTP's).
pub fn https_addr(server: &Server) -> String {
    let logs = server.logs();
    let at = logs
        .rfind(LISTENING_TLS)
        .unwrap_or_else(|| panic!("no HTTPS listener logged:\n{logs}"));
    logs[at + LISTENING_TLS.len()..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect()
}

/// An agent CA in `dir` (`consul-agent-ca.pem`, `consul-agent-ca-key.pem`).
pub fn agent_ca(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("creating the CA directory");
    let out = run_meshca(&["tls", "ca", "create"], &[], dir, Duration::from_secs(30));
    assert!(out.status.success(), "tls ca create: {out:?}");
    (
        dir.join("consul-agent-ca.pem"),
        dir.join("consul-agent-ca-key.pem"),
    )
}

/// `meshca tls cert create <kind> <extra>` in `dir` (where the agent CA
/// is); returns the certificate and key paths it printed.
pub fn agent_cert(dir: &Path, kind: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let mut args = vec!["tls", "cert", "create", kind];
    args.extend_from_slice(extra);
    let out = run_meshca(&args, &[], dir, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tls cert create: {out:?}");
    let saved: Vec<PathBuf> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("==> Saved "))
        .map(|p| dir.join(p))
        .collect();
    assert_eq!(saved.len(), 2, "{stdout}");
    (saved[0].clone(), saved[1].clone())
}

/// What one TLS client run did: whether it got `200 OK` for
/// `GET /v1/health`, and everything it printed.
#[derive(Debug)]
pub struct TlsResult {
    pub ok: bool,
    pub output: String,
}

/// `openssl s_client` against `addr` with `args` (e.g. `-tls1_2`, `-cert`),
/// sending one request and reading the answer.
pub fn s_client(addr: &str, args: &[&str]) -> TlsResult {
    let mut child = Command::new("timeout")
        .args([CLIENT_TIMEOUT, "openssl", "s_client", "-connect", addr])
        .args(["-servername", "localhost", "-ign_eof"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl s_client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok();
    let out = child.wait_with_output().expect("openssl s_client");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    TlsResult {
        ok: output.contains("HTTP/1.1 200"),
        output,
    }
}

/// The certificate the server at `addr` serves, as PEM (from s_client).
pub fn served_cert_pem(addr: &str) -> String {
    let r = s_client(addr, &[]);
    let begin = r
        .output
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate served: {}", r.output));
    let end = r.output[begin..]
        .find("-----END CERTIFICATE-----")
        .expect("end of PEM")
        + begin
        + "-----END CERTIFICATE-----".len();
    format!("{}\n", &r.output[begin..end])
}

/// Output of `openssl x509 <args>` on a PEM certificate.
pub fn x509(dir: &Path, pem: &str, args: &[&str]) -> String {
    let path = dir.join("x509-input.pem");
    std::fs::write(&path, pem).expect("writing the certificate");
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-in"])
        .arg(&path)
        .args(args)
        .output()
        .expect("running openssl x509");
    assert!(out.status.success(), "openssl x509: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Python's `ssl` as a second client: `GET /v1/health` verifying the server
/// with `cafile` for `localhost`, presenting `cert` and `key` if given,
/// with TLS at least `min_version` (`"TLSv1_2"`/`"TLSv1_3"`).
pub fn python_get(
    addr: &str,
    cafile: &Path,
    client: Option<(&Path, &Path)>,
    min_version: &str,
) -> TlsResult {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let (cert, key) = client
        .map(|(c, k)| (c.display().to_string(), k.display().to_string()))
        .unwrap_or_default();
    let script = r#"
import socket, ssl, sys
host, port, cafile, cert, key, minv = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=cafile)
ctx.minimum_version = getattr(ssl.TLSVersion, minv)
if cert:
    ctx.load_cert_chain(cert, key)
try:
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            print(s.version(), data.split(b"\r\n")[0].decode())
except Exception as e:
    print("ERROR", type(e).__name__, e)
    sys.exit(1)
"#;
    let out = Command::new("timeout")
        .args([CLIENT_TIMEOUT, "python3", "-c", script, host, port])
        .arg(cafile)
        .args([cert.as_str(), key.as_str(), min_version])
        .output()
        .expect("running python3");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    TlsResult {
        ok: out.status.success() && output.contains("HTTP/1.1 200"),
        output,
    }
}

/// Waits (bounded) until the certificate served at `addr` has another
/// serial than `serial`; returns the new certificate.
pub fn wait_for_new_cert(dir: &Path, addr: &str, serial: &str, timeout: Duration) -> String {
    let mut current = String::new();
    let changed = wait_until(timeout, || {
        current = served_cert_pem(addr);
        x509(dir, &current, &["-serial"]) != serial
    });
    assert!(changed, "the served certificate did not change");
    current
}
