//! The conformance suite every [`CaProvider`] passes (cargo feature
//! `conformance`). The built-in provider runs it in
//! `tests/conformance.rs`; a new provider (Vault) runs the same functions
//! against its real backend.
//!
//! Each function panics with a message naming the broken promise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: failures should panic loudly

use crate::verify::verify_chain;
use crate::{BuiltinProvider, CaMaterial, CaProvider, CaRequest, LeafRequest, Signer};
use meshca_core::csr::ValidatedCsr;
use meshca_core::rotation::first_cert_der;
use meshca_core::x509::{cert_facts, key_id};
use meshca_core::{CaConfig, KeySpec, SpiffeId, TrustDomain};
use rcgen::PublicKeyData;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// The time every request of the suite is made at.
pub const NOW: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

/// Every key spec a provider must support.
pub const KEY_SPECS: [KeySpec; 5] = [
    KeySpec::EcP256,
    KeySpec::EcP384,
    KeySpec::Rsa2048,
    KeySpec::Rsa3072,
    KeySpec::Rsa4096,
];

fn cluster_id() -> Uuid {
    Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0)
}

/// A request for a CA with `spec` keys and default TTLs.
pub fn request(spec: KeySpec) -> CaRequest {
    let config = serde_json::json!({
        "PrivateKeyType": spec.key_type(),
        "PrivateKeyBits": spec.bits(),
    });
    CaRequest {
        cluster_id: cluster_id(),
        trust_domain: TrustDomain::for_cluster(&cluster_id()),
        config: CaConfig::from_wire("consul", config.as_object().unwrap(), None).unwrap(),
        now: NOW,
    }
}

/// A leaf request for service `web` with a fresh key of `alg`.
pub fn leaf_request(alg: &'static rcgen::SignatureAlgorithm) -> LeafRequest {
    let key = match alg {
        a if a == &rcgen::PKCS_RSA_SHA256 => {
            rcgen::KeyPair::generate_rsa_for(a, rcgen::RsaKeySize::_2048).unwrap()
        }
        a => rcgen::KeyPair::generate_for(a).unwrap(),
    };
    let td = TrustDomain::for_cluster(&cluster_id());
    let id = SpiffeId::service(&td, "default", "dc1", "web").unwrap();
    LeafRequest {
        csr: ValidatedCsr::for_public_key(id, &key.subject_public_key_info()).unwrap(),
        not_before: NOW - Duration::minutes(1),
        not_after: NOW + Duration::hours(72),
    }
}

/// The signer of staged or stored material.
pub async fn signer(provider: &dyn CaProvider, m: &CaMaterial) -> Signer {
    let keys = provider.open(m).await.expect("open the material's keys");
    Signer::new(keys, &m.root_pem, std::slice::from_ref(&m.signing_pem)).expect("signer")
}

fn der(pem: &str) -> Vec<u8> {
    first_cert_der(pem).unwrap()
}

/// Signs one leaf for each CSR key type and checks it independently of the
/// signer's own check: chain to the root, NotAfter as requested, the serial
/// the provider reported, a key identifier from the request's key.
pub async fn signs_verifiable_leaves(provider: &dyn CaProvider, m: &CaMaterial) {
    let signer = signer(provider, m).await;
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_RSA_SHA256,
    ] {
        let req = leaf_request(alg);
        let signed = signer.sign_leaf(req.clone()).await.expect("sign a leaf");
        let leaf = cert_facts(&signed.der).unwrap();
        assert!(!leaf.is_ca, "a leaf must not be a CA");
        assert_eq!(leaf.not_after, req.not_after, "NotAfter as requested");
        assert_eq!(leaf.subject_key_id, Some(key_id(req.csr.spki_der())));
        assert_eq!(
            meshca_core::Serial::from_bytes(&leaf.serial).unwrap(),
            signed.serial
        );
        verify_chain(
            &signed.der,
            &[der(&m.signing_pem)],
            &[der(&m.root_pem)],
            NOW,
        )
        .expect("the leaf chains to the root");
    }
}

/// A new CA for every key spec: a CA root with SKID = SHA-256 of its key,
/// and an intermediate that signs verifiable leaves.
pub async fn bootstraps_every_key_spec(provider: &dyn CaProvider, specs: &[KeySpec]) {
    for spec in specs {
        let m = provider
            .generate_ca(&request(*spec))
            .await
            .expect("generate");
        assert_eq!(m.key_spec, *spec);
        let root = cert_facts(&der(&m.root_pem)).unwrap();
        assert!(root.is_ca, "{spec:?}: the root must be a CA");
        assert_eq!(root.subject_key_id, Some(key_id(&root.spki_der)));
        assert!(cert_facts(&der(&m.signing_pem)).unwrap().is_ca);
        signs_verifiable_leaves(provider, &m).await;
    }
}

/// Staged material is a value: generating another CA changes nothing about
/// the first, whose keys still open and sign.
pub async fn staging_is_inert(provider: &dyn CaProvider) {
    let first = provider
        .generate_ca(&request(KeySpec::EcP256))
        .await
        .unwrap();
    let second = provider
        .generate_ca(&request(KeySpec::EcP256))
        .await
        .unwrap();
    assert_ne!(first.root_pem, second.root_pem, "each CA has its own root");
    signs_verifiable_leaves(provider, &first).await;
}

/// Renewal returns a new intermediate under the same root, staged: the old
/// handle keeps signing with the old intermediate, the new one with the new.
pub async fn renews_the_intermediate(provider: &dyn CaProvider) {
    let req = request(KeySpec::EcP384);
    let first = provider.generate_ca(&req).await.unwrap();
    let keys = provider.open(&first).await.unwrap();
    let renewed = keys.renew_intermediate(&req).await.expect("renew");
    assert_eq!(der(&renewed.root_pem), der(&first.root_pem), "same root");
    assert_ne!(renewed.signing_pem, first.signing_pem, "a new intermediate");
    signs_verifiable_leaves(provider, &first).await;
    signs_verifiable_leaves(provider, &renewed).await;
}

/// Cross-signs roots of every key spec made by another provider (the
/// built-in one): same subject, key and SKID; a leaf of the other CA then
/// verifies through `[cross-signed, its intermediate]` against our root.
pub async fn cross_signs_other_roots(provider: &dyn CaProvider, specs: &[KeySpec]) {
    if !provider.supports_cross_signing() {
        return;
    }
    let ours = provider
        .generate_ca(&request(KeySpec::EcP256))
        .await
        .unwrap();
    let keys = provider.open(&ours).await.unwrap();
    let other = BuiltinProvider::new();
    for spec in specs {
        let theirs = other.generate_ca(&request(*spec)).await.unwrap();
        let until = NOW + Duration::hours(144);
        let x = keys
            .cross_sign_ca(&theirs.root_pem, until, NOW)
            .await
            .expect("cross-sign");
        let (x_facts, their_root) = (
            cert_facts(&der(&x)).unwrap(),
            cert_facts(&der(&theirs.root_pem)).unwrap(),
        );
        assert_eq!(x_facts.spki_der, their_root.spki_der, "{spec:?}: same key");
        assert_eq!(x_facts.subject_key_id, their_root.subject_key_id);
        assert_eq!(x_facts.not_after, until);
        let leaf = signer(&other, &theirs)
            .await
            .sign_leaf(leaf_request(&rcgen::PKCS_ECDSA_P256_SHA256))
            .await
            .unwrap();
        verify_chain(
            &leaf.der,
            &[der(&x), der(&theirs.signing_pem)],
            &[der(&ours.root_pem)],
            NOW + Duration::hours(1),
        )
        .unwrap_or_else(|e| panic!("{spec:?}: leaf via cross-signed root: {e}"));
    }
}

/// Stored material opens again without creating keys, and signs with the
/// same intermediate; material whose keys were swapped is refused.
pub async fn restores_from_state(provider: &dyn CaProvider) {
    let m = provider
        .generate_ca(&request(KeySpec::EcP256))
        .await
        .unwrap();
    signs_verifiable_leaves(provider, &m).await;
    let other = provider
        .generate_ca(&request(KeySpec::EcP256))
        .await
        .unwrap();
    let mut swapped = m.clone();
    swapped.private_keys = other.private_keys;
    swapped.provider_state = other.provider_state;
    assert!(
        provider.open(&swapped).await.is_err(),
        "keys that do not match the certificates must be refused"
    );
}

/// Cleanup after being replaced succeeds (and is idempotent).
pub async fn cleans_up(provider: &dyn CaProvider) {
    let successor = CaConfig::default();
    provider.cleanup(&successor).await.expect("cleanup");
    provider.cleanup(&successor).await.expect("cleanup twice");
}

/// The whole suite.
pub async fn run_all(provider: &dyn CaProvider, specs: &[KeySpec]) {
    bootstraps_every_key_spec(provider, specs).await;
    staging_is_inert(provider).await;
    renews_the_intermediate(provider).await;
    cross_signs_other_roots(provider, specs).await;
    restores_from_state(provider).await;
    cleans_up(provider).await;
}
