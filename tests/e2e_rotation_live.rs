//! End-to-end (issue #3): live proxies across a root rotation.
//!
//! * mTLS: a proxy that got its leaf and bundle before the rotation and one
//!   that got them after complete a real TLS 1.3 handshake (`openssl
//!   s_server` / `s_client`, both verifying the peer) in both directions,
//!   each trusting only the bundle it fetched at its own time; without the
//!   cross-signed certificate in the new proxy's chain, the old proxy
//!   refuses it.
//! * A blocking leaf query wakes up with a leaf of the new root within a few
//!   seconds of the rotation.

mod common;

use common::{
    active_root, cert_facts, intermediates_of, openssl_verify, openssl_verify_both, pem_blocks,
    python_verify_all, roots_bundle, wait_until, PyCase, Server,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bound of every wait on an openssl process.
const TLS_TIMEOUT: Duration = Duration::from_secs(15);

/// One side of the mTLS test: a leaf, its key, the intermediates it sends,
/// and the bundle it trusts, written as files.
struct Side {
    name: &'static str,
    cert: PathBuf,
    key: PathBuf,
    chain: PathBuf,
    bundle: PathBuf,
}

impl Side {
    /// Writes `issued` (an agent leaf with `PrivateKeyPEM`) and `bundle`
    /// into `dir`; `chain` overrides the intermediates it sends.
    fn new(
        dir: &Path,
        name: &'static str,
        issued: &Value,
        bundle: &str,
        chain: Option<&str>,
    ) -> Side {
        let blocks = pem_blocks(issued["CertPEM"].as_str().expect("CertPEM"));
        let write = |suffix: &str, text: &str| {
            let p = dir.join(format!("{name}-{suffix}.pem"));
            std::fs::write(&p, text).expect("writing a PEM file");
            p
        };
        let served = blocks[1..].concat();
        Side {
            name,
            cert: write("cert", &blocks[0]),
            key: write(
                "key",
                issued["PrivateKeyPEM"].as_str().expect("PrivateKeyPEM"),
            ),
            chain: write("chain", chain.unwrap_or(&served)),
            bundle: write("bundle", bundle),
        }
    }
}

/// A child process whose stdout+stderr are collected; killed on drop.
struct Proc {
    child: Child,
    out: Arc<Mutex<String>>,
    stdin: Option<ChildStdin>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning openssl");
        let out = Arc::new(Mutex::new(String::new()));
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for pipe in pipes {
            let sink = out.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = Vec::new();
                while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&String::from_utf8_lossy(&line));
                    line.clear();
                }
            });
        }
        let stdin = child.stdin.take();
        Proc { child, out, stdin }
    }

    fn output(&self) -> String {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Closes stdin and waits (bounded) for the exit; kills past it.
    fn finish(&mut self) {
        self.stdin.take();
        let done = wait_until(Duration::from_secs(5), || self.exited());
        if !done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one handshake showed.
struct Handshake {
    /// s_client printed `Verify return code: 0 (ok)`.
    client_verified: bool,
    /// The line the client sent reached the server's application layer
    /// (so the server accepted the client's certificate).
    line_arrived: bool,
    server_out: String,
    client_out: String,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "client_verified={} line_arrived={}\n--- s_server:\n{}\n--- s_client:\n{}",
            self.client_verified, self.line_arrived, self.server_out, self.client_out
        )
    }
}

/// A TLS 1.3 handshake on 127.0.0.1 between `server` (s_server, requiring
/// and verifying a client certificate against its bundle) and `client`
/// (s_client, verifying the server against its bundle), then one line from
/// the client to the server.
fn handshake(dir: &Path, server: &Side, client: &Side) -> Handshake {
    let p = |p: &PathBuf| p.to_str().expect("UTF-8 path").to_string();
    let mut s = Proc::spawn(
        Command::new("openssl")
            .args(["s_server", "-accept", "127.0.0.1:0", "-naccept", "1"])
            .args(["-tls1_3", "-x509_strict", "-Verify", "4"])
            .args(["-verify_return_error"])
            .args(["-cert", &p(&server.cert), "-key", &p(&server.key)])
            .args(["-cert_chain", &p(&server.chain)])
            .args(["-CAfile", &p(&server.bundle)])
            .current_dir(dir),
    );
    let mut port = None;
    let listening = wait_until(TLS_TIMEOUT, || {
        port = s.output().lines().find_map(|l| {
            l.strip_prefix("ACCEPT 127.0.0.1:")
                .and_then(|p| p.trim().parse::<u16>().ok())
        });
        port.is_some() || s.exited()
    });
    let port = match (listening, port) {
        (true, Some(port)) => port,
        _ => panic!("s_server did not start listening:\n{}", s.output()),
    };
    let mut c = Proc::spawn(
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-tls1_3", "-x509_strict", "-verify", "4"])
            .args(["-verify_return_error"])
            .args(["-cert", &p(&client.cert), "-key", &p(&client.key)])
            .args(["-cert_chain", &p(&client.chain)])
            .args(["-CAfile", &p(&client.bundle)])
            .current_dir(dir),
    );
    wait_until(TLS_TIMEOUT, || {
        c.output().contains("Verify return code:") || c.exited()
    });
    let client_verified = c.output().contains("Verify return code: 0 (ok)");
    let line = format!("hello from {} to {}", client.name, server.name);
    if client_verified && !c.exited() {
        if let Some(stdin) = c.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }
    // Either the line arrives, or one side gives up (a refused certificate
    // ends the connection with an alert).
    wait_until(TLS_TIMEOUT, || {
        s.output().contains(&line) || c.exited() || s.exited()
    });
    let line_arrived = s.output().contains(&line);
    c.finish();
    s.finish();
    Handshake {
        client_verified,
        line_arrived,
        server_out: s.output(),
        client_out: c.output(),
    }
}

#[test]
fn mtls_between_a_proxy_from_before_and_one_from_after_the_rotation() {
    let server = Server::start(&[]);
    // Proxy A: leaf and bundle fetched before the rotation.
    let roots_a = server.roots();
    let bundle_a = roots_bundle(&roots_a);
    assert_eq!(
        pem_blocks(&bundle_a).len(),
        1,
        "bundle A: the old root only"
    );
    let leaf_a = server.get_json("/v1/agent/connect/ca/leaf/web");

    let r = server.put_config(json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}));
    assert_eq!(r.status, 200, "{r:?}");

    // Proxy B: leaf and bundle fetched after it.
    let roots_b = server.roots();
    let bundle_b = roots_bundle(&roots_b);
    assert_eq!(pem_blocks(&bundle_b).len(), 2, "bundle B: both roots");
    let leaf_b = server.get_json("/v1/agent/connect/ca/leaf/api");
    let inters_b = intermediates_of(active_root(&roots_b));
    assert_eq!(
        pem_blocks(leaf_b["CertPEM"].as_str().expect("CertPEM"))[1..],
        inters_b[..],
        "leaf B is served with [cross-signed, signing]"
    );

    let dir = tempfile::tempdir().expect("a temporary directory");
    let a = Side::new(dir.path(), "A", &leaf_a, &bundle_a, None);
    let b = Side::new(dir.path(), "B", &leaf_b, &bundle_b, None);

    // The old side builds leaf B -> signing -> cross-signed -> old root:
    // its verify callback shows the old root at depth 3 and the new root's
    // subject (the cross-signed certificate) at depth 2.
    let cn = |roots: &Value| {
        cert_facts(active_root(roots)["RootCert"].as_str().expect("RootCert"))
            .subject_cn
            .expect("a root CN")
    };
    let through_cross = [
        format!("depth=3 CN = {}\n", cn(&roots_a)),
        format!("depth=2 CN = {}\n", cn(&roots_b)),
    ];
    for (srv, cli) in [(&a, &b), (&b, &a)] {
        let h = handshake(dir.path(), srv, cli);
        let what = format!("{} serving, {} connecting", srv.name, cli.name);
        let old_side_out = if srv.name == "A" {
            &h.server_out
        } else {
            &h.client_out
        };
        assert!(
            through_cross
                .iter()
                .all(|l| old_side_out.contains(l.as_str())),
            "{what}: A did not verify B through the cross-signed certificate:\n{h:?}"
        );
        assert!(h.client_verified, "{what}: the client refused:\n{h:?}");
        assert!(h.line_arrived, "{what}: the server refused:\n{h:?}");
        assert!(
            h.client_out.contains("TLSv1.3"),
            "{what}: not TLS 1.3:\n{h:?}"
        );
        assert!(
            !h.server_out.contains("verify error") && !h.client_out.contains("verify error"),
            "{what}:\n{h:?}"
        );
    }

    // Negative control: B without the cross-signed certificate (leaf +
    // signing intermediate only) is refused by A, who trusts the old root
    // only, in both roles. The cross-signed certificate is what makes the
    // handshakes above work.
    let signing_only = inters_b[1].clone();
    let b_bare = Side::new(
        dir.path(),
        "B-bare",
        &leaf_b,
        &bundle_b,
        Some(&signing_only),
    );
    let blocks_b = pem_blocks(leaf_b["CertPEM"].as_str().expect("CertPEM"));
    for purpose in ["sslclient", "sslserver"] {
        assert!(
            openssl_verify(&blocks_b[0], &signing_only, &bundle_a, purpose).is_err(),
            "leaf B without the cross-signed certificate must not verify against bundle A"
        );
    }
    let h = handshake(dir.path(), &b_bare, &a);
    assert!(
        !h.client_verified
            && !h.line_arrived
            && h.client_out
                .contains("unable to get local issuer certificate"),
        "A connecting must refuse B without the cross-signed cert:\n{h:?}"
    );
    let h = handshake(dir.path(), &a, &b_bare);
    assert!(
        !h.line_arrived
            && h.server_out
                .contains("unable to get local issuer certificate"),
        "A serving must refuse B without the cross-signed cert:\n{h:?}"
    );
    // And a Python cross-check of the same four trust decisions.
    let leaf_b_pem = leaf_b["CertPEM"].as_str().expect("CertPEM");
    let leaf_a_pem = leaf_a["CertPEM"].as_str().expect("CertPEM");
    python_verify_all(&[
        PyCase::new("B against bundle A", leaf_b_pem, &bundle_a),
        PyCase::new("A against bundle B", leaf_a_pem, &bundle_b),
    ]);
    let bare = common::python_verify_batch(&[PyCase::new(
        "B without cross against bundle A",
        &format!("{}{signing_only}", blocks_b[0]),
        &bundle_a,
    )]);
    assert!(bare[0].1.is_err(), "{bare:?}");
}

#[test]
fn blocked_leaf_query_returns_a_leaf_of_the_new_root_soon_after_the_rotation() {
    let server = Server::start(&[]);
    let first = server.get("/v1/agent/connect/ca/leaf/web");
    assert_eq!(first.status, 200, "{first:?}");
    let index = first.index();
    let old_leaf = first.json();
    assert_eq!(old_leaf["ModifyIndex"], json!(index));

    // A query at this index parks (shown with a short wait first).
    let t = Instant::now();
    let r = server.get(&format!(
        "/v1/agent/connect/ca/leaf/web?index={index}&wait=1s"
    ));
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.json()["SerialNumber"], old_leaf["SerialNumber"]);

    let url = server.url(&format!(
        "/v1/agent/connect/ca/leaf/web?index={index}&wait=60s"
    ));
    let http = server.http();
    let waiter = std::thread::spawn(move || {
        let r = http.send(reqwest::Method::GET, &url, None);
        (r, Instant::now())
    });
    // Nothing observable says the query reached the server; the pause only
    // makes that interleaving likely (a query arriving after the rotation
    // returns at once, which passes too).
    std::thread::sleep(Duration::from_millis(300));
    let r = server.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(r.status, 200, "{r:?}");
    let rotated = Instant::now();
    let (woken, returned) = waiter.join().expect("the waiting thread");
    let after = returned.saturating_duration_since(rotated);
    assert!(
        after < Duration::from_secs(10),
        "the blocked leaf query returned {after:?} after the rotation (60 s wait)"
    );
    assert_eq!(woken.status, 200, "{woken:?}");
    assert!(woken.index() > index, "{woken:?}");
    let leaf = woken.json();
    assert_ne!(leaf["SerialNumber"], old_leaf["SerialNumber"]);

    let roots = server.roots();
    let new = active_root(&roots);
    let new_pem = new["RootCert"].as_str().expect("RootCert");
    let inters = intermediates_of(new);
    let chain = leaf["CertPEM"].as_str().expect("CertPEM");
    assert_eq!(
        pem_blocks(chain)[1..],
        inters[..],
        "served with the new chain"
    );
    assert_eq!(
        cert_facts(chain).authority_key_id,
        cert_facts(&inters[1]).subject_key_id,
        "signed by the new intermediate"
    );
    openssl_verify_both(chain, new_pem, "woken leaf, new root alone");
    let old_pem = roots_bundle(&json!({"Roots": [roots["Roots"]
        .as_array()
        .expect("Roots")
        .iter()
        .find(|r| r["Active"] == json!(false))
        .expect("the old root")]}));
    openssl_verify_both(chain, &old_pem, "woken leaf, old root alone");
}
