//! A secondary datacenter's engine against a real primary engine in the
//! same process (the HTTP client between them is tested in meshca-server
//! and end to end): renewal at half-life through the primary, riding out
//! an unreachable primary, and refusing an intermediate it cannot use.
//! Both engines share one manual clock.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

use async_trait::async_trait;
use meshca_ca::primary::{Primary, PrimaryRoot, PrimaryRoots};
use meshca_ca::{default_provider_factory, CaEngine, CaError, PrimaryLink, Requester};
use meshca_core::x509::decode_pem_blocks;
use meshca_core::{CaConfig, Clock, ManualClock};
use meshca_provider::verify::verify_chain;
use meshca_store::{MemoryStore, StoreKey};
use std::sync::{Arc, Mutex};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const T0: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

/// A primary engine behind the [`Primary`] trait, with faults injected
/// here (stopping a process is the end-to-end tests' job).
struct InProcess {
    engine: Arc<CaEngine>,
    fault: Mutex<Fault>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Answers as an unreachable primary does.
    Down,
    /// Hands back a CA certificate that is not for our key: the primary's
    /// own signing intermediate.
    WrongCertificate,
}

impl InProcess {
    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    fn check_up(&self) -> Result<Fault, CaError> {
        match *self.fault.lock().unwrap() {
            Fault::Down => Err(CaError::Unavailable(
                "primary datacenter unreachable (fault injected by the test)".into(),
            )),
            other => Ok(other),
        }
    }
}

#[async_trait]
impl Primary for InProcess {
    async fn roots(&self, after: u64, wait: std::time::Duration) -> Result<PrimaryRoots, CaError> {
        self.check_up()?;
        let mut changes = self.engine.subscribe();
        let _ = tokio::time::timeout(wait, changes.wait_for(|i| *i > after)).await;
        let p = self.engine.published();
        Ok(PrimaryRoots {
            index: p.index,
            trust_domain: p.trust_domain.clone(),
            active_root_id: p.active_root_id.clone(),
            roots: p
                .roots
                .iter()
                .map(|r| PrimaryRoot {
                    id: r.id.clone(),
                    root_cert: r.root_cert.clone(),
                    intermediate_certs: r.intermediate_certs.clone(),
                    active: r.active,
                })
                .collect(),
        })
    }

    async fn sign_intermediate(&self, csr_pem: &str) -> Result<String, CaError> {
        if self.check_up()? == Fault::WrongCertificate {
            let p = self.engine.published();
            let own = p.roots.iter().find(|r| r.active).unwrap();
            return Ok(own.intermediate_certs.last().unwrap().clone());
        }
        self.engine
            .sign_intermediate(csr_pem.to_string(), Requester::default())
            .await
    }
}

fn store(clock: &ManualClock) -> Arc<meshca_store::Records> {
    Arc::new(
        meshca_migrations::open(
            Arc::new(MemoryStore::new()),
            &StoreKey::generate().unwrap(),
            clock.now(),
        )
        .unwrap(),
    )
}

async fn primary(clock: &Arc<ManualClock>) -> Arc<CaEngine> {
    CaEngine::start(
        store(clock),
        clock.clone() as Arc<dyn Clock>,
        "dc1".into(),
        CaConfig::default(),
        default_provider_factory(),
    )
    .await
    .unwrap()
}

async fn secondary(clock: &Arc<ManualClock>, link: Arc<InProcess>) -> Arc<CaEngine> {
    CaEngine::start_secondary(
        store(clock),
        clock.clone() as Arc<dyn Clock>,
        "dc2".into(),
        CaConfig::default(),
        default_provider_factory(),
        PrimaryLink {
            primary: link,
            primary_datacenter: "dc1".into(),
        },
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap()
}

fn link(engine: &Arc<CaEngine>) -> Arc<InProcess> {
    Arc::new(InProcess {
        engine: engine.clone(),
        fault: Mutex::new(Fault::None),
    })
}

/// A dc2 leaf, verified through its chain against the primary's roots.
async fn leaf_verifies(dc2: &CaEngine, dc1: &CaEngine, now: OffsetDateTime) {
    let leaf = dc2
        .issue_service_leaf(&"web".parse().unwrap(), Requester::default(), || {})
        .await
        .unwrap();
    assert!(leaf.spiffe_id.to_string().contains("/dc/dc2/"));
    let certs = decode_pem_blocks(&leaf.cert_pem, "CERTIFICATE").unwrap();
    let roots: Vec<Vec<u8>> = dc1
        .published()
        .roots
        .iter()
        .map(|r| {
            decode_pem_blocks(&r.root_cert, "CERTIFICATE")
                .unwrap()
                .remove(0)
        })
        .collect();
    verify_chain(&certs[0], &certs[1..], &roots, now).unwrap();
}

fn signing_key_id(ca: &CaEngine) -> String {
    ca.published().signer.signing_key_id().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intermediate_is_renewed_at_half_life_through_the_primary() {
    let clock = Arc::new(ManualClock::new(T0));
    let dc1 = primary(&clock).await;
    let dc2 = secondary(&clock, link(&dc1)).await;
    assert!(dc2.is_secondary() && !dc1.is_secondary());
    let first = signing_key_id(&dc2);
    let ttl = dc2.published().signer.not_after() - T0;

    clock.advance(ttl / 2 - Duration::hours(1));
    assert!(!dc2.maintain().await.unwrap(), "not due before half-life");
    clock.advance(Duration::hours(2));
    assert!(dc2.maintain().await.unwrap(), "due at half-life");
    assert_ne!(signing_key_id(&dc2), first);
    assert_eq!(
        dc2.published().active_root_id,
        dc1.published().active_root_id
    );
    assert!(dc2.published().signer.not_after() > clock.now() + ttl / 2);
    leaf_verifies(&dc2, &dc1, clock.now()).await;
    let link = dc2.primary_link().unwrap();
    assert_eq!((link.error, link.failures), (None, 0));
    assert_eq!(link.last_contact, Some(clock.now()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_primary_is_reported_and_signing_goes_on_until_expiry() {
    let clock = Arc::new(ManualClock::new(T0));
    let dc1 = primary(&clock).await;
    let primary_link = link(&dc1);
    let dc2 = secondary(&clock, primary_link.clone()).await;
    let first = signing_key_id(&dc2);
    let not_after = dc2.published().signer.not_after();

    primary_link.set(Fault::Down);
    clock.advance((not_after - T0) / 2 + Duration::hours(1));
    let err = dc2.maintain().await.unwrap_err();
    assert!(matches!(err, CaError::Unavailable(_)), "{err}");
    leaf_verifies(&dc2, &dc1, clock.now()).await;
    assert_eq!(
        signing_key_id(&dc2),
        first,
        "nothing half-made was published"
    );
    let link = dc2.primary_link().unwrap();
    assert!(link.error.unwrap().contains("fault injected"));
    assert_eq!(link.failures, 1);

    // Past its intermediate's NotAfter the secondary refuses to sign, with
    // a reason, instead of issuing a dead leaf.
    clock.set(not_after + Duration::minutes(1));
    let err = dc2
        .issue_service_leaf(&"web".parse().unwrap(), Requester::default(), || {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    // The primary is back: the next upkeep renews, and the link is healthy.
    primary_link.set(Fault::None);
    assert!(dc2.maintain().await.unwrap());
    assert_ne!(signing_key_id(&dc2), first);
    leaf_verifies(&dc2, &dc1, clock.now()).await;
    assert_eq!(dc2.primary_link().unwrap().error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermediate_for_another_key_is_never_published() {
    let clock = Arc::new(ManualClock::new(T0));
    let dc1 = primary(&clock).await;
    let primary_link = link(&dc1);
    primary_link.set(Fault::WrongCertificate);
    let err = match CaEngine::start_secondary(
        store(&clock),
        clock.clone() as Arc<dyn Clock>,
        "dc2".into(),
        CaConfig::default(),
        default_provider_factory(),
        PrimaryLink {
            primary: primary_link.clone(),
            primary_datacenter: "dc1".into(),
        },
        std::time::Duration::from_secs(5),
    )
    .await
    {
        Ok(_) => panic!("a secondary started with an intermediate for another key"),
        Err(e) => e,
    };
    assert!(
        matches!(err, CaError::Rejected(_)),
        "refused at once: {err}"
    );
    assert!(err.to_string().contains("unusable"), "{err}");

    // At renewal: refused, reported, and the current intermediate stays.
    primary_link.set(Fault::None);
    let dc2 = secondary(&clock, primary_link.clone()).await;
    let before = dc2.published();
    primary_link.set(Fault::WrongCertificate);
    clock.advance((before.signer.not_after() - T0) / 2 + Duration::hours(1));
    let err = dc2.maintain().await.unwrap_err();
    assert!(err.to_string().contains("unusable"), "{err}");
    assert_eq!(dc2.published().index, before.index);
    assert_eq!(signing_key_id(&dc2), before.signer.signing_key_id());
    let link = dc2.primary_link().unwrap();
    assert!(link.error.unwrap().contains("unusable"));
    assert_eq!(link.failures, 1);
}
