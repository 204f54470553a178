//! A real etcd cluster for tests: `etcd` members (Debian's `etcd-server`)
//! on free loopback ports, each with its own data directory, stopped when
//! dropped. Members can be killed and started again. Shared by the
//! workspace's end-to-end tests and the etcd store crate's tests (which
//! include this file by path).
//!
//! With [`EtcdCluster::start_tls`] the members serve their client URLs
//! over TLS and ask clients for certificates.
//!
//! The binary comes from `MESHCA_ETCD`, else `etcd` on PATH.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test support: each test uses a part

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    tls: Option<ServerTls>,
    dir: tempfile::TempDir,
}

/// What the members of a TLS cluster serve their client URLs with.
#[derive(Clone)]
pub struct ServerTls {
    /// The members' certificate (valid for 127.0.0.1) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA a client's certificate must be signed by (`--client-cert-auth`).
    pub client_ca: PathBuf,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plain HTTP `/health` (and metrics), also when the client URL is TLS.
    metrics_port: u16,
    child: Option<Child>,
}

/// Where the `etcd` binary is.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("MESHCA_ETCD").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

/// `n` distinct free ports. The listeners are held until all are picked:
/// the kernel may hand a port it has just taken back out again, and two
/// members on one port fail to start ("duplicate url").
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("the bound address").port())
        .collect()
}

/// Tries at starting a cluster: a port picked free can be taken by another
/// test before etcd binds it.
const START_ATTEMPTS: usize = 3;

impl EtcdCluster {
    /// Starts `size` members and waits (at most 30 s) until the cluster
    /// has a leader and answers on every member. A member that lost its
    /// port to another process between picking and binding makes the whole
    /// cluster start again on new ports.
    pub fn start(size: usize) -> Self {
        Self::start_with(size, None)
    }

    /// [`EtcdCluster::start`], the client URLs served over TLS with `tls`.
    pub fn start_tls(size: usize, tls: ServerTls) -> Self {
        Self::start_with(size, Some(tls))
    }

    fn start_with(size: usize, tls: Option<ServerTls>) -> Self {
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Self::on_free_ports(size, tls.clone());
            for i in 0..size {
                cluster.spawn(i);
            }
            let unhealthy =
                (0..size).find(|&i| !cluster.healthy_within(i, Duration::from_secs(30)));
            match unhealthy {
                None => return cluster,
                Some(i) if attempt < START_ATTEMPTS && cluster.lost_a_port(i) => continue,
                Some(i) => cluster.not_healthy(i, Duration::from_secs(30)),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The members, not started, each on three ports of its own.
    fn on_free_ports(size: usize, tls: Option<ServerTls>) -> Self {
        let ports = free_ports(3 * size);
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                metrics_port: ports[3 * i + 2],
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            members,
            initial_cluster,
            token: format!("meshca-test-{}", std::process::id()),
            tls,
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// Member `i` could not bind one of its ports.
    fn lost_a_port(&self, i: usize) -> bool {
        self.log(i).contains("address already in use")
    }

    fn spawn(&mut self, i: usize) {
        let data = self.dir.path().join(&self.members[i].name);
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .expect("an etcd log file");
        let m = &self.members[i];
        let client = self.client_url(m);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let metrics = format!("http://127.0.0.1:{}", m.metrics_port);
        let mut etcd = Command::new(etcd_binary());
        if let Some(tls) = &self.tls {
            etcd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth");
        }
        let child = etcd
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-metrics-urls",
                &metrics,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("starting etcd (apt-get install etcd-server)");
        self.members[i].child = Some(child);
    }

    /// Waits until member `i` reports itself healthy (`/health`: it has a
    /// leader and answers reads).
    pub fn wait_healthy(&self, i: usize, timeout: Duration) {
        if !self.healthy_within(i, timeout) {
            self.not_healthy(i, timeout);
        }
    }

    fn healthy_within(&self, i: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.healthy(i) {
                return true;
            }
            if self.lost_a_port(i) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn not_healthy(&self, i: usize, timeout: Duration) -> ! {
        panic!(
            "etcd member {} not healthy within {timeout:?}; log:\n{}",
            self.members[i].name,
            self.log(i)
        );
    }

    /// `GET /health` on member `i` (its plain-HTTP metrics URL) answers
    /// `"health":"true"`.
    pub fn healthy(&self, i: usize) -> bool {
        use std::io::{Read, Write};
        let addr = ("127.0.0.1", self.members[i].metrics_port);
        let Ok(mut stream) = TcpStream::connect(addr) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
        let request = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    /// `http://127.0.0.1:<client port>` of every member (`https://` with TLS).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| self.client_url(m)).collect()
    }

    fn client_url(&self, m: &Member) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", m.client_port)
    }

    /// SIGKILLs member `i` (its data stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory and ports.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
