//! Root rotation, intermediate renewal and pruning through the CA engine,
//! with a manual clock and a real on-disk store.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

use meshca_ca::{
    default_provider_factory, CaEngine, CaError, ConfigChange, IssuedLeaf, ProviderFactory,
    Reaction,
};
use meshca_core::x509::decode_pem_blocks;
use meshca_core::{CaConfig, Clock, ManualClock};
use meshca_provider::verify::verify_chain;
use meshca_provider::{BuiltinProvider, CaProvider};
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

    async fn start_with(&self, config: CaConfig, factory: ProviderFactory) -> Arc<CaEngine> {
        let key = StoreKey::from_base64(&self.key).unwrap();
        let store = Arc::new(
            meshca_migrations::open(
                Arc::new(SledStore::open(self.dir.path(), &key).unwrap()),
                &key,
                self.clock.now(),
            )
            .unwrap(),
        );
        CaEngine::start(
            store,
            self.clock.clone() as Arc<dyn Clock>,
            "dc1".into(),
            config,
            factory,
        )
        .await
        .unwrap()
    }

    async fn start(&self) -> Arc<CaEngine> {
        self.start_with(CaConfig::default(), default_provider_factory())
            .await
    }
}

fn update(config: Value) -> ConfigChange {
    ConfigChange {
        provider: "consul".into(),
        config: config.as_object().unwrap().clone(),
        ..ConfigChange::default()
    }
}

fn ders(pem: &str) -> Vec<Vec<u8>> {
    decode_pem_blocks(pem, "CERTIFICATE").unwrap()
}

async fn leaf(ca: &CaEngine) -> IssuedLeaf {
    ca.issue_service_leaf(
        &"web".parse().unwrap(),
        meshca_ca::Requester::default(),
        || {},
    )
    .await
    .unwrap()
}

/// Verifies an issued chain (leaf + the intermediates the API served)
/// against exactly the given roots.
fn verifies(issued: &IssuedLeaf, roots: &[&str], at: OffsetDateTime) -> bool {
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

    ca.change_config(update(
        json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}),
    ))
    .await
    .unwrap();
    let after = ca.published();
    assert_eq!(after.roots.len(), 2);
    let (old, new) = (&after.roots[0], &after.roots[1]);
    assert!(!old.active && new.active);
    assert_eq!(old.rotated_out_at, Some(T0));
    assert!(new.key_spec.is_rsa());
    assert_eq!(new.intermediate_certs.len(), 2, "[cross-signed, signing]");
    assert_eq!(after.active_root_id, new.id);
    assert!(after.index > before.index);

    let issued = leaf(&ca).await;
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
    ca.change_config(update(
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
        &leaf(&ca).await,
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
    assert_ne!(
        renewed.signer.signing_key_id(),
        first.signer.signing_key_id()
    );
    let issued = leaf(&ca).await;
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
    assert_eq!(
        again.published().signer.signing_key_id(),
        renewed.signer.signing_key_id()
    );
    assert!(verifies(
        &leaf(&again).await,
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
    ca.change_config(update(json!({}))).await.unwrap();
    assert_eq!(ca.published().index, index, "identical config is a no-op");
    ca.change_config(update(json!({"LeafCertTTL": "24h", "CSRMaxPerSecond": 5})))
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
        .change_config(update(json!({"PrivateKeyBits": 384})))
        .await
        .unwrap_err();
    assert!(matches!(err, CaError::CrossSigningUnsupported));
    assert_eq!(err.to_string(), "The current CA Provider does not support cross-signing. You can try again with ForceWithoutCrossSigningSet but this may cause disruption - see documentation for more.");
    assert_eq!(ca.published().roots.len(), 1, "nothing changed");

    let mut forced = update(json!({"PrivateKeyBits": 384}));
    forced.force_without_cross_signing = true;
    ca.change_config(forced).await.unwrap();
    let p = ca.published();
    assert_eq!(p.roots.len(), 2);
    assert_eq!(
        p.roots[1].intermediate_certs.len(),
        1,
        "no cross-signed cert"
    );
    assert!(!verifies(&leaf(&ca).await, &[&p.roots[0].root_cert], T0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_rotation_is_refused_with_409() {
    let env = Env::new();
    let ca = env.start().await;
    let a = tokio::spawn({
        let ca = ca.clone();
        async move {
            ca.change_config(update(
                json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 4096}),
            ))
            .await
        }
    });
    let b = tokio::spawn({
        let ca = ca.clone();
        async move {
            ca.change_config(update(
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
    ca.change_config(update(json!({"PrivateKeyType": "rsa"})))
        .await
        .unwrap();
    let p = ca.published();
    drop(ca);
    let again = env.start().await;
    let q = again.published();
    assert_eq!(q.active_root_id, p.active_root_id);
    assert_eq!(q.roots.len(), 2);
    assert!(verifies(&leaf(&again).await, &[&q.roots[0].root_cert], T0));
    again.change_config(update(json!({}))).await.unwrap();
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
        .await
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
            .change_config(update(json!({"PrivateKey": key, "RootCert": cert})))
            .await
            .unwrap_err();
        assert_eq!(err.reaction(), Reaction::FixRequest, "{err}");
        assert_eq!(ca.published().index, index, "nothing changed");
    }
    ca.change_config(update(
        json!({"PrivateKey": key_pem, "RootCert": m.root_pem}),
    ))
    .await
    .unwrap();
    let p = ca.published();
    assert_eq!(p.roots[1].root_cert, m.root_pem);
    assert!(verifies(&leaf(&ca).await, &[&p.roots[0].root_cert], T0));
    let cfg = ca.published().config.to_wire(true);
    assert_eq!(cfg["PrivateKey"], json!("hidden"));
}

fn pem_key(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rotation_replaces_the_root_with_cross_signing() {
    let env = Env::new();
    let ca = env.start().await;
    ca.change_config(update(json!({"RootRotationPeriod": "2000h"})))
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
    assert!(verifies(&leaf(&ca).await, &[&old_root], env.clock.now()));
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
    let err = ca
        .issue_service_leaf(
            &"web".parse().unwrap(),
            meshca_ca::Requester::default(),
            || {},
        )
        .await
        .unwrap_err();
    assert_eq!(err.reaction(), Reaction::Unavailable, "{err}");

    ca.change_config(update(json!({"LeafCertTTL": "1h", "IntermediateCertTTL": "3h", "RootCertTTL": "8760h", "PrivateKeyType": "rsa"})))
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
        &leaf(&ca).await,
        &[&p.roots[1].root_cert],
        env.clock.now()
    ));
}

/// Regression: with `ForceWithoutCrossSigning: true` the old root must not
/// vouch for the new one, even when its provider could (the escape hatch
/// for a lost or compromised old key). meshca used to cross-sign anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_without_cross_signing_skips_cross_signing_even_when_possible() {
    let env = Env::new();
    let ca = env.start().await;
    let old_root = ca.published().roots[0].root_cert.clone();
    let mut forced = update(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    forced.force_without_cross_signing = true;
    ca.change_config(forced).await.unwrap();
    let p = ca.published();
    assert_eq!(p.roots.len(), 2, "the old root stays trusted until pruned");
    let new = p.roots.iter().find(|r| r.active).unwrap();
    assert_eq!(
        new.intermediate_certs.len(),
        1,
        "no cross-signed certificate"
    );
    let issued = leaf(&ca).await;
    let at = T0 + Duration::minutes(5);
    assert!(
        !verifies(&issued, &[&old_root], at),
        "the old root vouches for nothing new"
    );
    assert!(verifies(&issued, &[&new.root_cert], at));
}

/// Regression: intermediate renewal used to activate the new key in the
/// provider before the new chain was published, so a leaf issued in
/// between was signed by the new intermediate but shipped with the old one
/// (a chain that does not verify) and tagged with a SigningKeyID that did
/// not sign it. Leaves are issued in a loop while the intermediate is
/// renewed again and again; every leaf must verify through the chain it was
/// shipped with and name the key that signed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaves_issued_during_renewal_always_ship_the_chain_of_their_signer() {
    let env = Env::new();
    let short = CaConfig::from_wire(
        "consul",
        json!({"LeafCertTTL": "1h", "IntermediateCertTTL": "3h", "RootCertTTL": "87600h"})
            .as_object()
            .unwrap(),
        None,
    )
    .unwrap();
    let ca = env.start_with(short, default_provider_factory()).await;
    let root = ca.published().roots[0].root_cert.clone();
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let done: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let issuers: Vec<_> = done
        .iter()
        .map(|count| {
            let (ca, stop, count) = (ca.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut leaves = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    leaves.push(leaf(&ca).await);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                leaves
            })
        })
        .collect();
    let mut signers = std::collections::HashSet::new();
    // Just past half-life each round, and the next round only once every
    // issuer has finished a leaf: a leaf in flight then holds at most the
    // previous signer, which has most of its life left (the manual clock
    // jumps 91 minutes in a millisecond; real time does not).
    for _ in 0..12 {
        env.clock.advance(Duration::minutes(91));
        assert!(ca.maintain().await.unwrap(), "renewal was due");
        signers.insert(ca.published().signer.signing_key_id().to_string());
        let seen: Vec<usize> = done.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let progressed = || {
            done.iter()
                .zip(&seen)
                .all(|(c, s)| c.load(Ordering::Relaxed) > *s)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !progressed() {
            assert!(std::time::Instant::now() < deadline, "issuers stalled");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut checked = 0;
    for issuer in issuers {
        for issued in issuer.await.unwrap() {
            let chain = ders(&issued.cert_pem);
            let signing = meshca_core::x509::cert_facts(chain.last().unwrap()).unwrap();
            let skid = meshca_core::x509::colon_hex(&signing.subject_key_id.unwrap());
            assert_eq!(issued.signing_key_id, skid, "tagged with its signer");
            let at = issued.valid_after + Duration::minutes(2);
            assert!(
                verifies(&issued, &[&root], at),
                "leaf {} does not verify",
                issued.serial
            );
            checked += 1;
        }
    }
    assert_eq!(signers.len(), 12, "every round renewed the intermediate");
    assert!(checked > 12, "leaves were issued throughout ({checked})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upkeep_adds_a_data_key_when_due_even_without_a_ca_change() {
    let env = Env::new();
    let key = StoreKey::from_base64(&env.key).unwrap();
    let open = || {
        let options = meshca_migrations::OpenOptions {
            key: key.clone(),
            old_key: None,
            data_key_rotation_period: Duration::days(7),
            clock: env.clock.clone(),
        };
        let sled = Arc::new(SledStore::open(env.dir.path(), &key).unwrap());
        Arc::new(meshca_migrations::open_with(sled, &options).unwrap().0)
    };
    let records = open();
    let ca = CaEngine::start(
        records.clone(),
        env.clock.clone() as Arc<dyn Clock>,
        "dc1".into(),
        CaConfig::default(),
        default_provider_factory(),
    )
    .await
    .unwrap();
    let first = records.sealer().data_key_id();
    let before = ca.published();

    env.clock.advance(Duration::days(6));
    ca.maintain().await.unwrap();
    assert_eq!(
        records.sealer().data_key_id(),
        first,
        "not due after 6 days"
    );

    env.clock.advance(Duration::days(1));
    ca.maintain().await.unwrap();
    let second = records.sealer().data_key_id();
    assert_ne!(second, first, "due after 7 days, with no CA change");
    assert_eq!(records.sealer().data_key_ids(), vec![first, second]);
    let after = ca.published();
    assert_eq!(after.index, before.index, "the CA itself did not change");
    assert_eq!(after.roots, before.roots);
    leaf(&ca).await;

    drop((ca, records));
    let reopened = open();
    let state = reopened.load_ca().unwrap().unwrap();
    assert_eq!(
        state.roots, before.roots,
        "the re-sealed records open after a restart"
    );
    assert_eq!(reopened.sealer().data_key_id(), second);
}
