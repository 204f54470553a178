//! The CA's life cycle as pure state transitions: bootstrap, configuration
//! update, root rotation, intermediate renewal and pruning each take the
//! current [`CaState`], the inputs a provider produced and `now`, and return
//! the next state — which records change, and to what. The engine only
//! sequences I/O around them (provider calls, one store commit, one publish).
//!
//! Every record a transition touches is stamped with the index the commit
//! will get (`index`), so that a committed state is self-consistent.

use crate::config::CaConfig;
use crate::duration::GoDuration;
use crate::serial::Serial;
use crate::state::{CaMaterial, CaRoot, CaState, StoredConfig};
use crate::x509::{cert_facts, cert_id, colon_hex, decode_pem_blocks, CertFacts};
use time::OffsetDateTime;
use uuid::Uuid;

/// The name every built-in root carries (Consul says "Consul CA Primary Cert").
pub const ROOT_NAME: &str = "meshca CA Primary Cert";

/// A transition's inputs do not fit together (a bug or a corrupt store,
/// never a user error: user input is validated before it gets here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

fn plan_error(msg: impl Into<String>) -> PlanError {
    PlanError(msg.into())
}

/// NotAfter of the certificate that cross-signs a new root: long enough for
/// every proxy that trusts only the old root to learn the new one — two leaf
/// lifetimes, since a proxy renews its leaf (and fetches roots) within one —
/// and never past the old root's NotAfter.
pub fn cross_sign_not_after(
    now: OffsetDateTime,
    old_leaf_ttl: GoDuration,
    new_leaf_ttl: GoDuration,
    old_root_not_after: OffsetDateTime,
) -> OffsetDateTime {
    let ttl = std::cmp::max(old_leaf_ttl, new_leaf_ttl).as_time();
    std::cmp::min(now + ttl * 2, old_root_not_after)
}

/// The DER of the first certificate in `pem`.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, PlanError> {
    decode_pem_blocks(pem, "CERTIFICATE")
        .map_err(|e| plan_error(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| plan_error("empty certificate"))
}

fn facts_of(pem: &str) -> Result<CertFacts, PlanError> {
    cert_facts(&first_cert_der(pem)?).map_err(plan_error)
}

/// The validity window of a PEM certificate, if it parses.
pub fn validity(pem: &str) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let f = facts_of(pem).ok()?;
    Some((f.not_before, f.not_after))
}

/// Whether a signing certificate valid over `[not_before, not_after]` is
/// due for renewal: at half its lifetime, or already expired.
pub fn needs_renewal(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> bool {
    now >= not_before + (not_after - not_before) / 2
}

/// Whether a root that became valid at `root_not_before` is due for a
/// scheduled rotation (`RootRotationPeriod`, zero = never).
pub fn scheduled_rotation_due(
    root_not_before: OffsetDateTime,
    period: GoDuration,
    now: OffsetDateTime,
) -> bool {
    !period.as_std().is_zero() && now >= root_not_before + period.as_time()
}

/// The first CA state of a new cluster, committed at `index`.
pub fn bootstrap(
    cluster_id: Uuid,
    config: CaConfig,
    material: &CaMaterial,
    index: u64,
) -> Result<CaState, PlanError> {
    let mut root = root_record(material, &cluster_id, index)?;
    root.max_leaf_cert_ttl = config.leaf_cert_ttl();
    Ok(CaState {
        cluster_id,
        config: StoredConfig {
            config,
            create_index: index,
            modify_index: index,
        },
        roots: vec![root],
        provider_state: material.provider_state.clone(),
        private_keys: material.private_keys.clone(),
        modify_index: index,
        primary_datacenter: None,
    })
}

/// A configuration change that keeps the root key (TTLs, rate limits,
/// rotation period). The active root remembers the longest `LeafCertTTL`
/// it signed under.
pub fn update_config(state: &CaState, next: CaConfig, index: u64) -> CaState {
    let mut out = state.clone();
    for root in out.roots.iter_mut().filter(|r| r.active) {
        if next.leaf_cert_ttl() > root.max_leaf_cert_ttl {
            root.max_leaf_cert_ttl = next.leaf_cert_ttl();
            root.modify_index = index;
        }
    }
    out.config.config = next;
    out.config.modify_index = index;
    out.modify_index = index;
    out
}

/// Root rotation: the old active root is rotated out at `now` (it stays
/// trusted until pruned), the new root becomes active with
/// `IntermediateCerts = [cross-signed (if any), signing]`, and the new
/// configuration and keys replace the old ones (the old keys are dropped:
/// a rotated-out root never signs again).
pub fn rotate(
    state: &CaState,
    next: CaConfig,
    material: &CaMaterial,
    cross_signed: Option<String>,
    now: OffsetDateTime,
    index: u64,
) -> Result<CaState, PlanError> {
    let mut root = root_record(material, &state.cluster_id, index)?;
    root.max_leaf_cert_ttl = next.leaf_cert_ttl();
    if state.roots.iter().any(|r| r.id == root.id) {
        return Err(plan_error(
            "the new root is already in the trust bundle; supply a different root",
        ));
    }
    if let Some(x) = cross_signed {
        root.intermediate_certs.insert(0, x);
    }
    let mut out = state.clone();
    for r in out.roots.iter_mut().filter(|r| r.active) {
        r.active = false;
        r.rotated_out_at = Some(now);
        r.modify_index = index;
    }
    out.roots.push(root);
    let mut out = update_config(&out, next, index);
    out.private_keys = material.private_keys.clone();
    out.provider_state = material.provider_state.clone();
    Ok(out)
}

/// Intermediate renewal: the active root's signing certificate (the last
/// of its `IntermediateCerts`) and the keys are replaced by `renewed`,
/// which must be under the same root.
pub fn renew(state: &CaState, renewed: &CaMaterial, index: u64) -> Result<CaState, PlanError> {
    let mut out = state.clone();
    let root = out
        .roots
        .iter_mut()
        .find(|r| r.active)
        .ok_or_else(|| plan_error("the CA has no active root"))?;
    if first_cert_der(&renewed.root_pem)? != first_cert_der(&root.root_cert)? {
        return Err(plan_error(
            "a renewed intermediate must keep the active root",
        ));
    }
    let signing = facts_of(&renewed.signing_pem)?;
    match root.intermediate_certs.last_mut() {
        Some(last) => *last = renewed.signing_pem.clone(),
        None => root.intermediate_certs.push(renewed.signing_pem.clone()),
    }
    root.signing_key_id = colon_hex(&signing.subject_key_id.unwrap_or_default());
    root.modify_index = index;
    out.private_keys = renewed.private_keys.clone();
    out.provider_state = renewed.provider_state.clone();
    out.modify_index = index;
    Ok(out)
}

/// Pruning: the state without what has outlived its purpose, or `None` when
/// nothing is due. See [`prune_roots`].
pub fn prune(state: &CaState, now: OffsetDateTime, index: u64) -> Option<CaState> {
    let mut out = state.clone();
    if !prune_roots(&mut out.roots, state.config.config.leaf_cert_ttl(), now) {
        return None;
    }
    if let Some(r) = out.roots.iter_mut().find(|r| r.active) {
        r.modify_index = index;
    }
    out.modify_index = index;
    Some(out)
}

/// Removes inactive roots rotated out at least 2×LeafCertTTL ago — the
/// longest TTL in force while the root was active, so every leaf it
/// vouched for has expired — or past their NotAfter, and expired
/// certificates in the active root's chain other than the signing
/// certificate itself. `leaf_ttl` (the current one) counts for roots whose
/// longest TTL is unknown. Returns whether anything changed.
pub fn prune_roots(roots: &mut Vec<CaRoot>, leaf_ttl: GoDuration, now: OffsetDateTime) -> bool {
    let before = (roots.len(), chain_len(roots));
    roots.retain(|r| prunable_at(r, leaf_ttl).is_none_or(|at| at > now));
    for root in roots.iter_mut().filter(|r| r.active) {
        let n = root.intermediate_certs.len();
        let mut kept = Vec::with_capacity(n);
        for (i, pem) in root.intermediate_certs.drain(..).enumerate() {
            let is_signing = i + 1 == n;
            let expired = validity(&pem).is_none_or(|(_, na)| na <= now);
            if is_signing || !expired {
                kept.push(pem);
            }
        }
        root.intermediate_certs = kept;
    }
    (roots.len(), chain_len(roots)) != before
}

/// When [`prune_roots`] drops `root`: at its NotAfter, or once it has been
/// rotated out for 2×LeafCertTTL (the longest TTL in force while it was
/// active; `leaf_ttl` when unknown), whichever comes first. `None` for the
/// active root, which is never pruned.
pub fn prunable_at(root: &CaRoot, leaf_ttl: GoDuration) -> Option<OffsetDateTime> {
    if root.active {
        return None;
    }
    let longest = if root.max_leaf_cert_ttl.as_std().is_zero() {
        leaf_ttl
    } else {
        root.max_leaf_cert_ttl
    };
    let grace = longest.as_time() * 2;
    Some(match root.rotated_out_at {
        Some(out) => std::cmp::min(root.not_after, out + grace),
        None => root.not_after,
    })
}

fn chain_len(roots: &[CaRoot]) -> usize {
    roots.iter().map(|r| r.intermediate_certs.len()).sum()
}

/// Whether the active root's signing certificate is due for renewal (and
/// renewal could extend it: it does not already reach the root's NotAfter).
pub fn signing_renewal_due(roots: &[CaRoot], now: OffsetDateTime) -> bool {
    roots.iter().find(|r| r.active).is_some_and(|root| {
        root.intermediate_certs
            .last()
            .and_then(|p| validity(p))
            .is_some_and(|(nb, na)| needs_renewal(nb, na, now) && na < root.not_after)
    })
}

/// The `CARoot` record of freshly generated material, active, at `index`.
pub fn root_record(m: &CaMaterial, cluster_id: &Uuid, index: u64) -> Result<CaRoot, PlanError> {
    let root_der = first_cert_der(&m.root_pem)?;
    let root = cert_facts(&root_der).map_err(plan_error)?;
    let signing = facts_of(&m.signing_pem)?;
    let serial = Serial::from_bytes(&root.serial).map_err(|e| plan_error(e.to_string()))?;
    Ok(CaRoot {
        id: cert_id(&root_der),
        name: ROOT_NAME.to_string(),
        serial_number: serial.low_u64(),
        signing_key_id: colon_hex(&signing.subject_key_id.unwrap_or_default()),
        external_trust_domain: cluster_id.to_string(),
        not_before: root.not_before,
        not_after: root.not_after,
        root_cert: m.root_pem.clone(),
        intermediate_certs: vec![m.signing_pem.clone()],
        active: true,
        rotated_out_at: None,
        key_spec: m.key_spec,
        max_leaf_cert_ttl: GoDuration::default(),
        create_index: index,
        modify_index: index,
    })
}

/// The provider material of the active root, to bring its keys back after a
/// restart (or to hand them to the provider that cross-signs or renews).
pub fn active_material(state: &CaState) -> Result<CaMaterial, PlanError> {
    let root = state
        .active_root()
        .ok_or_else(|| plan_error("the stored CA has no active root"))?;
    let signing_pem = root
        .intermediate_certs
        .last()
        .cloned()
        .ok_or_else(|| plan_error("the active root has no signing certificate"))?;
    Ok(CaMaterial {
        root_pem: root.root_cert.clone(),
        signing_pem,
        key_spec: root.key_spec,
        private_keys: state.private_keys.clone(),
        provider_state: state.provider_state.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspec::KeySpec;
    use crate::state::{CaRoot, StoredConfig};
    use crate::CaConfig;
    use time::macros::datetime;
    use time::Duration;

    const T0: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

    #[test]
    fn cross_sign_lives_two_leaf_lifetimes_capped_by_the_old_root() {
        let far = T0 + Duration::days(3650);
        let h72 = GoDuration::from_hours(72);
        let h24 = GoDuration::from_hours(24);
        assert_eq!(
            cross_sign_not_after(T0, h24, h72, far),
            T0 + Duration::hours(144)
        );
        assert_eq!(
            cross_sign_not_after(T0, h72, h24, far),
            T0 + Duration::hours(144)
        );
        let soon = T0 + Duration::hours(10);
        assert_eq!(cross_sign_not_after(T0, h72, h72, soon), soon);
    }

    #[test]
    fn scheduled_rotation_is_due_after_the_period_and_never_when_off() {
        let period = GoDuration::from_hours(100);
        assert!(!scheduled_rotation_due(
            T0,
            period,
            T0 + Duration::hours(99)
        ));
        assert!(scheduled_rotation_due(
            T0,
            period,
            T0 + Duration::hours(100)
        ));
        assert!(!scheduled_rotation_due(
            T0,
            GoDuration::from_secs(0),
            T0 + Duration::days(9999)
        ));
    }

    #[test]
    fn renewal_is_due_at_half_life() {
        let nb = T0;
        let na = T0 + Duration::hours(100);
        assert!(!needs_renewal(nb, na, T0 + Duration::hours(49)));
        assert!(needs_renewal(nb, na, T0 + Duration::hours(50)));
        assert!(needs_renewal(nb, na, na + Duration::hours(1)));
    }

    fn root(id: &str, active: bool, rotated_out_at: Option<OffsetDateTime>) -> CaRoot {
        CaRoot {
            id: id.into(),
            name: String::new(),
            serial_number: 1,
            signing_key_id: String::new(),
            external_trust_domain: String::new(),
            not_before: T0,
            not_after: T0 + Duration::days(3650),
            root_cert: String::new(),
            intermediate_certs: vec!["not a certificate".into()],
            active,
            rotated_out_at,
            key_spec: KeySpec::EcP256,
            max_leaf_cert_ttl: GoDuration::from_hours(72),
            create_index: 1,
            modify_index: 1,
        }
    }

    fn state(roots: Vec<CaRoot>) -> CaState {
        CaState {
            cluster_id: uuid::Uuid::nil(),
            config: StoredConfig {
                config: CaConfig::default(),
                create_index: 1,
                modify_index: 1,
            },
            roots,
            provider_state: Default::default(),
            private_keys: Default::default(),
            modify_index: 1,
            primary_datacenter: None,
        }
    }

    #[test]
    fn rotated_out_roots_are_pruned_after_two_leaf_lifetimes() {
        let s = state(vec![root("old", false, Some(T0)), root("new", true, None)]);
        assert_eq!(prune(&s, T0 + Duration::hours(143), 2), None);
        let pruned = prune(&s, T0 + Duration::hours(144), 2).expect("due");
        assert_eq!(
            pruned
                .roots
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["new"]
        );
        assert_eq!((pruned.modify_index, pruned.roots[0].modify_index), (2, 2));
        assert_eq!(s.roots.len(), 2, "the input state is left as it was");
    }

    #[test]
    fn expired_roots_are_pruned_but_the_active_one_never() {
        let mut old = root("old", false, None);
        old.not_after = T0;
        let mut active = root("active", true, None);
        active.not_after = T0;
        let pruned = prune(&state(vec![old, active]), T0 + Duration::hours(1), 2).expect("due");
        assert_eq!(pruned.roots.len(), 1);
        assert!(pruned.roots[0].active);
    }

    #[test]
    fn unreadable_or_expired_chain_entries_go_but_the_signing_cert_stays() {
        let mut r = root("active", true, None);
        r.intermediate_certs = vec!["expired cross-sign".into(), "signing".into()];
        let pruned = prune(&state(vec![r]), T0, 2).expect("due");
        assert_eq!(pruned.roots[0].intermediate_certs, ["signing"]);
        assert_eq!(prune(&pruned, T0, 3), None, "nothing left to prune");
    }

    #[test]
    fn a_config_update_touches_only_the_config_and_the_index() {
        let s = state(vec![root("active", true, None)]);
        let next = update_config(&s, CaConfig::default(), 5);
        assert_eq!(next.config.modify_index, 5);
        assert_eq!(next.config.create_index, 1);
        assert_eq!(next.modify_index, 5);
        assert_eq!(next.roots, s.roots);
    }

    /// A CA made of a self-signed root and an intermediate it signed, as
    /// a provider would hand it over.
    fn material(key_tag: u8) -> CaMaterial {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_params = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.not_before = T0;
            p.not_after = T0 + Duration::days(365);
            p
        };
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("root");
        let root = root_params.self_signed(&root_key).unwrap();
        let int_key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&root_params, &root_key);
        let int = ca_params("int").signed_by(&int_key, &issuer).unwrap();
        CaMaterial {
            root_pem: root.pem(),
            signing_pem: int.pem(),
            key_spec: KeySpec::EcP256,
            private_keys: [("k".to_string(), crate::SecretBytes::new(vec![key_tag]))].into(),
            provider_state: Default::default(),
        }
    }

    #[test]
    fn bootstrap_makes_one_active_root_at_the_index() {
        let m = material(1);
        let s = bootstrap(uuid::Uuid::nil(), CaConfig::default(), &m, 1).unwrap();
        assert_eq!(s.roots.len(), 1);
        let r = &s.roots[0];
        assert!(r.active);
        assert_eq!(r.intermediate_certs, std::slice::from_ref(&m.signing_pem));
        assert_eq!((r.create_index, r.modify_index, s.modify_index), (1, 1, 1));
        assert_eq!(s.private_keys, m.private_keys);
        assert_eq!(r.not_after, T0 + Duration::days(365));
    }

    #[test]
    fn rotation_retires_the_old_root_and_activates_the_new_one_with_its_chain() {
        let (old, new) = (material(1), material(2));
        let s = bootstrap(uuid::Uuid::nil(), CaConfig::default(), &old, 1).unwrap();
        let now = T0 + Duration::hours(5);
        let next = rotate(
            &s,
            CaConfig::default(),
            &new,
            Some("xsigned".into()),
            now,
            2,
        )
        .unwrap();
        assert_eq!(next.roots.len(), 2);
        let (retired, active) = (&next.roots[0], &next.roots[1]);
        assert!(!retired.active && active.active);
        assert_eq!(retired.rotated_out_at, Some(now));
        assert_eq!(retired.modify_index, 2);
        assert_eq!(
            active.intermediate_certs,
            ["xsigned".to_string(), new.signing_pem.clone()]
        );
        assert_eq!((active.create_index, next.modify_index), (2, 2));
        assert_eq!(next.config.modify_index, 2);
        assert_eq!(
            next.private_keys, new.private_keys,
            "the old keys are dropped"
        );
        assert_eq!(s.roots.len(), 1, "the input state is untouched");
        let again = rotate(&next, CaConfig::default(), &new, None, now, 3);
        assert!(again.is_err(), "a root already in the bundle is refused");
    }

    #[test]
    fn renewal_replaces_only_the_signing_certificate_and_keys() {
        let m = material(1);
        let s = bootstrap(uuid::Uuid::nil(), CaConfig::default(), &m, 1).unwrap();
        let mut s = rotate(
            &s,
            CaConfig::default(),
            &material(2),
            Some("x".into()),
            T0,
            2,
        )
        .unwrap();
        s.roots.retain(|r| r.active);
        let active = s.roots[0].clone();
        let renewed = CaMaterial {
            root_pem: active.root_cert.clone(),
            signing_pem: material(3).signing_pem,
            private_keys: [("k".to_string(), crate::SecretBytes::new(vec![3]))].into(),
            ..material(3)
        };
        let next = renew(&s, &renewed, 3).unwrap();
        let root = &next.roots[0];
        assert_eq!(
            root.intermediate_certs,
            ["x".to_string(), renewed.signing_pem.clone()]
        );
        assert_ne!(root.signing_key_id, active.signing_key_id);
        assert_eq!((root.modify_index, next.modify_index), (3, 3));
        assert_eq!(next.private_keys, renewed.private_keys);
        assert_eq!(next.config, s.config, "the configuration is untouched");
        let foreign = renew(&s, &material(4), 4);
        assert!(foreign.is_err(), "a renewal must keep the active root");
    }

    fn config_with_leaf_ttl(ttl: &str) -> CaConfig {
        let wire = serde_json::json!({"LeafCertTTL": ttl, "IntermediateCertTTL": "8760h"});
        CaConfig::from_wire("consul", wire.as_object().unwrap(), None).unwrap()
    }

    /// Regression: pruning counted only the current LeafCertTTL, so
    /// lowering it after a rotation dropped the old root while leaves it
    /// vouched for (issued under the longer TTL) were still valid.
    #[test]
    fn lowering_the_leaf_ttl_does_not_prune_a_root_its_leaves_still_need() {
        let s = bootstrap(
            uuid::Uuid::nil(),
            config_with_leaf_ttl("72h"),
            &material(1),
            1,
        )
        .unwrap();
        let s = rotate(&s, config_with_leaf_ttl("72h"), &material(2), None, T0, 2).unwrap();
        let s = update_config(&s, config_with_leaf_ttl("1h"), 3);
        let retired = s.roots.iter().find(|r| !r.active).unwrap();
        assert_eq!(retired.max_leaf_cert_ttl, GoDuration::from_hours(72));
        assert_eq!(
            prune(&s, T0 + Duration::hours(3), 4),
            None,
            "leaves of 72h still chain to it"
        );
        assert_eq!(prune(&s, T0 + Duration::hours(143), 4), None);
        let pruned = prune(&s, T0 + Duration::hours(144), 4).expect("due after 2 x 72h");
        assert!(pruned.roots.iter().all(|r| r.active));
    }

    #[test]
    fn the_active_root_remembers_the_longest_leaf_ttl_it_signed_under() {
        let s = bootstrap(
            uuid::Uuid::nil(),
            config_with_leaf_ttl("24h"),
            &material(1),
            1,
        )
        .unwrap();
        let s = update_config(&s, config_with_leaf_ttl("96h"), 2);
        let s = update_config(&s, config_with_leaf_ttl("2h"), 3);
        assert_eq!(s.roots[0].max_leaf_cert_ttl, GoDuration::from_hours(96));
    }
}
