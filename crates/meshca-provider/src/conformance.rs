//! The conformance suite every [`CaProvider`] passes (cargo feature
//! `conformance`). The built-in provider runs it in
//! `tests/conformance.rs`; the Vault provider runs the same functions
//! against a real OpenBao server.
//!
//! Every function takes the time its requests are made at: the built-in
//! provider signs for any time ([`NOW`]), a remote one only for its own
//! clock. Each function panics with a message naming the broken promise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: failures should panic loudly

use crate::verify::check_signed_intermediate;
use crate::verify::verify_chain;
use crate::{
    BuiltinProvider, CaMaterial, CaProvider, CaRequest, IntermediateRequest, LeafRequest, Signer,
};
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

/// A request for a CA with `spec` keys and default TTLs, made at [`NOW`].
pub fn request(spec: KeySpec) -> CaRequest {
    request_at(spec, NOW)
}

/// A request for a CA with `spec` keys and default TTLs, made at `now`.
pub fn request_at(spec: KeySpec, now: OffsetDateTime) -> CaRequest {
    let config = serde_json::json!({
        "PrivateKeyType": spec.key_type(),
        "PrivateKeyBits": spec.bits(),
    });
    CaRequest {
        cluster_id: cluster_id(),
        trust_domain: TrustDomain::for_cluster(&cluster_id()),
        config: CaConfig::from_wire("consul", config.as_object().unwrap(), None).unwrap(),
        now,
    }
}

/// A leaf request for service `web` with a fresh key of `alg`, at [`NOW`].
pub fn leaf_request(alg: &'static rcgen::SignatureAlgorithm) -> LeafRequest {
    leaf_request_at(alg, NOW)
}

/// A leaf request for service `web` with a fresh key of `alg`, valid from a
/// minute before `now` for 72 hours, carried by a CSR signed with the key
/// (a provider that signs only CSRs gets one).
pub fn leaf_request_at(
    alg: &'static rcgen::SignatureAlgorithm,
    now: OffsetDateTime,
) -> LeafRequest {
    let key = match alg {
        a if a == &rcgen::PKCS_RSA_SHA256 => {
            rcgen::KeyPair::generate_rsa_for(a, rcgen::RsaKeySize::_2048).unwrap()
        }
        a => rcgen::KeyPair::generate_for(a).unwrap(),
    };
    let td = TrustDomain::for_cluster(&cluster_id());
    let id = SpiffeId::service(&td, "default", "dc1", "web").unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.to_string().try_into().unwrap())];
    let csr_der = params.serialize_request(&key).unwrap().der().to_vec();
    LeafRequest {
        csr: ValidatedCsr::for_public_key(id, &key.subject_public_key_info())
            .unwrap()
            .with_csr_der(csr_der)
            .unwrap(),
        not_before: now - Duration::minutes(1),
        not_after: now + Duration::hours(72),
    }
}

/// Whether `skid` identifies the key `spki_der` by a method a CA may use:
/// meshca's (SHA-256 of the SubjectPublicKeyInfo) or RFC 5280's method 1
/// (SHA-1 of the subjectPublicKey bits, what Vault uses).
pub fn identifies_key(skid: Option<&[u8]>, spki_der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    let Some(skid) = skid else { return false };
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).unwrap();
    let method1 = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &spki.subject_public_key.data,
    );
    skid == key_id(spki_der).as_slice() || skid == method1.as_ref()
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
pub async fn signs_verifiable_leaves(
    provider: &dyn CaProvider,
    m: &CaMaterial,
    now: OffsetDateTime,
) {
    let signer = signer(provider, m).await;
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_RSA_SHA256,
    ] {
        let req = leaf_request_at(alg, now);
        let signed = signer.sign_leaf(req.clone()).await.expect("sign a leaf");
        let leaf = cert_facts(&signed.der).unwrap();
        assert!(!leaf.is_ca, "a leaf must not be a CA");
        assert_eq!(leaf.not_after, req.not_after, "NotAfter as requested");
        assert!(
            identifies_key(leaf.subject_key_id.as_deref(), req.csr.spki_der()),
            "the leaf's SubjectKeyId identifies the request's key"
        );
        assert_eq!(
            meshca_core::Serial::from_bytes(&leaf.serial).unwrap(),
            signed.serial
        );
        verify_chain(
            &signed.der,
            &[der(&m.signing_pem)],
            &[der(&m.root_pem)],
            now,
        )
        .expect("the leaf chains to the root");
    }
}

/// A new CA for every key spec: a CA root with SKID = SHA-256 of its key,
/// and an intermediate that signs verifiable leaves.
pub async fn bootstraps_every_key_spec(
    provider: &dyn CaProvider,
    specs: &[KeySpec],
    now: OffsetDateTime,
) {
    for spec in specs {
        let m = provider
            .generate_ca(&request_at(*spec, now))
            .await
            .expect("generate");
        assert_eq!(m.key_spec, *spec);
        let root = cert_facts(&der(&m.root_pem)).unwrap();
        assert!(root.is_ca, "{spec:?}: the root must be a CA");
        assert!(identifies_key(
            root.subject_key_id.as_deref(),
            &root.spki_der
        ));
        assert!(cert_facts(&der(&m.signing_pem)).unwrap().is_ca);
        signs_verifiable_leaves(provider, &m, now).await;
    }
}

/// Staged material is a value: generating another CA changes nothing about
/// the first, whose keys still open and sign.
pub async fn staging_is_inert(provider: &dyn CaProvider, now: OffsetDateTime) {
    let first = provider
        .generate_ca(&request_at(KeySpec::EcP256, now))
        .await
        .unwrap();
    let second = provider
        .generate_ca(&request_at(KeySpec::EcP256, now))
        .await
        .unwrap();
    assert_ne!(first.root_pem, second.root_pem, "each CA has its own root");
    signs_verifiable_leaves(provider, &first, now).await;
}

/// Renewal returns a new intermediate under the same root, staged: the old
/// handle keeps signing with the old intermediate, the new one with the new.
pub async fn renews_the_intermediate(provider: &dyn CaProvider, now: OffsetDateTime) {
    let req = request_at(KeySpec::EcP384, now);
    let first = provider.generate_ca(&req).await.unwrap();
    let keys = provider.open(&first).await.unwrap();
    let renewed = keys.renew_intermediate(&req).await.expect("renew");
    assert_eq!(der(&renewed.root_pem), der(&first.root_pem), "same root");
    assert_ne!(renewed.signing_pem, first.signing_pem, "a new intermediate");
    signs_verifiable_leaves(provider, &first, now).await;
    signs_verifiable_leaves(provider, &renewed, now).await;
}

/// Cross-signs roots of every key spec made by another provider (the
/// built-in one): same subject, key and SKID; a leaf of the other CA then
/// verifies through `[cross-signed, its intermediate]` against our root.
pub async fn cross_signs_other_roots(
    provider: &dyn CaProvider,
    specs: &[KeySpec],
    now: OffsetDateTime,
) {
    if !provider.supports_cross_signing() {
        return;
    }
    let ours = provider
        .generate_ca(&request_at(KeySpec::EcP256, now))
        .await
        .unwrap();
    let keys = provider.open(&ours).await.unwrap();
    let other = BuiltinProvider::new();
    for spec in specs {
        let theirs = other.generate_ca(&request_at(*spec, now)).await.unwrap();
        let until = now + Duration::hours(144);
        let x = keys
            .cross_sign_ca(&theirs.root_pem, until, now)
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
            .sign_leaf(leaf_request_at(&rcgen::PKCS_ECDSA_P256_SHA256, now))
            .await
            .unwrap();
        verify_chain(
            &leaf.der,
            &[der(&x), der(&theirs.signing_pem)],
            &[der(&ours.root_pem)],
            now + Duration::hours(1),
        )
        .unwrap_or_else(|e| panic!("{spec:?}: leaf via cross-signed root: {e}"));
    }
}

/// A key for `alg` (RSA 2048 for RSA).
fn key_for(alg: &'static rcgen::SignatureAlgorithm) -> rcgen::KeyPair {
    match alg {
        a if a == &rcgen::PKCS_RSA_SHA256 => {
            rcgen::KeyPair::generate_rsa_for(a, rcgen::RsaKeySize::_2048).unwrap()
        }
        a => rcgen::KeyPair::generate_for(a).unwrap(),
    }
}

/// Signs secondary datacenters' intermediates (P-256, P-384 and RSA keys):
/// each passes the intermediate check (CA, pathLen 0, the trust domain's
/// URI SAN, the requested key, signed by the root), ends when asked or with
/// the root, and a leaf the secondary signs with it chains to our root.
pub async fn signs_intermediates_for_secondaries(provider: &dyn CaProvider, now: OffsetDateTime) {
    let req = request_at(KeySpec::EcP256, now);
    let m = provider.generate_ca(&req).await.unwrap();
    let keys = provider.open(&m).await.unwrap();
    let root_der = der(&m.root_pem);
    let root_not_after = cert_facts(&root_der).unwrap().not_after;
    for (alg, until) in [
        (&rcgen::PKCS_ECDSA_P256_SHA256, now + Duration::hours(8760)),
        (&rcgen::PKCS_ECDSA_P384_SHA384, now + Duration::hours(100)),
        (
            &rcgen::PKCS_RSA_SHA256,
            root_not_after + Duration::days(365),
        ),
    ] {
        let key = key_for(alg);
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.subject_alt_names = vec![rcgen::SanType::URI(
            req.trust_domain.ca_uri().try_into().unwrap(),
        )];
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let csr = meshca_core::csr::validate_intermediate_csr(&pem, &req.trust_domain, 64 * 1024)
            .unwrap();
        let signed = keys
            .sign_intermediate(&IntermediateRequest {
                csr,
                cluster_id: req.cluster_id,
                trust_domain: req.trust_domain.clone(),
                now,
                not_after: until,
            })
            .await
            .expect("sign a secondary's intermediate");
        let int_der = der(&signed);
        let spki = key.subject_public_key_info();
        check_signed_intermediate(&int_der, &spki, &root_der, &req.trust_domain)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        let facts = cert_facts(&int_der).unwrap();
        assert_eq!(
            facts.not_after,
            until.min(root_not_after),
            "{alg:?}: NotAfter"
        );
        assert!(identifies_key(facts.subject_key_id.as_deref(), &spki));

        // The secondary signs a leaf with it: the leaf chains to our root.
        let issuer = rcgen::Issuer::from_ca_cert_der(&int_der.clone().into(), key).unwrap();
        let leaf_key = key_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let td = &req.trust_domain;
        let id = SpiffeId::service(td, "default", "dc2", "web").unwrap();
        let mut leaf = rcgen::CertificateParams::default();
        leaf.subject_alt_names = vec![rcgen::SanType::URI(id.to_string().try_into().unwrap())];
        leaf.not_before = now - Duration::minutes(1);
        leaf.not_after = now + Duration::hours(1);
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
        verify_chain(leaf.der(), &[int_der], std::slice::from_ref(&root_der), now)
            .unwrap_or_else(|e| panic!("{alg:?}: a secondary's leaf: {e}"));
    }
}

/// Stages an intermediate key for a primary datacenter to sign (a
/// capability: a provider that answers `Unsupported` skips this): the CSR
/// is one a primary accepts, the key settings are the request's (RSA under
/// an EC primary here), the signed material opens and signs leaves that
/// chain to the primary's root, and keys without a root refuse the root's
/// work. A certificate for another key does not open.
pub async fn stages_intermediates_for_a_primary(provider: &dyn CaProvider, now: OffsetDateTime) {
    let req = request_at(KeySpec::Rsa2048, now);
    let staged = match provider.stage_intermediate(&req).await {
        Err(crate::ProviderError::Unsupported { .. }) => return,
        other => other.expect("stage an intermediate"),
    };
    let csr =
        meshca_core::csr::validate_intermediate_csr(&staged.csr_pem, &req.trust_domain, 64 * 1024)
            .expect("a CSR the primary accepts");
    assert_eq!(csr.spki_der(), staged.spki_der.as_slice());
    assert_eq!(staged.key_spec, KeySpec::Rsa2048);

    let primary = BuiltinProvider::new();
    let root = primary
        .generate_ca(&request_at(KeySpec::EcP256, now))
        .await
        .unwrap();
    let root_keys = primary.open(&root).await.unwrap();
    let signed = root_keys
        .sign_intermediate(&IntermediateRequest {
            csr,
            cluster_id: req.cluster_id,
            trust_domain: req.trust_domain.clone(),
            now,
            not_after: now + Duration::hours(8760),
        })
        .await
        .unwrap();
    let m = staged.clone().into_material(&root.root_pem, &signed);
    let s = signer(provider, &m).await;
    let leaf = s
        .sign_leaf(leaf_request_at(&rcgen::PKCS_ECDSA_P256_SHA256, now))
        .await
        .unwrap();
    verify_chain(&leaf.der, &[der(&signed)], &[der(&root.root_pem)], now)
        .expect("a leaf of the staged key chains to the primary's root");

    let keys = s.keys();
    assert!(keys
        .cross_sign_ca(&root.root_pem, now + Duration::hours(1), now)
        .await
        .is_err());
    assert!(keys.renew_intermediate(&req).await.is_err());

    // The primary's own intermediate certifies another key.
    let wrong = staged.into_material(&root.root_pem, &root.signing_pem);
    assert!(
        provider.open(&wrong).await.is_err(),
        "a certificate for another key opened"
    );
}

/// Stored material opens again without creating keys, and signs with the
/// same intermediate; material whose keys were swapped is refused.
pub async fn restores_from_state(provider: &dyn CaProvider, now: OffsetDateTime) {
    let m = provider
        .generate_ca(&request_at(KeySpec::EcP256, now))
        .await
        .unwrap();
    signs_verifiable_leaves(provider, &m, now).await;
    let other = provider
        .generate_ca(&request_at(KeySpec::EcP256, now))
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

/// The whole suite, with requests made at `now`.
pub async fn run_all(provider: &dyn CaProvider, specs: &[KeySpec], now: OffsetDateTime) {
    bootstraps_every_key_spec(provider, specs, now).await;
    staging_is_inert(provider, now).await;
    renews_the_intermediate(provider, now).await;
    cross_signs_other_roots(provider, specs, now).await;
    signs_intermediates_for_secondaries(provider, now).await;
    stages_intermediates_for_a_primary(provider, now).await;
    restores_from_state(provider, now).await;
    cleans_up(provider).await;
}
