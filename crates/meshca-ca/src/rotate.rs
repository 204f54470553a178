//! Root rotation: the new provider stages a root and intermediate, the old
//! root cross-signs the new one (unless forced not to), a probe leaf proves
//! the new chains, then one store commit and one publish. Nothing is
//! written before the commit, so a crash anywhere leaves the old CA or the
//! new one, never a mix.

use crate::published::Published;
use crate::writer::failpoint;
use crate::{provider_call, CaEngine, CaError};
use meshca_core::csr::ValidatedCsr;
use meshca_core::leaf::leaf_validity;
use meshca_core::rotation::{self, cross_sign_not_after, first_cert_der};
use meshca_core::state::CaRoot;
use meshca_core::{CaConfig, SpiffeId};
use meshca_provider::verify::verify_chain;
use meshca_provider::{CaRequest, LeafRequest};
use std::sync::Arc;
use time::OffsetDateTime;

/// The SPIFFE service name of the probe leaf each new CA signs before it
/// is published.
const PROBE_SERVICE: &str = "meshca-rotation-probe";

impl CaEngine {
    /// Rotates from `current` to a root made for `next`. The caller holds
    /// the writer lock and has refreshed `current` from the store.
    pub(crate) async fn rotate(
        &self,
        current: &Arc<Published>,
        next: CaConfig,
        force: bool,
    ) -> Result<(), CaError> {
        let can_cross_sign = current.provider.supports_cross_signing();
        if !can_cross_sign && !force {
            return Err(CaError::CrossSigningUnsupported);
        }
        if force {
            tracing::warn!(
                "ForceWithoutCrossSigning set, CA reconfiguration skipping cross-signing: \
                 proxies that trust only the old root will reject new leaves until they \
                 fetch the new roots"
            );
        }
        let now = self.clock.now();
        let provider = (self.factory)(&next)?;
        let req = CaRequest {
            cluster_id: current.cluster_id,
            trust_domain: current.trust_domain.clone(),
            config: next.clone(),
            now,
        };
        let material = provider_call(provider.generate_ca(&req)).await?;
        failpoint("rotation-generated");
        let keys = provider_call(provider.open(&material)).await?;
        let old_root = current
            .state()
            .active_root()
            .cloned()
            .ok_or_else(|| CaError::internal("the CA has no active root"))?;
        let cross_signed = if force {
            None
        } else {
            self.cross_sign(current, &old_root, &material.root_pem, &next, now)
                .await?
        };
        failpoint("rotation-cross-signed");
        let expected = current.index;
        let state = rotation::rotate(
            current.state(),
            next.clone(),
            &material,
            cross_signed,
            now,
            expected + 1,
        )
        .map_err(|e| CaError::Rejected(e.0))?;
        let published = Published::build(state, provider, keys, &self.datacenter)?;
        self.probe(&published, &old_root, now).await?;
        failpoint("rotation-before-commit");
        self.store.commit(published.state(), expected).await?;
        failpoint("rotation-committed");
        let (from, to) = (describe_root(&current.config), describe_root(&next));
        tracing::info!(%from, %to, active_root = %published.active_root_id,
            cross_signed = published.state().active_root().is_some_and(|r| r.intermediate_certs.len() > 1),
            index = published.index, "root rotated");
        let old_provider = current.provider.clone();
        self.install(published);
        if let Err(e) = old_provider.cleanup(&next).await {
            tracing::warn!(error = %e, "the old CA provider did not clean up");
        }
        Ok(())
    }

    /// The old root's signature over the new root, or `None` when the old
    /// root has expired (recovery from an expired CA: a cross-signature by
    /// it would be born dead).
    async fn cross_sign(
        &self,
        current: &Published,
        old_root: &CaRoot,
        new_root_pem: &str,
        next: &CaConfig,
        now: OffsetDateTime,
    ) -> Result<Option<String>, CaError> {
        if old_root.not_after <= now + time::Duration::minutes(1) {
            tracing::warn!(root = %old_root.id, "the old root has expired; rotating without cross-signing");
            return Ok(None);
        }
        let not_after = cross_sign_not_after(
            now,
            current.config.leaf_cert_ttl(),
            next.leaf_cert_ttl(),
            old_root.not_after,
        );
        let keys = current.signer.keys();
        let x = provider_call(keys.cross_sign_ca(new_root_pem, not_after, now)).await?;
        Ok(Some(x))
    }

    /// Validate before publishing: a probe leaf from the new signer passes
    /// the signer's own check (profile, chain to the new root) and, when the
    /// new root is cross-signed, verifies through the published chain
    /// against the old root alone.
    pub(crate) async fn probe(
        &self,
        new: &Published,
        old_root: &CaRoot,
        now: OffsetDateTime,
    ) -> Result<(), CaError> {
        let leaf = probe_leaf(new, now, &self.datacenter).await?;
        let active = new
            .state()
            .active_root()
            .ok_or_else(|| CaError::internal("the new CA has no active root"))?;
        if active.intermediate_certs.len() < 2 || active.id == old_root.id {
            return Ok(());
        }
        verify_through_chain(new, &leaf, &[first_cert_der(&old_root.root_cert)?], now)
    }
}

/// Signs a probe leaf with a new CA's signer, which checks it (profile,
/// chain to the new root); its DER.
pub(crate) async fn probe_leaf(
    new: &Published,
    now: OffsetDateTime,
    datacenter: &str,
) -> Result<Vec<u8>, CaError> {
    let key = crate::keygen::LeafKey::generate_p256().await?;
    let id = SpiffeId::service(&new.trust_domain, "default", datacenter, PROBE_SERVICE)
        .map_err(CaError::internal)?;
    let (not_before, not_after) =
        leaf_validity(now, new.config.leaf_cert_ttl(), new.signer.not_after());
    let leaf = new
        .signer
        .sign_leaf(LeafRequest {
            csr: key.carry_in_csr(
                ValidatedCsr::for_public_key(id, &key.spki_der)?,
                new.signer.keys().local().is_none(),
            )?,
            not_before,
            not_after,
        })
        .await?;
    Ok(leaf.der)
}

/// Checks that `leaf` verifies through the new CA's published chain
/// against one of `old_roots` alone: what a proxy that has not yet fetched
/// the new root does.
pub(crate) fn verify_through_chain(
    new: &Published,
    leaf: &[u8],
    old_roots: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<(), CaError> {
    let active = new
        .state()
        .active_root()
        .ok_or_else(|| CaError::internal("the new CA has no active root"))?;
    let chain = active
        .intermediate_certs
        .iter()
        .map(|p| first_cert_der(p))
        .collect::<Result<Vec<_>, _>>()?;
    verify_chain(leaf, &chain, old_roots, now).map_err(|e| {
        CaError::Internal(format!(
            "cross-signed chain does not verify against the old root: {e}"
        ))
    })
}

fn describe_root(c: &CaConfig) -> String {
    if c.private_key().is_some() {
        return format!("{} with a supplied root", c.provider().as_str());
    }
    format!("{} {}", c.provider().as_str(), c.key_spec())
}
