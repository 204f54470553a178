//! End to end: several meshca servers sharing one CA through a real
//! 3-member etcd cluster on loopback (`--store etcd`). Every server serves
//! the same roots and signs; a change committed through one (a rotation, a
//! token) reaches the others; racing rotations never leave two active
//! roots.

mod common;
#[path = "common/etcd.rs"]
mod etcd;

use common::tls::{agent_ca, agent_cert};
use common::{active_root, csr_for_uri, roots_bundle, service_uri, verify_chain_against, Server};
use etcd::{EtcdCluster, ServerTls};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const MANAGEMENT: &str = "6a1f3c52-3c1e-4f0e-9d5b-8f9e2a7c4b10";

/// A meshca server on `cluster`, with ACLs on and the shared management
/// token.
fn server_on(cluster: &EtcdCluster, key: &str) -> Server {
    server_on_with(cluster, key, &[])
}

/// [`server_on`], with more flags.
fn server_on_with(cluster: &EtcdCluster, key: &str, more: &[String]) -> Server {
    let config = json!({
        "acl": {"enabled": true, "tokens": {"initial_management": MANAGEMENT}},
        "store": {"etcd": {"lease_ttl": "2s"}},
    });
    let args = etcd_flags(cluster, key, more);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start_with_config(&config, &args);
    server.set_token(Some(MANAGEMENT));
    server
}

/// Two servers on `cluster`, once both name the same leader.
fn two_servers(cluster: &EtcdCluster, key: &str) -> (Server, Server) {
    let a = server_on(cluster, key);
    let b = server_on(cluster, key);
    let agreed = common::wait_until(Duration::from_secs(15), || {
        let leader = leader_of(&a);
        !leader.is_empty() && leader == leader_of(&b)
    });
    assert!(
        agreed,
        "no leader both agree on: {:?} {:?}",
        leader_of(&a),
        leader_of(&b)
    );
    (a, b)
}

fn active_id(roots: &Value) -> String {
    roots["ActiveRootID"]
        .as_str()
        .expect("ActiveRootID")
        .to_string()
}

fn sign(server: &Server, roots: &Value, service: &str) -> Value {
    let td = roots["TrustDomain"].as_str().expect("TrustDomain");
    let csr = csr_for_uri(&service_uri(td, "dc1", service));
    let r = server.post("/v1/connect/ca/sign", json!({"CSR": csr}).to_string());
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// Waits (at most 10 s) until `server` serves `active` as its active root;
/// returns how long that took.
fn wait_for_active(server: &Server, active: &str) -> Duration {
    let started = Instant::now();
    let seen = common::wait_until(Duration::from_secs(10), || {
        active_id(&server.get_json("/v1/connect/ca/roots")) == active
    });
    assert!(seen, "the server did not publish root {active} within 10 s");
    started.elapsed()
}

#[test]
fn servers_sharing_etcd_serve_one_ca_and_follow_each_others_changes() {
    let cluster = EtcdCluster::start(3);
    let keys = tempfile::tempdir().unwrap();
    let key = common::keygen(keys.path(), "store.key");
    let (a, b) = two_servers(&cluster, &key);

    // One CA: the second server found the first one's.
    let roots = a.get_json("/v1/connect/ca/roots");
    assert_eq!(b.get_json("/v1/connect/ca/roots")["Roots"], roots["Roots"]);
    let bundle = roots_bundle(&roots);
    for (name, server) in [("a", &a), ("b", &b)] {
        let leaf = sign(server, &roots, "web");
        verify_chain_against(leaf["CertPEM"].as_str().unwrap(), &bundle, name);
    }
    let before = sign(&b, &roots, "api");

    // A token made through a works on b.
    let token = a.put(
        "/v1/acl/token",
        json!({"ServiceIdentities": [{"ServiceName": "db"}]}).to_string(),
    );
    assert_eq!(token.status, 200, "{token:?}");
    let secret = token.json()["SecretID"].as_str().unwrap().to_string();
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            b.request_as(
                Some(&secret),
                reqwest::Method::GET,
                "/v1/agent/connect/ca/leaf/db",
                None,
            )
            .status
                == 200
        }),
        "b did not learn a's token within 10 s"
    );

    // A rotation through a reaches b.
    let r = a.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(r.status, 200, "{r:?}");
    let rotated = a.get_json("/v1/connect/ca/roots");
    let new_active = active_id(&rotated);
    assert_ne!(new_active, active_id(&roots));
    let delay = wait_for_active(&b, &new_active);
    eprintln!("b published a's rotation {delay:?} after a answered");
    let b_roots = b.get_json("/v1/connect/ca/roots");
    assert_eq!(b_roots["Roots"], rotated["Roots"]);
    let new_bundle = roots_bundle(&b_roots);
    let after = sign(&b, &b_roots, "api");
    let signer = active_root(&b_roots)["SigningKeyID"].clone();
    assert_eq!(
        b.get_json("/v1/connect/ca/configuration")["Config"]["PrivateKeyBits"],
        384
    );
    assert_ne!(signer, active_root(&roots)["SigningKeyID"]);
    // Leaves from before and after verify against the bundle b serves now.
    verify_chain_against(before["CertPEM"].as_str().unwrap(), &new_bundle, "before");
    verify_chain_against(after["CertPEM"].as_str().unwrap(), &new_bundle, "after");
}

#[test]
fn racing_rotations_on_two_servers_leave_one_active_root() {
    let cluster = EtcdCluster::start(3);
    let keys = tempfile::tempdir().unwrap();
    let key = common::keygen(keys.path(), "store.key");
    let (a, b) = two_servers(&cluster, &key);
    let start = active_id(&a.get_json("/v1/connect/ca/roots"));

    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384})));
        let tb = s.spawn(|| b.put_config(json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048})));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    for r in [&ra, &rb] {
        assert!(r.status == 200 || r.status == 409, "{r:?}");
    }
    assert!(ra.status == 200 || rb.status == 200, "{ra:?} {rb:?}");

    // Both converge on one state with exactly one active root.
    let converged = common::wait_until(Duration::from_secs(10), || {
        a.get_json("/v1/connect/ca/roots")["Roots"] == b.get_json("/v1/connect/ca/roots")["Roots"]
    });
    assert!(converged, "a and b serve different roots");
    let roots = a.get_json("/v1/connect/ca/roots");
    let active: Vec<&Value> = roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["Active"] == true)
        .collect();
    assert_eq!(active.len(), 1, "{roots:#}");
    assert_ne!(active_id(&roots), start);
    let bundle = roots_bundle(&roots);
    for (name, server) in [("a", &a), ("b", &b)] {
        let leaf = sign(server, &roots, "web");
        verify_chain_against(leaf["CertPEM"].as_str().unwrap(), &bundle, name);
    }
}

fn leader_of(server: &Server) -> String {
    server
        .get_json("/v1/status/leader")
        .as_str()
        .expect("a string")
        .to_string()
}

/// `host:port` of the server's HTTP API, as it advertises itself.
fn address(server: &Server) -> String {
    server
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

#[test]
fn the_leader_takes_the_writes_and_another_server_leads_when_it_dies() {
    let cluster = EtcdCluster::start(3);
    let keys = tempfile::tempdir().unwrap();
    let key = common::keygen(keys.path(), "store.key");
    let mut a = server_on(&cluster, &key);
    assert!(
        common::wait_until(Duration::from_secs(10), || leader_of(&a) == address(&a)),
        "the first server did not lead: {:?}",
        leader_of(&a)
    );
    let b = server_on(&cluster, &key);
    assert!(
        common::wait_until(Duration::from_secs(10), || leader_of(&b) == address(&a)),
        "b does not name a as the leader: {:?}",
        leader_of(&b)
    );

    // A configuration change sent to the follower is made by the leader.
    let roots = b.get_json("/v1/connect/ca/roots");
    let r = b.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(r.status, 200, "{r:?}");
    // a logs the change before it answers, but its log reaches this test
    // through a pipe and a reader thread: the answer can come first.
    assert!(
        a.wait_for_log("CA configuration changed", Duration::from_secs(10)),
        "a did not make the change"
    );
    assert!(
        !b.logs().contains("CA configuration changed"),
        "b made the change itself"
    );
    let rotated = active_id(&a.get_json("/v1/connect/ca/roots"));
    assert_ne!(rotated, active_id(&roots));
    wait_for_active(&b, &rotated);

    // The leader dies: b leads after a's lease (2 s) expires, then takes
    // writes itself, and every leaf verifies against the roots it serves.
    let before = sign(&b, &b.get_json("/v1/connect/ca/roots"), "web");
    a.kill();
    let killed = Instant::now();
    assert!(
        common::wait_until(Duration::from_secs(15), || leader_of(&b) == address(&b)),
        "b did not lead within 15 s: {:?}",
        leader_of(&b)
    );
    let failover = killed.elapsed();
    eprintln!("failover after SIGKILL of the leader (2 s lease): {failover:?}");
    let r = b.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 256}));
    assert_eq!(r.status, 200, "{r:?}");
    let roots = b.get_json("/v1/connect/ca/roots");
    assert_ne!(active_id(&roots), rotated);
    let bundle = roots_bundle(&roots);
    let after = sign(&b, &roots, "web");
    verify_chain_against(
        before["CertPEM"].as_str().unwrap(),
        &bundle,
        "before the failover",
    );
    verify_chain_against(
        after["CertPEM"].as_str().unwrap(),
        &bundle,
        "after the failover",
    );
}

#[test]
fn a_leader_stopped_with_sigterm_hands_over_at_once() {
    let cluster = EtcdCluster::start(3);
    let keys = tempfile::tempdir().unwrap();
    let key = common::keygen(keys.path(), "store.key");
    // A lease far longer than the test may wait: only a resignation hands
    // the leadership over in time.
    let endpoints = cluster.endpoints().join(",");
    let config = json!({
        "acl": {"enabled": false},
        "store": {"etcd": {"lease_ttl": "60s"}},
    });
    let args = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoints,
        "--store-key-file",
        &key,
    ];
    let mut a = Server::start_with_config(&config, &args);
    assert!(common::wait_until(Duration::from_secs(10), || leader_of(
        &a
    ) == address(
        &a
    )));
    let b = Server::start_with_config(&config, &args);
    assert!(common::wait_until(Duration::from_secs(10), || leader_of(
        &b
    ) == address(
        &a
    )));
    let stopping = Instant::now();
    let status = a.stop();
    assert!(status.success(), "{status:?}");
    assert!(
        common::wait_until(Duration::from_secs(10), || leader_of(&b) == address(&b)),
        "b did not lead after a stopped: {:?}\na:\n{}\nb:\n{}",
        leader_of(&b),
        a.logs(),
        b.logs()
    );
    eprintln!(
        "takeover after SIGTERM of the leader: {:?}",
        stopping.elapsed()
    );
    assert!(a.logs().contains("resigned the leadership"), "{}", a.logs());
}

/// The roots' active entries.
fn active_roots(roots: &Value) -> usize {
    roots["Roots"]
        .as_array()
        .expect("Roots")
        .iter()
        .filter(|r| r["Active"] == true)
        .count()
}

/// The leader of three servers dies (a real abort) at `step` of a
/// rotation; another server leads, and all serve one whole CA — the old
/// one if the commit had not landed, the new one if it had — against which
/// the leaves every server issued before and after verify; the new leader
/// then rotates.
fn leader_dies_during_a_rotation(step: &str, committed: bool) {
    let cluster = EtcdCluster::start(3);
    let keys = tempfile::tempdir().expect("a temporary directory");
    let key = common::keygen(keys.path(), "store.key");
    let mut a = server_on(&cluster, &key);
    a.set_env("MESHCA_FAILPOINT", Some(step));
    a.restart();
    a.set_token(Some(MANAGEMENT));
    assert!(common::wait_until(Duration::from_secs(10), || leader_of(
        &a
    ) == address(
        &a
    )));
    let others = [server_on(&cluster, &key), server_on(&cluster, &key)];
    for s in &others {
        assert!(common::wait_until(Duration::from_secs(10), || leader_of(s) == address(&a)));
    }
    let before = a.get_json("/v1/connect/ca/roots");
    let mut leaves: Vec<Value> = std::iter::once(&a)
        .chain(&others)
        .map(|s| sign(s, &before, "web"))
        .collect();

    let put = a.try_put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert!(put.is_err(), "{step}: a answered: {put:?}");
    assert!(
        a.wait_exit(Duration::from_secs(20)).is_some(),
        "{step}: a did not abort"
    );
    let new_leader = common::wait_until(Duration::from_secs(15), || {
        others.iter().any(|s| leader_of(s) == address(s))
    });
    assert!(new_leader, "{step}: no server took over");
    let converged = common::wait_until(Duration::from_secs(10), || {
        others[0].get_json("/v1/connect/ca/roots")["Roots"]
            == others[1].get_json("/v1/connect/ca/roots")["Roots"]
    });
    assert!(converged, "{step}: the servers serve different roots");
    let roots = others[0].get_json("/v1/connect/ca/roots");
    assert_eq!(active_roots(&roots), 1, "{step}: {roots:#}");
    if committed {
        assert_ne!(
            active_id(&roots),
            active_id(&before),
            "{step}: the commit was lost"
        );
    } else {
        assert_eq!(
            roots["Roots"], before["Roots"],
            "{step}: a half rotation is visible"
        );
    }
    leaves.extend(others.iter().map(|s| sign(s, &roots, "web")));

    // Nothing is left half done: the new leader rotates.
    let leader = others
        .iter()
        .find(|s| leader_of(s) == address(s))
        .expect("a leader");
    let r = leader.put_config(json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}));
    assert_eq!(r.status, 200, "{step}: {r:?}");
    let after = leader.get_json("/v1/connect/ca/roots");
    assert_eq!(active_roots(&after), 1, "{step}");
    assert_ne!(active_id(&after), active_id(&roots), "{step}");
    for s in &others {
        wait_for_active(s, &active_id(&after));
        leaves.push(sign(s, &after, "web"));
        let bundle = roots_bundle(&s.get_json("/v1/connect/ca/roots"));
        for (i, leaf) in leaves.iter().enumerate() {
            let pem = leaf["CertPEM"].as_str().expect("CertPEM");
            verify_chain_against(pem, &bundle, &format!("{step}: leaf {i}"));
        }
    }
}

#[test]
fn a_leader_dying_before_its_rotation_commits_leaves_the_old_ca() {
    leader_dies_during_a_rotation("rotation-before-commit", false);
}

#[test]
fn a_leader_dying_after_its_rotation_commits_leaves_the_new_ca() {
    leader_dies_during_a_rotation("rotation-committed", true);
}

#[test]
fn service_goes_on_with_a_member_down_and_comes_back_after_a_lost_quorum() {
    let mut cluster = EtcdCluster::start(3);
    let keys = tempfile::tempdir().unwrap();
    let key = common::keygen(keys.path(), "store.key");
    let (a, b) = two_servers(&cluster, &key);

    // One member down: signing, blocking queries and rotations go on.
    cluster.kill(0);
    let roots = b.get_json("/v1/connect/ca/roots");
    let index = b.get("/v1/connect/ca/roots").index();
    let waiter = {
        let url = b.url(&format!("/v1/connect/ca/roots?index={index}&wait=30s"));
        let http = b.http();
        std::thread::spawn(move || http.send(reqwest::Method::GET, &url, None))
    };
    sign(&a, &roots, "web");
    let r = b.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(r.status, 200, "{r:?}");
    let woke = waiter.join().unwrap();
    assert_eq!(woke.status, 200);
    assert!(
        woke.index() > index,
        "b's blocked roots query did not see the rotation"
    );
    let rotated = active_id(&a.get_json("/v1/connect/ca/roots"));
    wait_for_active(&b, &rotated);

    // No quorum: a change fails in bounded time with a clear error, and
    // leaves are still signed with the published CA.
    cluster.kill(1);
    let started = Instant::now();
    let leader = if leader_of(&a) == address(&a) { &a } else { &b };
    let r = leader.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 256}));
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    eprintln!("a change without quorum failed after {took:?}: {}", r.body);
    let roots = a.get_json("/v1/connect/ca/roots");
    assert_eq!(active_id(&roots), rotated);
    sign(&a, &roots, "api");
    sign(&b, &roots, "api");

    // The quorum is back: a change goes through again.
    cluster.restart(0);
    cluster.restart(1);
    let ok = common::wait_until(Duration::from_secs(60), || {
        let leader = [&a, &b].into_iter().find(|s| leader_of(s) == address(s));
        leader.is_some_and(|l| {
            l.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 256}))
                .status
                == 200
        })
    });
    assert!(ok, "no change went through after the quorum came back");
    let leader = [&a, &b]
        .into_iter()
        .find(|s| leader_of(s) == address(s))
        .expect("a leader");
    let now = active_id(&leader.get_json("/v1/connect/ca/roots"));
    assert_ne!(now, rotated);
    wait_for_active(&a, &now);
    wait_for_active(&b, &now);
}

#[test]
fn two_servers_starting_at_once_on_an_empty_store_make_one_ca() {
    let cluster = EtcdCluster::start(3);
    let keys = tempfile::tempdir().expect("a temporary directory");
    let key = common::keygen(keys.path(), "store.key");
    let endpoints = cluster.endpoints().join(",");
    // ACLs on with auto-bootstrap: both race to create the data key, the
    // first root and the management token.
    let config = json!({"store": {"etcd": {"lease_ttl": "2s"}}});
    let args = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        endpoints.as_str(),
        "--store-key-file",
        key.as_str(),
    ];
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start_with_config(&config, &args));
        let b = s.spawn(|| Server::start_with_config(&config, &args));
        (a.join().expect("a started"), b.join().expect("b started"))
    });
    let tokens: Vec<String> = [&a, &b].into_iter().filter_map(|s| s.token()).collect();
    assert_eq!(
        tokens.len(),
        1,
        "one server bootstraps the ACLs: {tokens:?}"
    );
    let roots = a.get_json("/v1/connect/ca/roots");
    assert_eq!(active_roots(&roots), 1);
    assert_eq!(b.get_json("/v1/connect/ca/roots")["Roots"], roots["Roots"]);
    // The one management token works on both.
    for server in [&a, &b] {
        let r = server.request_as(
            Some(&tokens[0]),
            reqwest::Method::GET,
            "/v1/agent/connect/ca/leaf/web",
            None,
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// meshca's flags for the etcd store of `cluster`, then `more`.
fn etcd_flags(cluster: &EtcdCluster, key: &str, more: &[String]) -> Vec<String> {
    let mut args = ["--store", "etcd", "--etcd-endpoints"]
        .map(String::from)
        .to_vec();
    args.push(cluster.endpoints().join(","));
    args.extend(["--store-key-file".to_string(), key.to_string()]);
    args.extend_from_slice(more);
    args
}

/// A server that must refuse to start on `cluster` with `tls_flags`: what
/// it printed.
fn refused_start(cluster: &EtcdCluster, key: &str, tls_flags: &[String]) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let args = etcd_flags(cluster, key, tls_flags);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::run_server_once(
        &dir.path().join("data"),
        &args,
        dir.path(),
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "started: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_server_reaches_etcd_over_mutual_tls_and_nothing_it_cannot_trust() {
    // The member's certificate (127.0.0.1) and meshca's client certificate
    // come from meshca's own `tls ca create` and `tls cert create`.
    let pki = tempfile::tempdir().unwrap();
    let (ca, _) = agent_ca(pki.path());
    let (member_cert, member_key) = agent_cert(pki.path(), "--server", &[]);
    let (client_cert, client_key) = agent_cert(pki.path(), "--client", &[]);
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _) = agent_ca(other.path());
    let (other_cert, other_key) = agent_cert(other.path(), "--client", &[]);
    let cluster = EtcdCluster::start_tls(
        1,
        ServerTls {
            cert: member_cert,
            key: member_key,
            client_ca: ca.clone(),
        },
    );
    let keys = tempfile::tempdir().unwrap();
    let key = common::keygen(keys.path(), "store.key");

    let flags = |ca: &std::path::Path, client: Option<(&std::path::Path, &std::path::Path)>| {
        let mut flags = vec!["--etcd-ca-file".to_string(), path(ca).to_string()];
        if let Some((cert, key)) = client {
            flags.extend(
                ["--etcd-cert-file", path(cert), "--etcd-key-file", path(key)].map(String::from),
            );
        }
        flags
    };
    let refused = |tls_flags: &[String]| refused_start(&cluster, &key, tls_flags);
    // What meshca says depends on when the member's alert arrives (an
    // alert, or only a closed connection); the member's log says why.
    let handshakes = [
        // No client certificate: the member refuses the handshake.
        (flags(&ca, None), "", "client didn't provide a certificate"),
        // A CA that did not sign the member: meshca refuses the member.
        (
            flags(&other_ca, Some((&client_cert, &client_key))),
            "UnknownIssuer",
            "unknown certificate authority",
        ),
        // A client certificate from a CA the member does not trust.
        (
            flags(&ca, Some((&other_cert, &other_key))),
            "",
            "failed to verify client certificate",
        ),
    ];
    for (tls_flags, meshca_says, member_says) in &handshakes {
        let logged = cluster.log(0).len();
        let err = refused(tls_flags);
        assert!(
            err.contains("opening the etcd store at https://"),
            "{tls_flags:?}: {err}"
        );
        assert!(err.contains(meshca_says), "{tls_flags:?}: {err}");
        let member_log = cluster.log(0);
        assert!(
            member_log[logged..].contains(member_says),
            "{tls_flags:?}: the member did not log {member_says:?}: {member_log}"
        );
    }
    // Files that are not what they say: named before any connection.
    let err = refused(&flags(&ca, Some((&client_key, &client_cert))));
    assert!(err.contains("holds no PEM certificate"), "{err}");

    // With its own certificate: one CA, served and signing.
    let ok = flags(&ca, Some((&client_cert, &client_key)));
    let server = server_on_with(&cluster, &key, &ok);
    let roots = server.get_json("/v1/connect/ca/roots");
    let leaf = sign(&server, &roots, "web");
    verify_chain_against(
        leaf["CertPEM"].as_str().unwrap(),
        &roots_bundle(&roots),
        "over TLS to etcd",
    );
    assert!(!cluster.log(0).contains("panic"), "{}", cluster.log(0));
}
