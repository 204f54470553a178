//! The vault provider against a real OpenBao dev server, beyond the
//! conformance suite: token renewal, AppRole login and re-login, an
//! operator's root, and failures (permission denied, down, hung, sealed),
//! each an `Unavailable` error naming Vault and the operation, with
//! recovery once Vault answers again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failures should panic loudly

#[path = "../../../tests/common/openbao.rs"]
mod openbao;

use meshca_core::{CaConfig, Clock, KeySpec, SystemClock};
use meshca_provider::conformance::{leaf_request_at, request_at};
use meshca_provider::{CaProvider, ProviderError, Signer};
use meshca_provider_vault::VaultProvider;
use openbao::{Fault, FaultProxy, OpenBao};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

fn now() -> OffsetDateTime {
    SystemClock.now().replace_nanosecond(0).unwrap()
}

fn provider(config: Value) -> VaultProvider {
    VaultProvider::new(&CaConfig::from_wire("vault", config.as_object().unwrap(), None).unwrap())
        .unwrap()
}

/// `method path body` with the root token, asserting a 2xx; the JSON answer.
fn root_call(bao: &OpenBao, method: &str, path: &str, body: Value) -> Value {
    let (status, text) = bao.request(method, path, &body.to_string());
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {text}"
    );
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A child token of the root token with `ttl` and `policies`.
fn token(bao: &OpenBao, ttl: &str, policies: &[&str]) -> String {
    let mut body = json!({"ttl": ttl});
    if !policies.is_empty() {
        body["policies"] = json!(policies);
    }
    let v = root_call(bao, "POST", "/v1/auth/token/create", body);
    v["auth"]["client_token"].as_str().unwrap().to_string()
}

fn unavailable(e: ProviderError, needles: &[&str]) {
    let ProviderError::Unavailable(msg) = &e else {
        panic!("expected Unavailable, got {e:?}");
    };
    assert!(msg.starts_with("vault: "), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "{msg:?} does not mention {n:?}");
    }
}

async fn signer_for(p: &VaultProvider) -> Signer {
    let m = p
        .generate_ca(&request_at(KeySpec::EcP256, now()))
        .await
        .unwrap();
    meshca_provider::conformance::signer(p, &m).await
}

async fn sign(signer: &Signer) -> Result<(), ProviderError> {
    signer
        .sign_leaf(leaf_request_at(&rcgen::PKCS_ECDSA_P256_SHA256, now()))
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_token_is_renewed_in_the_background() {
    let bao = OpenBao::start();
    let mut config = bao.ca_config("pki", "pki-int");
    config["Token"] = json!(token(&bao, "4s", &[]));
    let p = provider(config);
    let signer = signer_for(&p).await;
    // Three TTLs later the token would long have expired without renewal.
    tokio::time::sleep(Duration::from_secs(12)).await;
    sign(&signer).await.expect("the renewed token still signs");
}

/// The policy the provider's README documents, for `pki` and `pki-int`.
const README_POLICY: &str = r#"
path "sys/mounts"                { capabilities = ["read"] }
path "sys/mounts/pki"            { capabilities = ["create", "read", "update"] }
path "sys/mounts/pki/tune"       { capabilities = ["update"] }
path "sys/mounts/pki-int"        { capabilities = ["create", "read", "update", "delete"] }
path "sys/mounts/pki-int/tune"   { capabilities = ["update"] }
path "pki/*"                     { capabilities = ["create", "read", "update", "list"] }
path "pki-int/*"                 { capabilities = ["create", "read", "update", "list"] }
path "auth/token/renew-self"     { capabilities = ["update"] }
path "auth/token/lookup-self"    { capabilities = ["read"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_with_the_documented_policy_logs_in_again_after_a_revocation() {
    let bao = OpenBao::start();
    root_call(
        &bao,
        "PUT",
        "/v1/sys/policies/acl/meshca",
        json!({"policy": README_POLICY}),
    );
    root_call(
        &bao,
        "POST",
        "/v1/sys/auth/approle",
        json!({"type": "approle"}),
    );
    root_call(
        &bao,
        "POST",
        "/v1/auth/approle/role/meshca",
        json!({"token_policies": ["meshca"], "token_ttl": "1h"}),
    );
    let role_id = root_call(
        &bao,
        "GET",
        "/v1/auth/approle/role/meshca/role-id",
        json!({}),
    )["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = root_call(
        &bao,
        "POST",
        "/v1/auth/approle/role/meshca/secret-id",
        json!({}),
    )["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut config = bao.ca_config("pki", "pki-int");
    config.as_object_mut().unwrap().remove("Token");
    config["AuthMethod"] = json!({"Type": "approle", "MountPath": "approle",
        "Params": {"role_id": role_id, "secret_id": secret_id}});
    let p = provider(config);
    let signer = signer_for(&p).await;
    sign(&signer).await.expect("signs with the AppRole token");

    // Revoke every AppRole token: the next call is refused, logs in again
    // and succeeds.
    let accessors = root_call(&bao, "LIST", "/v1/auth/token/accessors", json!({}));
    for accessor in accessors["data"]["keys"].as_array().unwrap() {
        let info = root_call(
            &bao,
            "POST",
            "/v1/auth/token/lookup-accessor",
            json!({"accessor": accessor}),
        );
        if info["data"]["path"].as_str() == Some("auth/approle/login") {
            root_call(
                &bao,
                "POST",
                "/v1/auth/token/revoke-accessor",
                json!({"accessor": accessor}),
            );
        }
    }
    sign(&signer)
        .await
        .expect("logs in again after the revocation");

    // A wrong secret_id is refused, naming Vault and the login.
    let mut bad = bao.ca_config("pki", "pki-int");
    bad.as_object_mut().unwrap().remove("Token");
    bad["AuthMethod"] = json!({"Type": "approle", "Params": {"role_id": "x", "secret_id": "y"}});
    let err = provider(bad)
        .generate_ca(&request_at(KeySpec::EcP256, now()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AppRole"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_denied_down_hung_and_sealed_are_unavailable_and_down_recovers() {
    let bao = OpenBao::start();

    // A token whose policy allows nothing the provider needs.
    let mut config = bao.ca_config("pki", "pki-int");
    config["Token"] = json!(token(&bao, "1h", &["default"]));
    let err = provider(config)
        .generate_ca(&request_at(KeySpec::EcP256, now()))
        .await
        .unwrap_err();
    unavailable(err, &["403", "permission denied"]);

    // Through a proxy that can make Vault look down or hung.
    let proxy = FaultProxy::start(bao.port());
    let mut config = bao.ca_config("pki", "pki-int");
    config["Address"] = json!(proxy.addr);
    let p = provider(config);
    let signer = signer_for(&p).await;
    sign(&signer).await.unwrap();

    proxy.set(Fault::Down);
    unavailable(sign(&signer).await.unwrap_err(), &["sign a leaf"]);
    proxy.set(Fault::None);
    sign(&signer).await.expect("signs again once vault is back");

    proxy.set(Fault::Hang);
    let started = Instant::now();
    unavailable(sign(&signer).await.unwrap_err(), &["timed out"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded: {:?}",
        started.elapsed()
    );
    proxy.set(Fault::None);
    // The client may still hold a connection from the hang in its pool; the
    // first request after the hang can meet it (and time out). Recovery
    // means the next one signs.
    if sign(&signer).await.is_err() {
        sign(&signer).await.expect("signs again once vault answers");
    }

    bao.seal();
    unavailable(sign(&signer).await.unwrap_err(), &["sealed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_root_in_the_mount_is_used_and_must_name_the_trust_domain() {
    let bao = OpenBao::start();
    let req = request_at(KeySpec::EcP256, now());
    let mount = json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}});
    for path in ["ops", "wrong"] {
        root_call(
            &bao,
            "POST",
            &format!("/v1/sys/mounts/{path}"),
            mount.clone(),
        );
    }
    let root = root_call(
        &bao,
        "POST",
        "/v1/ops/root/generate/internal",
        json!({
        "common_name": "Operator Root", "uri_sans": req.trust_domain.ca_uri(),
        "key_type": "ec", "key_bits": 256, "ttl": "8760h", "issuer_name": "ops-root"}),
    );
    let p = provider(bao.ca_config("ops", "ops-int"));
    let m = p.generate_ca(&req).await.unwrap();
    let der = |pem: &str| meshca_core::rotation::first_cert_der(pem).unwrap();
    assert_eq!(
        der(&m.root_pem),
        der(root["data"]["certificate"].as_str().unwrap())
    );
    let signer = meshca_provider::conformance::signer(&p, &m).await;
    sign(&signer).await.unwrap();

    // A root for another trust domain is refused, naming the URI SAN.
    root_call(
        &bao,
        "POST",
        "/v1/wrong/root/generate/internal",
        json!({
        "common_name": "Other Root", "uri_sans": "spiffe://other.consul",
        "key_type": "ec", "key_bits": 256, "ttl": "8760h", "issuer_name": "other"}),
    );
    let err = provider(bao.ca_config("wrong", "wrong-int"))
        .generate_ca(&req)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::InvalidInput(m) if m.contains(&req.trust_domain.ca_uri())),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_provider_stops_renewing_its_token() {
    let bao = OpenBao::start();
    let short = token(&bao, "4s", &[]);
    let mut config = bao.ca_config("pki", "pki-int");
    config["Token"] = json!(short);
    drop(provider(config));
    // Nothing renews it any more, so Vault forgets it once its 4 s TTL is
    // over; a renewer still running would keep it alive past the deadline.
    let alive = || {
        let body = json!({"token": short}).to_string();
        bao.request("POST", "/v1/auth/token/lookup", &body).0 == 200
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        !alive(),
        "the token is still alive 15 s after its provider was dropped"
    );
}

/// The mount paths of `namespace` ("" for the root namespace).
fn mounts(bao: &OpenBao, namespace: &str) -> Vec<String> {
    let path = if namespace.is_empty() {
        "/v1/sys/mounts".to_string()
    } else {
        format!("/v1/{namespace}/sys/mounts")
    };
    let v = root_call(bao, "GET", &path, json!({}));
    v["data"].as_object().unwrap().keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_keeps_the_mounts_inside_it() {
    let bao = OpenBao::start();
    root_call(&bao, "POST", "/v1/sys/namespaces/team", json!({}));
    let mut config = bao.ca_config("pki", "pki-int");
    config["Namespace"] = json!("team");
    let p = provider(config);
    let signer = signer_for(&p).await;
    sign(&signer).await.unwrap();
    let (inside, outside) = (mounts(&bao, "team"), mounts(&bao, ""));
    for m in ["pki/", "pki-int/"] {
        assert!(inside.contains(&m.to_string()), "{m} in team: {inside:?}");
        assert!(
            !outside.contains(&m.to_string()),
            "{m} outside: {outside:?}"
        );
    }
}
