//! Root rotation, intermediate renewal and pruning through the CA manager,
//! with a manual clock and a real on-disk store.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

use meshca_core::x509::decode_pem_blocks;
use meshca_core::{CaConfig, Clock, ManualClock};
use meshca_provider::verify::verify_chain;
use meshca_provider::{BuiltinProvider, CaProvider};
use meshca_server::error::ApiError;
use meshca_server::manager::ProviderFactory;
use meshca_server::wire::{CaConfigurationUpdate, IssuedCert};
use meshca_server::{default_provider_factory, CaManager};
use meshca_store::StoreKey;
use meshca_store_sled::SledStore;
use serde_json::{json, Value};
use std::sync::Arc;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const T0: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

struct Env {
    dir: tempfile::TempDir,
    key: String,
    clock: Arc<ManualClock>,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            key: StoreKey::generate().unwrap().to_base64().to_string(),
            clock: Arc::new(ManualClock::new(T0)),
        }
    }

    async fn start_with(&self, config: CaConfig, factory: ProviderFactory) -> Arc<CaManager> {
        let key = StoreKey::from_base64(&self.key).unwrap();
        let store = Arc::new(
            meshca_migrations::open(
                Arc::new(SledStore::open(self.dir.path(), &key).unwrap()),
                &key,
                self.clock.now(),
            )
            .unwrap(),
        );
        CaManager::start(
            store,
            self.clock.clone() as Arc<dyn Clock>,
            "dc1".into(),
            config,
            factory,
        )
        .await
        .unwrap()
    }

    async fn start(&self) -> Arc<CaManager> {
        self.start_with(CaConfig::default(), default_provider_factory())
            .await
    }
}

fn update(config: Value) -> CaConfigurationUpdate {
    serde_json::from_value(json!({"Provider": "consul", "Config": config})).unwrap()
}

fn ders(pem: &str) -> Vec<Vec<u8>> {
    decode_pem_blocks(pem, "CERTIFICATE").unwrap()
}

fn leaf(ca: &CaManager) -> IssuedCert {
    ca.issue_service_leaf("web").unwrap()
}

/// Verifies an issued chain (leaf + the intermediates the API served)
/// against exactly the given roots.
fn verifies(issued: &IssuedCert, roots: &[&str], at: OffsetDateTime) -> bool {
    let chain = ders(&issued.cert_pem);
    let roots: Vec<Vec<u8>> = roots.iter().flat_map(|r| ders(r)).collect();
    verify_chain(&chain[0], &chain[1..], &roots, at).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_root_trust_through_the_cross_signed_certificate() {
    let env = Env::new();
    let ca = env.start().await;
    let before = ca.published();
    let old_root = before.roots[0].root_cert.clone();

    ca.update_configuration(update(
        json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}),
    ))
    .await
    .unwrap();
    let after = ca.published();
    assert_eq!(after.roots.len(), 2);
    let (old, new) = (&after.roots[0], &after.roots[1]);
    assert!(!old.active && new.active);
    assert_eq!(old.rotated_out_at, Some(T0));
    assert_eq!(new.private_key_type, "rsa");
    assert_eq!(new.intermediate_certs.len(), 2, "[cross-signed, signing]");
    assert_eq!(after.active_root_id, new.id);
    assert!(after.index > before.index);

    let issued = leaf(&ca);
    let at = T0 + Duration::hours(1);
    assert!(verifies(&issued, &[&old_root], at), "old root alone");
    assert!(verifies(&issued, &[&new.root_cert], at), "new root alone");
    // The cross-signed certificate lives 2 x LeafCertTTL (72h), no longer.
    assert!(!verifies(&issued, &[&old_root], T0 + Duration::hours(145)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_removes_the_old_root_and_the_expired_cross_signed_cert() {
    let env = Env::new();
    let ca = env.start().await;
    ca.update_configuration(update(
        json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}),
    ))
    .await
    .unwrap();
    assert!(!ca.maintain().await.unwrap(), "nothing is due yet");
    env.clock.advance(Duration::hours(143));
    assert!(!ca.maintain().await.unwrap());
    assert_eq!(ca.published().roots.len(), 2);

    env.clock.advance(Duration::hours(1));
    assert!(ca.maintain().await.unwrap());
    let p = ca.published();
    assert_eq!(p.roots.len(), 1);
    assert!(p.roots[0].active);
    assert_eq!(
        p.roots[0].intermediate_certs.len(),
        1,
        "cross-signed dropped"
    );
    let pem = String::from_utf8(p.roots_pem.to_vec()).unwrap();
    assert_eq!(
        pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "root + signing"
    );
    assert!(verifies(
        &leaf(&ca),
        &[&p.roots[0].root_cert],
        env.clock.now()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intermediate_is_renewed_at_half_life_and_survives_restart() {
    let env = Env::new();
    let ca = env.start().await;
    let first = ca.published();
    env.clock.advance(Duration::hours(4379));
    assert!(!ca.maintain().await.unwrap());
    env.clock.advance(Duration::hours(2));
    assert!(ca.maintain().await.unwrap());
    let renewed = ca.published();
    assert_eq!(renewed.active_root_id, first.active_root_id);
    assert_ne!(renewed.signing_key_id, first.signing_key_id);
    let issued = leaf(&ca);
    assert!(issued
        .cert_pem
        .contains(renewed.roots[0].intermediate_certs[0].trim_end()));
    assert!(verifies(
        &issued,
        &[&renewed.roots[0].root_cert],
        env.clock.now()
    ));
    drop((ca, first));

    let again = env.start().await;
    assert_eq!(again.published().signing_key_id, renewed.signing_key_id);
    assert!(verifies(
        &leaf(&again),
        &[&renewed.roots[0].root_cert],
        env.clock.now()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_changes_and_identical_configs_never_rotate() {
    let env = Env::new();
    let ca = env.start().await;
    let root = ca.published().active_root_id.clone();
    let index = ca.published().index;
    ca.update_configuration(update(json!({}))).await.unwrap();
    assert_eq!(ca.published().index, index, "identical config is a no-op");
    ca.update_configuration(update(json!({"LeafCertTTL": "24h", "CSRMaxPerSecond": 5})))
        .await
        .unwrap();
    let p = ca.published();
    assert_eq!(
        (p.active_root_id.as_str(), p.roots.len()),
        (root.as_str(), 1)
    );
    assert!(p.index > index);
}

fn no_cross_signing() -> ProviderFactory {
    Arc::new(|_: &CaConfig| {
        Ok(Arc::new(BuiltinProvider::without_cross_signing()) as Arc<dyn CaProvider>)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_cannot_cross_sign_needs_force() {
    let env = Env::new();
    let ca = env
        .start_with(CaConfig::default(), no_cross_signing())
        .await;
    let err = ca
        .update_configuration(update(json!({"PrivateKeyBits": 384})))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::CrossSigningUnsupported));
    assert_eq!(err.to_string(), "The current CA Provider does not support cross-signing. You can try again with ForceWithoutCrossSigningSet but this may cause disruption - see documentation for more.");
    assert_eq!(ca.published().roots.len(), 1, "nothing changed");

    let mut forced = update(json!({"PrivateKeyBits": 384}));
    forced.force_without_cross_signing = true;
    ca.update_configuration(forced).await.unwrap();
    let p = ca.published();
    assert_eq!(p.roots.len(), 2);
    assert_eq!(
        p.roots[1].intermediate_certs.len(),
        1,
        "no cross-signed cert"
    );
    assert!(!verifies(&leaf(&ca), &[&p.roots[0].root_cert], T0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_rotation_is_refused_with_409() {
    let env = Env::new();
    let ca = env.start().await;
    let a = tokio::spawn({
        let ca = ca.clone();
        async move {
            ca.update_configuration(update(
                json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 4096}),
            ))
            .await
        }
    });
    let b = tokio::spawn({
        let ca = ca.clone();
        async move {
            ca.update_configuration(update(
                json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 3072}),
            ))
            .await
        }
    });
    let results = [a.await.unwrap(), b.await.unwrap()];
    let busy: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(busy.len(), 1, "{results:?}");
    assert_eq!(
        busy[0].to_string(),
        "CA is already in state \"RECONFIGURING\""
    );
    assert_eq!(
        ca.published().roots.len(),
        2,
        "exactly one rotation happened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_survives_restart_and_can_rotate_again() {
    let env = Env::new();
    let ca = env.start().await;
    ca.update_configuration(update(json!({"PrivateKeyType": "rsa"})))
        .await
        .unwrap();
    let p = ca.published();
    drop(ca);
    let again = env.start().await;
    let q = again.published();
    assert_eq!(q.active_root_id, p.active_root_id);
    assert_eq!(q.roots.len(), 2);
    assert!(verifies(&leaf(&again), &[&q.roots[0].root_cert], T0));
    again.update_configuration(update(json!({}))).await.unwrap();
    assert_eq!(again.published().roots.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bring_your_own_root_is_validated_before_anything_changes() {
    let env = Env::new();
    let ca = env.start().await;
    let td = ca.published().trust_domain.clone();
    // A usable root for our trust domain, made by another built-in provider.
    let other = BuiltinProvider::new();
    let m = other
        .generate_ca(&meshca_provider::CaRequest {
            cluster_id: ca.published().cluster_id,
            trust_domain: td.clone(),
            config: CaConfig::default(),
            now: T0,
        })
        .unwrap();
    let key_pem = pem_key(m.private_keys["builtin/root"].expose());
    let wrong_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let index = ca.published().index;
    for (key, cert) in [
        (wrong_key.as_str(), m.root_pem.as_str()),
        (key_pem.as_str(), m.signing_pem.as_str()),
        (key_pem.as_str(), "not a certificate"),
        ("not a key", m.root_pem.as_str()),
    ] {
        let err = ca
            .update_configuration(update(json!({"PrivateKey": key, "RootCert": cert})))
            .await
            .unwrap_err();
        assert_eq!(err.status_and_code().0, 400, "{err}");
        assert_eq!(ca.published().index, index, "nothing changed");
    }
    ca.update_configuration(update(
        json!({"PrivateKey": key_pem, "RootCert": m.root_pem}),
    ))
    .await
    .unwrap();
    let p = ca.published();
    assert_eq!(p.roots[1].root_cert, m.root_pem);
    assert!(verifies(&leaf(&ca), &[&p.roots[0].root_cert], T0));
    let cfg = ca.configuration();
    assert_eq!(cfg.config["PrivateKey"], json!("hidden"));
}

fn pem_key(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rotation_replaces_the_root_with_cross_signing() {
    let env = Env::new();
    let ca = env.start().await;
    ca.update_configuration(update(json!({"RootRotationPeriod": "2000h"})))
        .await
        .unwrap();
    let first = ca.published();
    env.clock.advance(Duration::hours(1999));
    assert!(!ca.maintain().await.unwrap());
    env.clock.advance(Duration::hours(2));
    assert!(ca.maintain().await.unwrap());
    let p = ca.published();
    assert_eq!(p.roots.len(), 2);
    assert_ne!(p.active_root_id, first.active_root_id);
    assert_eq!(p.roots[1].intermediate_certs.len(), 2, "cross-signed");
    let old_root = first.roots[0].root_cert.clone();
    assert!(verifies(&leaf(&ca), &[&old_root], env.clock.now()));
    assert!(!ca.maintain().await.unwrap(), "the new root is not due");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_ca_recovers_by_rotating_without_a_dead_cross_signature() {
    let env = Env::new();
    let short = CaConfig::from_wire(
        "consul",
        json!({"LeafCertTTL": "1h", "IntermediateCertTTL": "3h", "RootCertTTL": "3h"})
            .as_object()
            .unwrap(),
        None,
    )
    .unwrap();
    let ca = env.start_with(short, default_provider_factory()).await;
    env.clock.advance(Duration::hours(4));
    let err = ca.issue_service_leaf("web").unwrap_err();
    assert_eq!(err.status_and_code().0, 503, "{err}");

    ca.update_configuration(update(json!({"LeafCertTTL": "1h", "IntermediateCertTTL": "3h", "RootCertTTL": "8760h", "PrivateKeyType": "rsa"})))
        .await
        .unwrap();
    let p = ca.published();
    assert_eq!(p.roots.len(), 2);
    assert_eq!(
        p.roots[1].intermediate_certs.len(),
        1,
        "no cross-signature by an expired root"
    );
    assert!(verifies(
        &leaf(&ca),
        &[&p.roots[1].root_cert],
        env.clock.now()
    ));
}
