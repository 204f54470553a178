use super::*;
use crate::x509::cert_pem;
use crate::KeySpec;
use std::collections::BTreeMap;
use time::macros::datetime;

const T0: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

fn cert(is_ca: bool) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    if is_ca {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    cert_pem(p.self_signed(&key).unwrap().der())
}

fn root(active: bool, chain: Vec<String>) -> PrimaryRoot {
    let pem = cert(true);
    PrimaryRoot {
        id: cert_id(&first_cert_der(&pem).unwrap()),
        root_cert: pem,
        intermediate_certs: chain,
        active,
    }
}

fn bundle(index: u64, roots: Vec<PrimaryRoot>) -> PrimaryRoots {
    let cluster = Uuid::from_u128(7);
    PrimaryRoots {
        index,
        trust_domain: TrustDomain::for_cluster(&cluster),
        active_root_id: roots
            .iter()
            .find(|r| r.active)
            .map(|r| r.id.clone())
            .unwrap_or_default(),
        roots,
    }
}

fn material(signing_pem: String) -> CaMaterial {
    CaMaterial {
        root_pem: String::new(),
        signing_pem,
        key_spec: KeySpec::EcP256,
        private_keys: BTreeMap::new(),
        provider_state: BTreeMap::from([("k".into(), "v".into())]),
    }
}

fn follow<'a>(
    prev: Option<&'a CaState>,
    primary: &'a PrimaryRoots,
    own: Option<&'a CaMaterial>,
    index: u64,
) -> Result<CaState, PlanError> {
    Follow {
        prev,
        primary,
        primary_datacenter: "dc1",
        config: CaConfig::default(),
        own,
        now: T0,
        index,
    }
    .state()
}

#[test]
fn a_new_secondary_shows_the_primary_roots_with_its_intermediate_last() {
    let primary = bundle(5, vec![root(true, vec![cert(true)])]);
    let own = material(cert(true));
    let state = follow(None, &primary, Some(&own), 1).unwrap();
    assert_eq!(state.cluster_id, Uuid::from_u128(7));
    assert_eq!(state.primary_datacenter.as_deref(), Some("dc1"));
    let active = state.active_root().unwrap();
    assert_eq!(active.id, primary.roots[0].id);
    assert_eq!(
        active.intermediate_certs,
        vec![
            primary.roots[0].intermediate_certs[0].clone(),
            own.signing_pem.clone()
        ]
    );
    let skid = cert_facts(&first_cert_der(&own.signing_pem).unwrap())
        .unwrap()
        .subject_key_id;
    assert_eq!(active.signing_key_id, colon_hex(&skid.unwrap_or_default()));
    assert_eq!(own_intermediate(&state), Some(own.signing_pem.as_str()));
    assert_eq!(state.provider_state, own.provider_state);
    assert!(shows_bundle(&state, &primary));
    assert!(!needs_new_intermediate(&state, &primary));
}

#[test]
fn a_rotation_in_the_primary_needs_a_new_intermediate_and_rotates_out_the_old_root() {
    let old = root(true, vec![cert(true)]);
    let first = bundle(5, vec![old.clone()]);
    let state = follow(None, &first, Some(&material(cert(true))), 1).unwrap();

    let new = root(true, vec![cert(true), cert(true)]);
    let rotated = bundle(
        9,
        vec![
            PrimaryRoot {
                active: false,
                ..old.clone()
            },
            new.clone(),
        ],
    );
    assert!(needs_new_intermediate(&state, &rotated));
    assert!(!shows_bundle(&state, &rotated));

    let own = material(cert(true));
    let next = follow(Some(&state), &rotated, Some(&own), 2).unwrap();
    let (was, now) = (&next.roots[0], &next.roots[1]);
    assert_eq!((was.active, was.rotated_out_at), (false, Some(T0)));
    assert_eq!(was.create_index, 1);
    assert_eq!(
        was.intermediate_certs, old.intermediate_certs,
        "our old intermediate is gone"
    );
    assert!(now.active);
    assert_eq!(
        now.intermediate_certs.len(),
        3,
        "cross-signed, the primary's, ours"
    );
    assert_eq!(now.intermediate_certs[0], new.intermediate_certs[0]);
    assert_eq!(now.intermediate_certs[2], own.signing_pem);
    assert!(!needs_new_intermediate(&next, &rotated));
}

#[test]
fn following_an_unchanged_bundle_keeps_every_index() {
    let primary = bundle(5, vec![root(true, vec![cert(true)])]);
    let state = follow(None, &primary, Some(&material(cert(true))), 1).unwrap();
    let again = follow(Some(&state), &primary, None, 2).unwrap();
    assert_eq!(again.roots, state.roots);
    assert_eq!(again.config, state.config);
    assert_eq!(again.private_keys, state.private_keys);
}

#[test]
fn bundles_that_do_not_add_up_are_refused() {
    let mut wrong_id = bundle(5, vec![root(true, vec![])]);
    wrong_id.roots[0].id = "00:11".into();
    wrong_id.active_root_id = "00:11".into();
    let own = material(cert(true));
    let err = follow(None, &wrong_id, Some(&own), 1).unwrap_err();
    assert!(err.0.contains("does not match its certificate"), "{err}");

    let two = bundle(5, vec![root(true, vec![]), root(true, vec![])]);
    assert!(follow(None, &two, Some(&own), 1)
        .unwrap_err()
        .0
        .contains("two active"));

    let mut other_td = bundle(5, vec![root(true, vec![])]);
    other_td.trust_domain = "example.org".parse().unwrap();
    let err = follow(None, &other_td, Some(&own), 1).unwrap_err();
    assert!(err.0.contains("<cluster-id>.consul"), "{err}");

    let first = bundle(5, vec![root(true, vec![])]);
    let state = follow(None, &first, Some(&own), 1).unwrap();
    let mut moved = bundle(6, vec![root(true, vec![])]);
    moved.trust_domain = TrustDomain::for_cluster(&Uuid::from_u128(8));
    let err = follow(Some(&state), &moved, Some(&own), 2).unwrap_err();
    assert!(err.0.contains("trust domain changed"), "{err}");

    assert!(follow(None, &first, None, 1)
        .unwrap_err()
        .0
        .contains("needs an intermediate"));
}
