//! Pure decisions of the CA's life cycle (SPEC §5): how long a cross-signed
//! certificate lives, when rotated-out roots are pruned, when expired
//! intermediates leave the chains, when the signing intermediate is renewed.
//! Everything here is a function of the state and `now`.

use crate::duration::GoDuration;
use crate::state::{CaRoot, CaState};
use crate::x509::{cert_facts, decode_pem_blocks};
use time::OffsetDateTime;

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

/// The validity window of a PEM certificate, if it parses.
pub fn validity(pem: &str) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let der = decode_pem_blocks(pem, "CERTIFICATE")
        .ok()?
        .into_iter()
        .next()?;
    let f = cert_facts(&der).ok()?;
    Some((f.not_before, f.not_after))
}

/// Whether a signing certificate valid over `[not_before, not_after]` is
/// due for renewal: at half its lifetime (SPEC §3), or already expired.
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

/// Removes what has outlived its purpose, returning whether anything changed:
/// inactive roots rotated out at least 2×LeafCertTTL ago (every leaf they
/// vouched for has expired) or past their NotAfter, and expired certificates
/// in the active root's chain other than the signing certificate itself.
pub fn prune(state: &mut CaState, now: OffsetDateTime) -> bool {
    prune_roots(&mut state.roots, state.config.config.leaf_cert_ttl, now)
}

/// [`prune`] on a list of roots, for deciding without the full state.
pub fn prune_roots(roots: &mut Vec<CaRoot>, leaf_ttl: GoDuration, now: OffsetDateTime) -> bool {
    let grace = leaf_ttl.as_time() * 2;
    let before = (roots.len(), chain_len(roots));
    roots.retain(|r| {
        r.active || (r.not_after > now && r.rotated_out_at.is_none_or(|t| t + grace > now))
    });
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

#[cfg(test)]
mod tests {
    use super::*;
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
            private_key_type: "ec".into(),
            private_key_bits: 256,
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
        }
    }

    #[test]
    fn rotated_out_roots_are_pruned_after_two_leaf_lifetimes() {
        let mut s = state(vec![root("old", false, Some(T0)), root("new", true, None)]);
        assert!(!prune(&mut s, T0 + Duration::hours(143)));
        assert_eq!(s.roots.len(), 2);
        assert!(prune(&mut s, T0 + Duration::hours(144)));
        assert_eq!(
            s.roots.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["new"]
        );
    }

    #[test]
    fn expired_roots_are_pruned_but_the_active_one_never() {
        let mut old = root("old", false, None);
        old.not_after = T0;
        let mut active = root("active", true, None);
        active.not_after = T0;
        let mut s = state(vec![old, active]);
        assert!(prune(&mut s, T0 + Duration::hours(1)));
        assert_eq!(s.roots.len(), 1);
        assert!(s.roots[0].active);
    }

    #[test]
    fn unreadable_or_expired_chain_entries_go_but_the_signing_cert_stays() {
        let mut r = root("active", true, None);
        r.intermediate_certs = vec!["expired cross-sign".into(), "signing".into()];
        let mut s = state(vec![r]);
        assert!(prune(&mut s, T0));
        assert_eq!(s.roots[0].intermediate_certs, ["signing"]);
        assert!(!prune(&mut s, T0), "nothing left to prune");
    }
}
