//! Shared helpers of the end-to-end tests: start the real `meshca` binary on
//! 127.0.0.1 with a throw-away data directory, talk HTTP to it, make CSRs,
//! and verify chains with `openssl verify` and with Python's `cryptography`.
//!
//! Every helper panics with the server's log on failure, so a failing test
//! shows what the server said.

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

use rcgen::{
    CertificateParams, DistinguishedName, KeyPair, SanType, SignatureAlgorithm,
    PKCS_ECDSA_P256_SHA256,
};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub mod tls;

/// The binary under test, built by cargo for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_meshca");

/// How long a server may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The line `meshca server` logs once it accepts connections.
const LISTENING: &str = "meshca listening on http://";

/// What every server start must log while ACLs are not implemented.
/// What a server with ACLs off logs at every start.
pub const ACLS_DISABLED_WARNING: &str = "ACLs are disabled: every API request is allowed";

/// The file the first start writes the management token to.
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap-token";

/// Proxy variables a developer's shell may carry: requests to 127.0.0.1 must
/// never go through a proxy, in our client or in the `meshca` client commands.
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A `meshca server` child process. Killed (SIGKILL) on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    dir: TempDir,
    args: Vec<String>,
    logs: Arc<Mutex<String>>,
    http: Http,
    /// Extra environment variables of every (re)start, see [`Server::set_env`].
    envs: Vec<(String, String)>,
}

impl Server {
    /// Starts `meshca server --data-dir <tmp>/data --client 127.0.0.1
    /// --http-port 0 <args>` and waits for its listening line.
    pub fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        Self::start_in(dir, args)
    }

    /// Like [`Server::start`], with `config` written to `<tmp>/config.json`
    /// and passed as `--config-file`.
    pub fn start_with_config(config: &Value, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).expect("writing the config file");
        let path = path.to_str().expect("UTF-8 temp path").to_string();
        let mut all = vec!["--config-file", path.as_str()];
        all.extend_from_slice(args);
        Self::start_in(dir, &all)
    }

    /// Like [`Server::start`] in a directory the test prepared (its `data`
    /// subdirectory is the data dir, e.g. a small file system mounted there).
    pub fn start_in(dir: TempDir, args: &[&str]) -> Server {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let logs = Arc::new(Mutex::new(String::new()));
        let (child, base) = spawn_server(dir.path(), &args, &[], &logs);
        let mut server = Server {
            child,
            base,
            dir,
            args,
            logs,
            http: Http::new(),
            envs: Vec::new(),
        };
        server.use_bootstrap_token();
        server
    }

    /// The temporary directory holding the data dir and config files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `--data-dir` the server was given.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the server wrote to stderr so far (all its runs).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.logs().contains(needle))
    }

    /// Sends the management token the server wrote to its data dir (if it
    /// wrote one) with every request of [`Server::get`] and friends.
    fn use_bootstrap_token(&mut self) {
        let path = self.data_dir().join(BOOTSTRAP_TOKEN_FILE);
        let token = std::fs::read_to_string(path)
            .ok()
            .map(|t| t.trim().to_string());
        self.http = Http::with_token(token);
    }

    /// The management token the requests of this server carry, if any.
    pub fn token(&self) -> Option<String> {
        self.http.token.clone()
    }

    /// Makes the requests of this server carry `token` (or none).
    pub fn set_token(&mut self, token: Option<&str>) {
        self.http = Http::with_token(token.map(str::to_string));
    }

    /// A client that sends this server's token, for threads and loops.
    pub fn http(&self) -> Http {
        self.http.clone()
    }

    /// `method path` with `token` (or no token) instead of the server's.
    pub fn request_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Resp {
        Http::with_token(token.map(str::to_string)).send(method, &self.url(path), body)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asserts the process is running and answers `/v1/health` with 200.
    pub fn assert_alive(&mut self) {
        assert!(self.is_running(), "server exited; logs:\n{}", self.logs());
        let r = self.get("/v1/health");
        assert_eq!(r.status, 200, "health: {r:?}\nlogs:\n{}", self.logs());
    }

    /// Stops the server with SIGTERM (a graceful shutdown) and starts it
    /// again with the same arguments and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.respawn();
    }

    /// Kills the server with SIGKILL (no chance to flush anything) and
    /// starts it again with the same arguments and data directory.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.respawn();
    }

    /// Sends the signal `name` (`TERM`, `INT`) without waiting.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        // `kill` as a shell builtin: no libc (unsafe) and no procps needed.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{name} {pid}")])
            .status()
            .expect("running sh -c kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the server") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "server did not exit within {STOP_TIMEOUT:?} of SIGTERM; logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn respawn(&mut self) {
        let (child, base) = spawn_server(self.dir.path(), &self.args, &self.envs, &self.logs);
        self.child = child;
        self.base = base;
        self.use_bootstrap_token();
    }

    /// Sets (`Some`) or removes (`None`) an environment variable of the
    /// server's next starts (e.g. `MESHCA_FAILPOINT`); the running process
    /// is not affected.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.envs.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.envs.push((key.to_string(), v.to_string()));
        }
    }

    /// The process ID of the running server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL and reaps it, without restarting.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the process to exit on its own; `None` if it is
    /// still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the server") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again (same arguments, data directory and the
    /// environment of [`Server::set_env`]) after its process has exited.
    pub fn start_again(&mut self) {
        assert!(
            !self.is_running(),
            "start_again: the server is still running; logs:\n{}",
            self.logs()
        );
        self.respawn();
    }

    /// [`Server::start_again`] that reports a server that refuses to start
    /// (exits) or hangs instead of panicking. On failure no process runs.
    pub fn try_start_again(&mut self) -> Result<(), StartFailure> {
        assert!(
            !self.is_running(),
            "try_start_again: the server is still running; logs:\n{}",
            self.logs()
        );
        let (child, base) = try_spawn_server(self.dir.path(), &self.args, &self.envs, &self.logs)?;
        self.child = child;
        self.base = base;
        self.use_bootstrap_token();
        Ok(())
    }

    /// [`Server::try_start_again`] with other server arguments (the same
    /// data dir); later restarts keep them.
    pub fn try_start_again_with(&mut self, args: &[&str]) -> Result<(), StartFailure> {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self.try_start_again()
    }

    /// `PUT path` that reports a transport failure (the server died, the
    /// connection dropped) as `Err` instead of panicking.
    pub fn try_put(&self, path: &str, body: impl Into<Vec<u8>>) -> Result<Resp, String> {
        self.http
            .try_send(reqwest::Method::PUT, &self.url(path), Some(body.into()))
    }

    /// [`Server::put_config`] that reports a transport failure as `Err`.
    pub fn try_put_config(&self, config: Value) -> Result<Resp, String> {
        let body = serde_json::json!({"Provider": "consul", "Config": config});
        self.try_put("/v1/connect/ca/configuration", body.to_string())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.http.send(reqwest::Method::GET, &self.url(path), None)
    }

    pub fn put(&self, path: &str, body: impl Into<Vec<u8>>) -> Resp {
        self.http
            .send(reqwest::Method::PUT, &self.url(path), Some(body.into()))
    }

    pub fn post(&self, path: &str, body: impl Into<Vec<u8>>) -> Resp {
        self.http
            .send(reqwest::Method::POST, &self.url(path), Some(body.into()))
    }

    pub fn request(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Resp {
        self.http.send(method, &self.url(path), body)
    }

    /// `GET path`, asserting 200, as JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
        r.json()
    }

    /// `GET /v1/connect/ca/roots` as JSON.
    pub fn roots(&self) -> Value {
        self.get_json("/v1/connect/ca/roots")
    }

    /// `GET /v1/connect/ca/configuration` as JSON.
    pub fn config(&self) -> Value {
        self.get_json("/v1/connect/ca/configuration")
    }

    /// `PUT /v1/connect/ca/configuration` with a `Config` for the built-in
    /// provider.
    pub fn put_config(&self, config: Value) -> Resp {
        let body = serde_json::json!({"Provider": "consul", "Config": config});
        self.put("/v1/connect/ca/configuration", body.to_string())
    }

    /// The trust domain, from the roots.
    pub fn trust_domain(&self) -> String {
        self.roots()["TrustDomain"]
            .as_str()
            .expect("TrustDomain is a string")
            .to_string()
    }

    /// `POST /v1/connect/ca/sign` with `{"CSR": csr}`.
    pub fn sign(&self, csr: &str) -> Resp {
        let body = serde_json::json!({ "CSR": csr });
        self.post("/v1/connect/ca/sign", body.to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why a server did not start: it exited (refused), or it neither listened
/// nor exited within [`START_TIMEOUT`]. `logs` is what this start wrote.
#[derive(Debug)]
pub enum StartFailure {
    Exited {
        status: std::process::ExitStatus,
        logs: String,
    },
    TimedOut {
        logs: String,
    },
}

/// Spawns `meshca server` in `dir` and waits for its listening line; the
/// server's stderr keeps being appended to `logs` by a reader thread.
fn spawn_server(
    dir: &Path,
    args: &[String],
    envs: &[(String, String)],
    logs: &Arc<Mutex<String>>,
) -> (Child, String) {
    try_spawn_server(dir, args, envs, logs)
        .unwrap_or_else(|failure| panic!("meshca server did not start; args {args:?}: {failure:?}"))
}

/// [`spawn_server`] that reports a server that exits or hangs instead of
/// listening as a [`StartFailure`].
fn try_spawn_server(
    dir: &Path,
    args: &[String],
    envs: &[(String, String)],
    logs: &Arc<Mutex<String>>,
) -> Result<(Child, String), StartFailure> {
    let logged_before = logs.lock().unwrap_or_else(|p| p.into_inner()).len();
    let data_dir = dir.join("data");
    let mut cmd = Command::new(BIN);
    cmd.arg("server");
    // --dev keeps the store in memory and refuses a data dir.
    if !args.iter().any(|a| a == "--dev") {
        cmd.arg("--data-dir").arg(&data_dir);
    }
    cmd.args(["--client", "127.0.0.1", "--http-port", "0"])
        .args(args)
        .current_dir(dir)
        // The log assertions need the default `info` level.
        .env_remove("RUST_LOG")
        // Crash injection only where a test asks for it.
        .env_remove("MESHCA_FAILPOINT")
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning meshca server");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel::<String>();
    let sink = logs.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut buf = Vec::new();
        let mut tx = Some(tx);
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf).into_owned();
            // Store the line before announcing the address, so that the
            // log is complete up to the listening line when `start` returns.
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_str(&line);
            if let Some(addr) = listening_addr(&line) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
        }
        // Dropping `tx` here tells a waiting `spawn_server` that the process
        // closed stderr (exited) without ever listening.
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(addr) => Ok((child, format!("http://{addr}"))),
        Err(e) => {
            let timed_out = matches!(e, mpsc::RecvTimeoutError::Timeout);
            let _ = child.kill();
            let status = child.wait().expect("waiting for the server");
            // The reader stored every line before closing the channel; after
            // a timeout, give it a moment to store the last ones.
            if timed_out {
                std::thread::sleep(Duration::from_millis(100));
            }
            let text = logs.lock().unwrap_or_else(|p| p.into_inner())[logged_before..].to_string();
            Err(if timed_out {
                StartFailure::TimedOut { logs: text }
            } else {
                StartFailure::Exited { status, logs: text }
            })
        }
    }
}

/// `127.0.0.1:PORT` from the listening line.
fn listening_addr(line: &str) -> Option<String> {
    let rest = &line[line.find(LISTENING)? + LISTENING.len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    (!addr.is_empty()).then_some(addr)
}

/// Runs `meshca server --data-dir <data_dir> --client 127.0.0.1
/// --http-port 0 <args>` to completion with a deadline: for a server that
/// must refuse to start.
pub fn run_server_once(data_dir: &Path, args: &[&str], cwd: &Path, timeout: Duration) -> Output {
    let data = data_dir.to_str().expect("UTF-8 path");
    let mut all = vec![
        "server",
        "--data-dir",
        data,
        "--client",
        "127.0.0.1",
        "--http-port",
        "0",
    ];
    all.extend_from_slice(args);
    run_meshca(&all, &[], cwd, timeout)
}

/// `meshca keygen --out <dir>/<name>`; returns the path as a string.
pub fn keygen(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let out = run_meshca(
        &["keygen", "--out", path.to_str().expect("UTF-8 path")],
        &[],
        dir,
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path.to_str().expect("UTF-8 path").to_string()
}

/// Runs `meshca <args>` to completion with a deadline (the process is killed
/// past it), without a server. For commands that must fail fast.
pub fn run_meshca(args: &[&str], envs: &[(&str, &str)], cwd: &Path, timeout: Duration) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove("MESHCA_HTTP_ADDR")
        .env_remove("MESHCA_HTTP_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawning meshca");
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("waiting for meshca").is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collecting output");
            panic!(
                "meshca {args:?} did not finish within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collecting output")
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_string())
    }

    /// `X-Consul-Index`, which must be present and a number.
    pub fn index(&self) -> u64 {
        self.header("x-consul-index")
            .unwrap_or_else(|| panic!("no X-Consul-Index in {self:?}"))
            .parse()
            .expect("X-Consul-Index is a number")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts an error response: `status`, an `X-Meshca-Error` code, a
    /// plain-text body.
    pub fn assert_error(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "{self:?}");
        let code = self.header("x-meshca-error");
        assert!(
            code.as_deref().is_some_and(|c| !c.is_empty()),
            "error response without X-Meshca-Error: {self:?}"
        );
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("text/plain")),
            "error body is not text/plain: {self:?}"
        );
        self
    }

    /// The `X-Meshca-Error` code.
    pub fn code(&self) -> String {
        self.header("x-meshca-error").unwrap_or_default()
    }
}

/// Sends one request over a raw TCP connection, writing the body from a
/// separate thread while the response is read, and ignoring write errors.
///
/// For bodies the server refuses before reading them whole (413): it then
/// answers and closes, and a client that stops at the failed write (as
/// reqwest/hyper do) reports a reset instead of the answer.
pub fn raw_request(base: &str, method: &str, path: &str, body: Vec<u8>) -> (u16, String, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let stream = std::net::TcpStream::connect(addr).expect("connecting to the server");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("setting a read timeout");
    let mut writer = stream.try_clone().expect("cloning the stream");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let sender = std::thread::spawn(move || {
        // The server may close before taking the whole body: that is the
        // behaviour under test, so write errors are expected.
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&body);
    });
    let mut reader = stream;
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            // A reset after the answer arrived ends the read like EOF.
            Err(e) if !response.is_empty() => {
                let _ = e;
                break;
            }
            Err(e) => panic!("{method} {path}: no response: {e}"),
        }
    }
    let _ = sender.join();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: incomplete response {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head:?}"));
    (status, head.to_lowercase(), body.to_string())
}

/// A blocking HTTP client that never uses a proxy.
#[derive(Clone)]
pub struct Http {
    client: reqwest::blocking::Client,
    /// Sent as `X-Consul-Token` when set.
    token: Option<String>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Self {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            // Longer than any blocking query a test makes.
            .timeout(Duration::from_secs(120))
            .build()
            .expect("building the HTTP client");
        Self {
            client,
            token: None,
        }
    }

    /// A client that sends `token` as `X-Consul-Token` (none with `None`).
    pub fn with_token(token: Option<String>) -> Self {
        Self {
            token,
            ..Self::new()
        }
    }

    pub fn send(&self, method: reqwest::Method, url: &str, body: Option<Vec<u8>>) -> Resp {
        self.try_send(method.clone(), url, body)
            .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"))
    }

    /// Like [`Http::send`], with a transport failure (connection refused or
    /// dropped, body cut short) as `Err` instead of a panic.
    pub fn try_send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Resp, String> {
        let mut req = self.client.request(method.clone(), url);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .text()
            .map_err(|e| format!("reading the body: {e:?}"))?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

// ---------------------------------------------------------------------------
// SPIFFE IDs and CSRs
// ---------------------------------------------------------------------------

pub fn service_uri(td: &str, dc: &str, service: &str) -> String {
    format!("spiffe://{td}/ns/default/dc/{dc}/svc/{service}")
}

/// A fresh P-256 key.
pub fn p256_key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generating a P-256 key")
}

/// A CSR signed by `key` with the given SANs, after `edit` adjusts the
/// parameters (CA flags, EKUs, subject, ...).
pub fn csr_with(
    key: &KeyPair,
    sans: Vec<SanType>,
    edit: impl FnOnce(&mut CertificateParams),
) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    edit(&mut params);
    params
        .serialize_request(key)
        .expect("serialising the CSR")
        .pem()
        .expect("PEM-encoding the CSR")
}

pub fn uri_san(uri: &str) -> SanType {
    SanType::URI(uri.try_into().expect("an IA5 URI"))
}

pub fn dns_san(name: &str) -> SanType {
    SanType::DnsName(name.try_into().expect("an IA5 DNS name"))
}

/// A P-256 CSR whose only SAN is `uri`.
pub fn csr_for_uri(uri: &str) -> String {
    csr_with(&p256_key(), vec![uri_san(uri)], |_| {})
}

/// A CSR for `uri` with a key of `alg`.
pub fn csr_for_uri_with(alg: &'static SignatureAlgorithm, uri: &str) -> String {
    let key = KeyPair::generate_for(alg).expect("generating a key");
    csr_with(&key, vec![uri_san(uri)], |_| {})
}

/// A CSR made by the `openssl req` command: `newkey` are the key options
/// (e.g. `["-newkey", "rsa:1024"]`), `san` the `subjectAltName` value
/// (e.g. `URI:spiffe://...`).
pub fn openssl_csr(newkey: &[&str], san: &str) -> String {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let out = Command::new("openssl")
        .arg("req")
        .arg("-new")
        .arg("-nodes")
        .args(newkey)
        .args(["-keyout", "key.pem", "-out", "csr.pem", "-subj", "/CN=e2e"])
        .args(["-addext", &format!("subjectAltName={san}")])
        .current_dir(dir.path())
        .output()
        .expect("running openssl req");
    assert!(
        out.status.success(),
        "openssl req {newkey:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(dir.path().join("csr.pem")).expect("reading csr.pem")
}

// ---------------------------------------------------------------------------
// PEM and certificates
// ---------------------------------------------------------------------------

/// Splits a PEM bundle into its blocks, each ending in a newline.
pub fn pem_blocks(bundle: &str) -> Vec<String> {
    let end = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = bundle;
    while let Some(i) = rest.find(end) {
        let block = rest[..i + end.len()].trim_start();
        out.push(format!("{block}\n"));
        rest = &rest[i + end.len()..];
    }
    assert!(
        rest.trim().is_empty(),
        "trailing text after the last certificate: {rest:?}"
    );
    out
}

/// The concatenated `RootCert`s of a roots response.
pub fn roots_bundle(roots: &Value) -> String {
    roots["Roots"]
        .as_array()
        .expect("Roots is an array")
        .iter()
        .map(|r| r["RootCert"].as_str().expect("RootCert is a string"))
        .collect()
}

/// The active root of a roots response.
pub fn active_root(roots: &Value) -> &Value {
    let id = &roots["ActiveRootID"];
    roots["Roots"]
        .as_array()
        .expect("Roots is an array")
        .iter()
        .find(|r| &r["ID"] == id)
        .unwrap_or_else(|| panic!("ActiveRootID not among the roots: {roots}"))
}

/// What the tests check about a certificate, extracted with x509-parser.
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub subject_is_empty: bool,
    pub subject_cn: Option<String>,
    pub issuer_cn: Option<String>,
    /// `None` when there is no SAN extension.
    pub san_critical: Option<bool>,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub emails: Vec<String>,
    pub other_san_count: usize,
    /// `None` when there is no basicConstraints extension.
    pub ca: Option<bool>,
    pub path_len: Option<u32>,
    pub digital_signature: bool,
    pub key_encipherment: bool,
    pub key_cert_sign: bool,
    /// `None` when there is no extendedKeyUsage extension.
    pub eku: Option<Vec<String>>,
    pub not_before: i64,
    pub not_after: i64,
    /// Lower-case colon hex, as in `IssuedCert.SerialNumber`.
    pub serial: String,
    pub subject_key_id: Option<Vec<u8>>,
    pub authority_key_id: Option<Vec<u8>>,
    pub key_bits: usize,
    pub key_is_ec: bool,
}

/// Parses the first certificate of `pem`.
pub fn cert_facts(pem: &str) -> CertFacts {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::public_key::PublicKey;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("a PEM certificate");
    let cert = block.parse_x509().expect("a parsable certificate");
    let cn = |name: &x509_parser::x509::X509Name| {
        name.iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok().map(str::to_string))
    };
    let mut facts = CertFacts {
        subject_is_empty: cert.subject().iter().next().is_none(),
        subject_cn: cn(cert.subject()),
        issuer_cn: cn(cert.issuer()),
        san_critical: None,
        uris: vec![],
        dns: vec![],
        emails: vec![],
        other_san_count: 0,
        ca: None,
        path_len: None,
        digital_signature: false,
        key_encipherment: false,
        key_cert_sign: false,
        eku: None,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        serial: serial_as_consul_prints_it(cert.raw_serial()),
        subject_key_id: None,
        authority_key_id: None,
        key_bits: 0,
        key_is_ec: false,
    };
    match cert.public_key().parsed().expect("a parsable public key") {
        PublicKey::EC(p) => {
            facts.key_is_ec = true;
            facts.key_bits = p.key_size();
        }
        PublicKey::RSA(k) => facts.key_bits = k.key_size(),
        _ => {}
    }
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                facts.san_critical = Some(ext.critical);
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => facts.uris.push(u.to_string()),
                        GeneralName::DNSName(d) => facts.dns.push(d.to_string()),
                        GeneralName::RFC822Name(e) => facts.emails.push(e.to_string()),
                        _ => facts.other_san_count += 1,
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => {
                facts.ca = Some(bc.ca);
                facts.path_len = bc.path_len_constraint;
            }
            ParsedExtension::KeyUsage(ku) => {
                facts.digital_signature = ku.digital_signature();
                facts.key_encipherment = ku.key_encipherment();
                facts.key_cert_sign = ku.key_cert_sign();
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let mut names = Vec::new();
                let flags = [
                    (eku.any, "any"),
                    (eku.server_auth, "serverAuth"),
                    (eku.client_auth, "clientAuth"),
                    (eku.code_signing, "codeSigning"),
                    (eku.email_protection, "emailProtection"),
                    (eku.time_stamping, "timeStamping"),
                    (eku.ocsp_signing, "ocspSigning"),
                ];
                for (set, name) in flags {
                    if set {
                        names.push(name.to_string());
                    }
                }
                names.extend(eku.other.iter().map(|o| o.to_id_string()));
                facts.eku = Some(names);
            }
            ParsedExtension::SubjectKeyIdentifier(id) => {
                facts.subject_key_id = Some(id.0.to_vec());
            }
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                facts.authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            _ => {}
        }
    }
    facts
}

/// Runs `openssl` with `args` in `dir` and returns (success, stdout+stderr).
pub fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl (is it installed?)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `openssl verify -x509_strict -purpose <purpose> -CAfile roots
/// [-untrusted intermediates] leaf`; `purpose` is `sslclient` or
/// `sslserver`.
pub fn openssl_verify(
    leaf_pem: &str,
    intermediates_pem: &str,
    roots_pem: &str,
    purpose: &str,
) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("writing a PEM file");
    };
    write("leaf.pem", leaf_pem);
    write("roots.pem", roots_pem);
    write("intermediates.pem", intermediates_pem);
    let mut args = vec![
        "verify",
        "-x509_strict",
        "-purpose",
        purpose,
        "-CAfile",
        "roots.pem",
    ];
    if !intermediates_pem.trim().is_empty() {
        args.extend(["-untrusted", "intermediates.pem"]);
    }
    args.push("leaf.pem");
    let (ok, text) = openssl(dir.path(), &args);
    if ok && text.contains("leaf.pem: OK") {
        Ok(())
    } else {
        Err(text)
    }
}

/// Verifies with `tests/verify_chain.py` (pyca/cryptography's verifier):
/// the client verifier always, the server verifier for `server_name` too.
pub fn python_verify(
    leaf_pem: &str,
    intermediates_pem: &str,
    roots_pem: &str,
    server_name: Option<&str>,
) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("leaf.pem"), leaf_pem).expect("writing leaf.pem");
    std::fs::write(path("roots.pem"), roots_pem).expect("writing roots.pem");
    std::fs::write(path("intermediates.pem"), intermediates_pem)
        .expect("writing intermediates.pem");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/verify_chain.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(path("roots.pem"))
        .arg(path("intermediates.pem"))
        .arg(path("leaf.pem"));
    if let Some(name) = server_name {
        cmd.args(["--server-name", name]);
    }
    let out = cmd.output().expect("running python3 (is it installed?)");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "exit {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Verifies an `IssuedCert.CertPEM` (leaf followed by intermediates) against
/// `roots_pem` with openssl for both purposes and with Python.
pub fn verify_issued_chain(cert_pem: &str, roots_pem: &str, server_name: Option<&str>) {
    let blocks = pem_blocks(cert_pem);
    assert!(
        blocks.len() >= 2,
        "CertPEM must hold the leaf and its intermediate: {cert_pem}"
    );
    let intermediates: String = blocks[1..].concat();
    for purpose in ["sslclient", "sslserver"] {
        if let Err(e) = openssl_verify(&blocks[0], &intermediates, roots_pem, purpose) {
            panic!("openssl verify -purpose {purpose} failed:\n{e}\nchain:\n{cert_pem}");
        }
    }
    if let Err(e) = python_verify(&blocks[0], &intermediates, roots_pem, server_name) {
        panic!("Python verifier failed:\n{e}\nchain:\n{cert_pem}");
    }
}

/// `pri-<8 base36>.consul.ca.<first 8 of cluster id>.consul`.
pub fn is_root_cn(cn: &str, cluster_id: &str) -> bool {
    let Some(rest) = cn.strip_prefix("pri-") else {
        return false;
    };
    let Some((random, tail)) = rest.split_once('.') else {
        return false;
    };
    random.len() == 8
        && random
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        && tail == format!("consul.ca.{}.consul", &cluster_id[..8])
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Rotation helpers
// ---------------------------------------------------------------------------

/// The DER pieces of a certificate that identify it, for byte-exact
/// comparisons (a cross-signed certificate must copy the subject and key of
/// the root it re-issues).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertDer {
    pub subject: Vec<u8>,
    pub issuer: Vec<u8>,
    pub spki: Vec<u8>,
    pub serial: Vec<u8>,
}

/// A DER serial's bytes as `IssuedCert.SerialNumber` prints them: the
/// number's colon hex, without the zero byte DER puts before a serial whose
/// first bit is set (Vault picks such serials about once in 500 leaves).
pub fn serial_as_consul_prints_it(der: &[u8]) -> String {
    let first = der
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(der.len().saturating_sub(1));
    der[first..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The subject, issuer, SubjectPublicKeyInfo and serial of the first
/// certificate of `pem`, as DER.
pub fn cert_der(pem: &str) -> CertDer {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("a PEM certificate");
    let cert = block.parse_x509().expect("a parsable certificate");
    CertDer {
        subject: cert.subject().as_raw().to_vec(),
        issuer: cert.issuer().as_raw().to_vec(),
        spki: cert.public_key().raw.to_vec(),
        serial: cert.raw_serial().to_vec(),
    }
}

/// Lower-case colon hex of `bytes` (`SigningKeyID`, `ID`). Written here on
/// purpose rather than imported from meshca-core: an expected value computed
/// by the code under test could not catch a formatting bug.
pub fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The root of a roots response with `ID == id`.
pub fn root_by_id<'a>(roots: &'a Value, id: &Value) -> &'a Value {
    roots["Roots"]
        .as_array()
        .expect("Roots is an array")
        .iter()
        .find(|r| &r["ID"] == id)
        .unwrap_or_else(|| panic!("root {id} not in {roots}"))
}

/// The `IntermediateCerts` of a root as strings (empty when `null`).
pub fn intermediates_of(root: &Value) -> Vec<String> {
    match &root["IntermediateCerts"] {
        Value::Null => Vec::new(),
        Value::Array(a) => a
            .iter()
            .map(|c| c.as_str().expect("an intermediate is a string").to_string())
            .collect(),
        other => panic!("IntermediateCerts is neither null nor an array: {other}"),
    }
}

/// Verifies `cert_pem` (leaf followed by intermediates, as served) against
/// `roots_pem` alone with `openssl verify -x509_strict` for both purposes
/// and with the Python verifier; `what` names the case in the panic.
pub fn verify_chain_against(cert_pem: &str, roots_pem: &str, what: &str) {
    openssl_verify_both(cert_pem, roots_pem, what);
    let blocks = pem_blocks(cert_pem);
    python_verify(&blocks[0], &blocks[1..].concat(), roots_pem, None)
        .unwrap_or_else(|e| panic!("{what}: Python verifier: {e}"));
}

/// Seconds since the Unix epoch, from the wall clock. The `Clock` rule of
/// `clippy.toml` is for the server's code: a test that checks the validity
/// a server wrote must read the same clock the server did.
#[allow(clippy::disallowed_methods)]
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
        .try_into()
        .expect("seconds fit i64")
}

/// One chain for [`python_verify_batch`]: `cert_pem` is a served `CertPEM`
/// (leaf followed by intermediates).
#[derive(Debug, Clone)]
pub struct PyCase {
    pub name: String,
    pub cert_pem: String,
    pub roots_pem: String,
    pub server_name: Option<String>,
}

impl PyCase {
    pub fn new(name: impl Into<String>, cert_pem: &str, roots_pem: &str) -> Self {
        Self {
            name: name.into(),
            cert_pem: cert_pem.to_string(),
            roots_pem: roots_pem.to_string(),
            server_name: None,
        }
    }
}

/// Runs `tests/verify_chain.py` on every case in one Python process (through
/// `tests/verify_chains_batch.py`) and returns, per case in order, its name
/// and `Ok` or the verifier's error.
pub fn python_verify_batch(cases: &[PyCase]) -> Vec<(String, Result<(), String>)> {
    use std::io::Write;
    if cases.is_empty() {
        return Vec::new();
    }
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let mut input = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let blocks = pem_blocks(&case.cert_pem);
        assert!(!blocks.is_empty(), "{}: no certificate", case.name);
        let write = |name: &str, text: &str| {
            let path = dir.path().join(format!("{i}-{name}"));
            std::fs::write(&path, text).expect("writing a PEM file");
            path.to_str().expect("UTF-8 temp path").to_string()
        };
        let mut args = vec![
            write("roots.pem", &case.roots_pem),
            write("intermediates.pem", &blocks[1..].concat()),
            write("leaf.pem", &blocks[0]),
        ];
        if let Some(name) = &case.server_name {
            args.extend(["--server-name".to_string(), name.clone()]);
        }
        input.push(serde_json::json!({"name": case.name, "args": args}));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/verify_chains_batch.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3 (is it installed?)");
    let body = Value::Array(input).to_string();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()));
    let out = child.wait_with_output().expect("collecting python3 output");
    writer
        .join()
        .expect("the stdin writer")
        .expect("writing the cases");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: Vec<(String, Result<(), String>)> = stdout
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("verify_chains_batch.py printed {line:?}: {e}"));
            let name = v["name"].as_str().expect("name").to_string();
            let output = v["output"].as_str().unwrap_or_default().to_string();
            let result = if v["code"] == 0 {
                Ok(())
            } else {
                Err(format!("exit {}: {output}", v["code"]))
            };
            (name, result)
        })
        .collect();
    assert!(
        out.status.success() && results.len() == cases.len(),
        "verify_chains_batch.py failed ({:?}); stdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    results
}

/// [`python_verify_batch`], asserting that every case verifies.
pub fn python_verify_all(cases: &[PyCase]) {
    let failures: Vec<String> = python_verify_batch(cases)
        .into_iter()
        .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "Python verifier failures:\n{}",
        failures.join("\n")
    );
}

/// `openssl verify` of a served `CertPEM` against `roots_pem` alone, for
/// both purposes (`sslclient`, `sslserver`).
pub fn openssl_verify_both(cert_pem: &str, roots_pem: &str, what: &str) {
    let blocks = pem_blocks(cert_pem);
    assert!(blocks.len() >= 2, "{what}: CertPEM without intermediates");
    let inters = blocks[1..].concat();
    for purpose in ["sslclient", "sslserver"] {
        openssl_verify(&blocks[0], &inters, roots_pem, purpose)
            .unwrap_or_else(|e| panic!("{what}: openssl verify -purpose {purpose}: {e}"));
    }
}
