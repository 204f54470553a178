//! The secondary's HTTP client to its primary, against a real primary
//! served on loopback: roots through a blocking query that a rotation
//! wakes, an intermediate signed and checked, addresses tried in turn, and
//! refusals and unreachable primaries as distinct errors.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod support;

use meshca_ca::primary::Primary;
use meshca_ca::{CaError, ConfigChange};
use meshca_server::primary::HttpPrimary;
use meshca_server::CaEngine;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn primary() -> (Arc<CaEngine>, String, tokio::sync::oneshot::Sender<()>) {
    let ca = support::engine().await;
    let (base, stop) = meshca_server::spawn_on_loopback(ca.clone()).await.unwrap();
    (ca, base, stop)
}

/// A loopback address nothing listens on.
fn closed_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn intermediate_csr(td: &meshca_core::TrustDomain) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.subject_alt_names = vec![rcgen::SanType::URI(td.ca_uri().try_into().unwrap())];
    let pem = p.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_block_until_the_primary_rotates_and_match_its_own() {
    let (ca, base, _stop) = primary().await;
    // The first address is down: the client moves on to the next.
    let link = HttpPrimary::new(reqwest::Client::new(), &[closed_address(), base], None);
    let roots = link.roots(0, Duration::from_secs(1)).await.unwrap();
    let p = ca.published();
    assert_eq!(roots.index, p.index);
    assert_eq!(roots.trust_domain, p.trust_domain);
    assert_eq!(roots.active_root_id, p.active_root_id);
    assert_eq!(roots.active().unwrap().root_cert, p.roots[0].root_cert);

    let waiting = {
        let index = roots.index;
        tokio::spawn(async move {
            let started = Instant::now();
            (
                link.roots(index, Duration::from_secs(30)).await,
                started.elapsed(),
            )
        })
    };
    // Nothing observable says the query is parked; this pause only makes
    // that interleaving likely, and the assertions hold either way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let change = ConfigChange {
        provider: "consul".into(),
        config: serde_json::json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384})
            .as_object()
            .unwrap()
            .clone(),
        ..ConfigChange::default()
    };
    ca.change_config(change).await.unwrap();
    let (after, waited) = waiting.await.unwrap();
    let after = after.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "woken by the rotation: {waited:?}"
    );
    assert!(after.index > roots.index);
    assert_eq!(after.roots.len(), 2);
    assert_eq!(after.active_root_id, ca.published().active_root_id);
    assert_eq!(
        after.active().unwrap().intermediate_certs.len(),
        2,
        "the primary's chain: [cross-signed, signing]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_signs_our_intermediate_and_refusals_are_reported() {
    let (ca, base, _stop) = primary().await;
    let link = HttpPrimary::new(reqwest::Client::new(), &[base], None);
    let td = ca.published().trust_domain.clone();
    let (key, csr) = intermediate_csr(&td);
    let pem = link.sign_intermediate(&csr).await.unwrap();
    let der = meshca_core::rotation::first_cert_der(&pem).unwrap();
    let root = meshca_core::rotation::first_cert_der(&ca.published().roots[0].root_cert).unwrap();
    use rcgen::PublicKeyData as _;
    meshca_provider::verify::check_signed_intermediate(
        &der,
        &key.subject_public_key_info(),
        &root,
        &td,
    )
    .unwrap();

    // A refusal is Rejected with the primary's reason, not swallowed.
    let other = meshca_core::TrustDomain::for_cluster(&uuid::Uuid::from_u128(1));
    let (_, wrong) = intermediate_csr(&other);
    match link.sign_intermediate(&wrong).await {
        Err(CaError::Rejected(m)) => {
            assert!(m.contains("400") && m.contains("exactly one SAN"), "{m}")
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // No primary at all: Unavailable, naming every address tried.
    let (a, b) = (closed_address(), closed_address());
    let down = HttpPrimary::new(reqwest::Client::new(), &[a.clone(), b.clone()], None);
    match down.sign_intermediate(&csr).await {
        Err(CaError::Unavailable(m)) => assert!(m.contains(&a) && m.contains(&b), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
