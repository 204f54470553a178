//! ACLs through the real binary: on by default with a bootstrap token in
//! the data dir, default deny, every guarded endpoint allowed and denied with
//! each kind of token, Consul's messages, and no secret on disk or in logs.

mod common;

use common::{csr_for_uri, run_meshca, service_uri, Resp, Server, BOOTSTRAP_TOKEN_FILE};
use reqwest::Method;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// Creates a policy with `rules` and a token linking it; returns the
/// token's SecretID.
fn token_with_rules(server: &Server, name: &str, rules: &str) -> String {
    let p = server.put(
        "/v1/acl/policy",
        json!({"Name": name, "Rules": rules}).to_string(),
    );
    assert_eq!(p.status, 200, "{p:?}");
    token_with(server, json!({"Policies": [{"Name": name}]}))
}

fn token_with(server: &Server, body: Value) -> String {
    let t = server.put("/v1/acl/token", body.to_string());
    assert_eq!(t.status, 200, "{t:?}");
    let secret = t.json()["SecretID"]
        .as_str()
        .expect("a new token shows its SecretID")
        .to_string();
    assert!(uuid::Uuid::parse_str(&secret).is_ok(), "{secret}");
    secret
}

fn sign_as(server: &Server, token: Option<&str>, uri: &str) -> Resp {
    let body = json!({"CSR": csr_for_uri(uri)}).to_string();
    server.request_as(
        token,
        Method::POST,
        "/v1/connect/ca/sign",
        Some(body.into()),
    )
}

fn get_as(server: &Server, token: Option<&str>, path: &str) -> Resp {
    server.request_as(token, Method::GET, path, None)
}

fn put_as(server: &Server, token: Option<&str>, path: &str, body: Value) -> Resp {
    server.request_as(token, Method::PUT, path, Some(body.to_string().into()))
}

fn assert_denied(r: &Resp, what: &str) {
    assert_eq!(r.status, 403, "{what}: {r:?}");
    assert!(r.body.starts_with("Permission denied"), "{what}: {r:?}");
    assert_eq!(r.code(), "permission_denied", "{what}");
}

#[test]
fn the_first_start_writes_a_private_bootstrap_token_and_denies_by_default() {
    let server = Server::start(&[]);
    let path = server.data_dir().join(BOOTSTRAP_TOKEN_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
    let token = server.token().expect("a bootstrap token");
    assert!(uuid::Uuid::parse_str(&token).is_ok());

    // Roots, health and leader need no token.
    for path in [
        "/v1/connect/ca/roots",
        "/v1/agent/connect/ca/roots",
        "/v1/connect/ca/roots?pem=true",
        "/v1/health",
        "/v1/status/leader",
    ] {
        assert_eq!(get_as(&server, None, path).status, 200, "{path}");
    }
    // Everything else is denied without a token, with Consul's message.
    let r = get_as(&server, None, "/v1/connect/ca/configuration");
    assert_denied(&r, "config without a token");
    assert_eq!(
        r.body,
        "Permission denied: anonymous token lacks permission 'operator:read'"
    );
    assert_denied(
        &get_as(&server, None, "/v1/agent/connect/ca/leaf/web"),
        "leaf",
    );
    assert_denied(&get_as(&server, None, "/v1/acl/tokens"), "tokens");
    let td = server.trust_domain();
    assert_denied(
        &sign_as(&server, None, &service_uri(&td, "dc1", "web")),
        "sign",
    );

    // The token works from each place Consul reads it.
    let ok = |r: Resp, how: &str| assert_eq!(r.status, 200, "{how}: {r:?}");
    ok(
        get_as(&server, Some(&token), "/v1/connect/ca/configuration"),
        "X-Consul-Token",
    );
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let bearer = http
        .get(server.url("/v1/connect/ca/configuration"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(bearer.status(), 200, "Authorization: Bearer");
    ok(
        get_as(
            &server,
            None,
            &format!("/v1/connect/ca/configuration?token={token}"),
        ),
        "?token=",
    );

    // Unknown tokens of every shape are "ACL not found", never a 5xx.
    let long = "x".repeat(4000);
    for wrong in [
        "00000000-0000-0000-0000-000000000000",
        &uuid::Uuid::new_v4().to_string(),
        "not-a-uuid",
        "é",
        long.as_str(),
        &token[..35],
        &format!("{token} "),
    ] {
        let r = get_as(&server, Some(wrong), "/v1/connect/ca/configuration");
        if wrong.trim() == token {
            // Surrounding spaces are trimmed, as HTTP header values are.
            assert_eq!(r.status, 200);
            continue;
        }
        assert_eq!(
            (r.status, r.body.as_str()),
            (403, "ACL not found"),
            "{wrong:?}"
        );
    }

    // Bootstrap is done: the API refuses a second one.
    let again = put_as(&server, None, "/v1/acl/bootstrap", json!({}));
    assert_eq!(again.status, 403, "{again:?}");
    assert!(
        again.body.contains("ACL bootstrap no longer allowed"),
        "{again:?}"
    );
}

#[test]
fn each_permission_is_enforced_allowed_and_denied() {
    let server = Server::start(&[]);
    let td = server.trust_domain();
    let svc = |s: &str| service_uri(&td, "dc1", s);
    let agent = |n: &str| format!("spiffe://{td}/agent/client/dc/dc1/id/{n}");
    let server_id = format!("spiffe://{td}/agent/server/dc/dc1");
    let mesh_gw = format!("spiffe://{td}/gateway/mesh/dc/dc1");

    let web = token_with(
        &server,
        json!({"ServiceIdentities": [{"ServiceName": "web"}]}),
    );
    let op_read = token_with_rules(&server, "op-read", r#"operator = "read""#);
    let op_write = token_with_rules(&server, "op-write", r#"{"operator":"write"}"#);
    let node = token_with_rules(&server, "node-n1", r#"node "n1" { policy = "write" }"#);
    let mesh = token_with_rules(&server, "mesh", r#"{"mesh":"write"}"#);
    let acl_read = token_with_rules(&server, "acl-read", r#"{"acl":"read"}"#);
    let deny_web = token_with_rules(
        &server,
        "prefix-but-deny",
        r#"{"service_prefix":{"":{"policy":"write"}},"service":{"web":{"policy":"deny"}}}"#,
    );

    // The service token: its own leaf and CSRs, nothing else.
    assert_eq!(
        get_as(&server, Some(&web), "/v1/agent/connect/ca/leaf/web").status,
        200
    );
    assert_denied(
        &get_as(&server, Some(&web), "/v1/agent/connect/ca/leaf/db"),
        "web→db leaf",
    );
    assert_eq!(sign_as(&server, Some(&web), &svc("web")).status, 200);
    assert_eq!(
        sign_as(&server, Some(&web), &svc("web-sidecar-proxy")).status,
        200
    );
    let r = sign_as(&server, Some(&web), &svc("db"));
    assert_denied(&r, "web signs db");
    assert!(r.body.contains("'service:write' on \"db\""), "{r:?}");
    for uri in [agent("n1"), server_id.clone(), mesh_gw.clone()] {
        assert_denied(&sign_as(&server, Some(&web), &uri), &uri);
    }
    assert_denied(
        &get_as(&server, Some(&web), "/v1/connect/ca/configuration"),
        "web config",
    );
    assert_denied(&get_as(&server, Some(&web), "/v1/acl/tokens"), "web acl");

    // Operator read and write.
    assert_eq!(
        get_as(&server, Some(&op_read), "/v1/connect/ca/configuration").status,
        200
    );
    let cfg = json!({"Provider": "consul", "Config": {"LeafCertTTL": "48h"}});
    assert_denied(
        &put_as(
            &server,
            Some(&op_read),
            "/v1/connect/ca/configuration",
            cfg.clone(),
        ),
        "op-read writes config",
    );
    assert_denied(
        &sign_as(&server, Some(&op_read), &server_id),
        "op-read signs a server",
    );
    assert_eq!(
        put_as(
            &server,
            Some(&op_write),
            "/v1/connect/ca/configuration",
            cfg
        )
        .status,
        200
    );
    assert_eq!(sign_as(&server, Some(&op_write), &server_id).status, 200);
    assert_eq!(
        sign_as(&server, Some(&op_write), &mesh_gw).status,
        200,
        "mesh falls back to operator"
    );
    assert_denied(
        &get_as(&server, Some(&op_write), "/v1/agent/connect/ca/leaf/web"),
        "operator is not service",
    );

    // Node, mesh, ACL.
    assert_eq!(sign_as(&server, Some(&node), &agent("n1")).status, 200);
    assert_denied(&sign_as(&server, Some(&node), &agent("n2")), "n1 signs n2");
    assert_eq!(sign_as(&server, Some(&mesh), &mesh_gw).status, 200);
    assert_denied(
        &sign_as(&server, Some(&mesh), &server_id),
        "mesh signs a server",
    );
    assert_denied(
        &get_as(&server, Some(&mesh), "/v1/connect/ca/configuration"),
        "mesh config",
    );
    assert_eq!(
        get_as(&server, Some(&acl_read), "/v1/acl/tokens").status,
        200
    );
    assert_eq!(
        get_as(&server, Some(&acl_read), "/v1/acl/policies").status,
        200
    );
    assert_denied(
        &put_as(&server, Some(&acl_read), "/v1/acl/token", json!({})),
        "acl:read creates a token",
    );
    // Deny beats the prefix's write.
    assert_eq!(sign_as(&server, Some(&deny_web), &svc("db")).status, 200);
    assert_denied(
        &sign_as(&server, Some(&deny_web), &svc("web")),
        "denied web",
    );

    // A deleted token stops working at once.
    let list = server.get_json("/v1/acl/tokens");
    let accessor = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["ServiceIdentities"][0]["ServiceName"] == "web")
        .unwrap()["AccessorID"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        server
            .request(Method::DELETE, &format!("/v1/acl/token/{accessor}"), None)
            .status,
        200
    );
    let r = get_as(&server, Some(&web), "/v1/agent/connect/ca/leaf/web");
    assert_eq!((r.status, r.body.as_str()), (403, "ACL not found"));
}

#[test]
fn secrets_never_reach_the_disk_the_logs_or_a_read() {
    let mut server = Server::start(&[]);
    let web = token_with(
        &server,
        json!({"ServiceIdentities": [{"ServiceName": "web"}]}),
    );
    let bootstrap = server.token().unwrap();
    // Reads show the SecretID hidden.
    for t in server.get_json("/v1/acl/tokens").as_array().unwrap() {
        assert_eq!(t["SecretID"], "<hidden>", "{t}");
    }
    let me = get_as(&server, Some(&web), "/v1/acl/token/self");
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.json()["SecretID"], "<hidden>");
    // Requests with tokens in every position, then a clean stop.
    get_as(&server, Some(&web), "/v1/agent/connect/ca/leaf/web");
    get_as(
        &server,
        None,
        &format!("/v1/agent/connect/ca/leaf/web?token={web}"),
    );
    server.stop();
    let logs = server.logs();
    for secret in [&web, &bootstrap] {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret is in the logs:\n{logs}"
        );
    }
    // Only the bootstrap-token file holds a secret.
    let mut files = vec![server.data_dir()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.file_name().is_some_and(|n| n == BOOTSTRAP_TOKEN_FILE) {
            continue;
        }
        let raw = std::fs::read(&p).unwrap();
        for secret in [&web, &bootstrap] {
            let found = raw.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{} holds a token secret", p.display());
        }
    }
}

#[test]
fn acl_writes_do_not_wake_roots_watchers_and_rotation_still_commits() {
    let mut server = Server::start(&[]);
    let index = server.get("/v1/connect/ca/roots").index();
    let url = format!("/v1/connect/ca/roots?index={index}&wait=2s");
    let http = server.http();
    let full = server.url(&url);
    let watcher = std::thread::spawn(move || {
        let start = Instant::now();
        let r = http.send(Method::GET, &full, None);
        (start.elapsed(), r.index())
    });
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..5 {
        token_with(&server, json!({"Description": format!("t{i}")}));
    }
    let (waited, seen) = watcher.join().unwrap();
    assert_eq!(seen, index, "an ACL write changed the roots' index");
    assert!(
        waited >= Duration::from_millis(1500),
        "woken after {waited:?}"
    );

    // A CA change after ACL writes commits, and survives a restart.
    let r = server.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(r.status, 200, "{r:?}");
    let after = server.roots();
    assert_eq!(after["Roots"].as_array().unwrap().len(), 2);
    assert!(after_index(&after) > index);
    server.restart();
    assert_eq!(server.roots()["ActiveRootID"], after["ActiveRootID"]);
    assert_eq!(
        server.get_json("/v1/acl/tokens").as_array().unwrap().len(),
        6
    );
}

fn after_index(roots: &Value) -> u64 {
    roots["Roots"]
        .as_array()
        .expect("Roots is an array")
        .iter()
        .filter_map(|r| r["ModifyIndex"].as_u64())
        .max()
        .expect("at least one root")
}

#[test]
fn without_auto_bootstrap_the_api_bootstraps_once() {
    let mut server = Server::start_with_config(&json!({"acl": {"auto_bootstrap": false}}), &[]);
    assert!(!server.data_dir().join(BOOTSTRAP_TOKEN_FILE).exists());
    assert_eq!(server.token(), None);
    let out = run_meshca(
        &["acl", "bootstrap", "--format", "json"],
        &[("MESHCA_HTTP_ADDR", &server.base)],
        server.dir(),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}");
    let token: Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = token["SecretID"].as_str().unwrap();
    assert_eq!(token["Policies"][0]["Name"], "global-management");
    server.set_token(Some(secret));
    assert_eq!(server.get("/v1/connect/ca/configuration").status, 200);
    let again = put_as(&server, None, "/v1/acl/bootstrap", json!({}));
    assert_eq!(again.status, 403, "{again:?}");
    server.restart();
    server.set_token(Some(secret));
    assert_eq!(server.get("/v1/connect/ca/configuration").status, 200);
}

#[test]
fn an_initial_management_token_from_the_config_is_created_and_no_file_is_written() {
    let secret = uuid::Uuid::new_v4().to_string();
    let config = json!({"acl": {"tokens": {"initial_management": secret}}});
    let mut server = Server::start_with_config(&config, &[]);
    assert!(!server.data_dir().join(BOOTSTRAP_TOKEN_FILE).exists());
    server.set_token(Some(&secret));
    assert_eq!(server.get("/v1/connect/ca/configuration").status, 200);
    server.restart();
    server.set_token(Some(&secret));
    assert_eq!(
        server.get_json("/v1/acl/tokens").as_array().unwrap().len(),
        1
    );
}

#[test]
fn the_acl_commands_create_policies_and_tokens() {
    let server = Server::start(&[]);
    let token = server.token().unwrap();
    let env = [
        ("MESHCA_HTTP_ADDR", server.base.as_str()),
        ("MESHCA_HTTP_TOKEN", &token),
    ];
    let run = |args: &[&str]| {
        let out = run_meshca(args, &env, server.dir(), Duration::from_secs(30));
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    std::fs::write(
        server.dir().join("web.hcl"),
        "service \"web\" { policy = \"write\" }\n",
    )
    .unwrap();
    let rules = format!("@{}", server.dir().join("web.hcl").display());
    let p = run(&[
        "acl",
        "policy",
        "create",
        "--name",
        "web-write",
        "--rules",
        &rules,
    ]);
    assert!(p.contains("Name:         web-write"), "{p}");
    let t = run(&[
        "acl",
        "token",
        "create",
        "--description",
        "web proxy",
        "--policy-name",
        "web-write",
        "--format",
        "json",
    ]);
    let t: Value = serde_json::from_str(&t).unwrap();
    let secret = t["SecretID"].as_str().unwrap();
    assert_eq!(
        get_as(&server, Some(secret), "/v1/agent/connect/ca/leaf/web").status,
        200
    );
    assert_denied(
        &get_as(&server, Some(secret), "/v1/agent/connect/ca/leaf/db"),
        "db",
    );
    let list = run(&["acl", "token", "list"]);
    assert!(
        list.contains("web proxy") && list.contains("global-management"),
        "{list}"
    );
    assert!(
        !list.contains(secret),
        "a listed token shows its secret:\n{list}"
    );
    // Without a token the command fails with the server's message.
    let out = run_meshca(
        &["acl", "token", "list"],
        &[("MESHCA_HTTP_ADDR", server.base.as_str())],
        server.dir(),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{out:?}"
    );
}

#[test]
fn bad_acl_requests_are_400_and_change_nothing() {
    let server = Server::start(&[]);
    let before = server.get_json("/v1/acl/policies");
    for body in [
        json!({"Name": "bad name", "Rules": "{}"}),
        json!({"Name": "x", "Rules": r#"{"keyring":"write"}"#}),
        json!({"Name": "x", "Rules": "operator = "}),
        json!({"Name": "x", "Rules": "{}", "Datacenters": ["dc2"]}),
        json!({"Name": "x", "Rules": "{}", "Unknown": 1}),
        json!({"Name": "global-management", "Rules": "{}"}),
    ] {
        let r = server.put("/v1/acl/policy", body.to_string());
        assert_eq!(r.status, 400, "{body}: {r:?}");
    }
    for body in [
        json!({"Policies": [{"Name": "absent"}]}),
        json!({"Policies": [{}]}),
        json!({"ServiceIdentities": [{"ServiceName": "Bad Name"}]}),
        json!({"SecretID": "short"}),
        json!({"Roles": []}),
    ] {
        let r = server.put("/v1/acl/token", body.to_string());
        assert_eq!(r.status, 400, "{body}: {r:?}");
    }
    let gm = "00000000-0000-0000-0000-000000000001";
    assert_eq!(
        server
            .request(Method::DELETE, &format!("/v1/acl/policy/{gm}"), None)
            .status,
        400
    );
    assert_eq!(server.get_json("/v1/acl/policies"), before);
    assert_eq!(
        server.get_json("/v1/acl/tokens").as_array().unwrap().len(),
        1
    );
}

#[test]
fn a_token_cannot_delete_itself_but_another_management_token_can() {
    let server = Server::start(&[]);
    let me = server.get_json("/v1/acl/token/self")["AccessorID"]
        .as_str()
        .expect("the bootstrap token's AccessorID")
        .to_string();
    let delete_me = format!("/v1/acl/token/{me}");
    let r = server.request(Method::DELETE, &delete_me, None);
    r.assert_error(400);
    assert_eq!(
        r.body,
        "Deletion of the request's authorization token is not permitted"
    );
    assert_eq!(
        get_as(&server, server.token().as_deref(), "/v1/acl/tokens").status,
        200
    );

    let other = token_with(
        &server,
        json!({"Policies": [{"Name": "global-management"}]}),
    );
    let r = server.request_as(Some(&other), Method::DELETE, &delete_me, None);
    assert_eq!(r.status, 200, "{r:?}");
    let r = get_as(&server, server.token().as_deref(), "/v1/acl/tokens");
    assert_eq!((r.status, r.body.as_str()), (403, "ACL not found"));
}
