//! Upkeep, driven by a timer and by CA changes: data key rotation, scheduled root rotation,
//! pruning of rotated-out roots and expired chain entries, and renewal of
//! the signing intermediate at half its life. The decisions are pure
//! functions of the published state and `now`; a renewal publishes a new
//! signer value, never changes the old one.

use crate::published::Published;
use crate::{provider_call, CaEngine, CaError};
use meshca_core::rotation::{self, prune_roots, scheduled_rotation_due, signing_renewal_due};
use meshca_core::state::CaState;
use meshca_provider::CaRequest;
use std::sync::Arc;
use time::OffsetDateTime;

impl CaEngine {
    /// One round of upkeep. Skipped (not queued) while another writer is
    /// active. Returns whether it changed anything.
    pub async fn maintain(&self) -> Result<bool, CaError> {
        // With several servers on one store, only the leader changes the CA
        // on its own; the others publish what it commits.
        if !self.leads() {
            return Ok(false);
        }
        // Data keys age with the clock, not with CA changes: a CA that does
        // not change for weeks still gets its secrets under a fresh key.
        if let Err(e) = self.store.rotate_data_key_if_due().await {
            tracing::warn!(error = %e, "data key rotation failed; retrying at the next upkeep");
        }
        if self.is_secondary() {
            // The primary rotates and prunes the roots; a secondary only
            // renews its own intermediate (through the primary).
            let p = self.published();
            if !signing_renewal_due(&p.roots, self.clock.now()) {
                return Ok(false);
            }
            return self.renew_from_primary().await;
        }
        // Decide on the published snapshot first, so that the writer lock
        // (and a 409 for API writers) is taken only when there is work.
        if !maintenance_due(&self.published(), self.clock.now()) {
            return Ok(false);
        }
        let Ok(_writer) = self.writer.begin("RENEWING") else {
            return Ok(false);
        };
        let current = self.refresh().await?;
        let now = self.clock.now();
        if rotation_due(&current, now) {
            tracing::info!(root = %current.active_root_id,
                period = %current.config.root_rotation_period(), "scheduled root rotation");
            self.rotate(&current, current.config.clone(), false).await?;
            return Ok(true);
        }
        let Some(published) = self.prune_and_renew(&current, now).await? else {
            return Ok(false);
        };
        self.store.commit(published.state(), current.index).await?;
        tracing::info!(index = published.index, signing_key_id = %published.signer.signing_key_id(),
            "CA maintenance committed");
        self.install(published);
        Ok(true)
    }

    /// The next published CA after pruning and (when due) renewal, or
    /// `None` when nothing is due. Nothing is committed here.
    async fn prune_and_renew(
        &self,
        current: &Arc<Published>,
        now: OffsetDateTime,
    ) -> Result<Option<Published>, CaError> {
        let index = current.index + 1;
        let pruned = rotation::prune(current.state(), now, index);
        let base: &CaState = pruned.as_ref().unwrap_or(current.state());
        if !signing_renewal_due(&base.roots, now) {
            return pruned.map(|s| self.rebuild(current, s)).transpose();
        }
        let req = CaRequest {
            cluster_id: current.cluster_id,
            trust_domain: current.trust_domain.clone(),
            config: current.config.clone(),
            now,
        };
        let keys = current.signer.keys();
        let material = provider_call(keys.renew_intermediate(&req)).await?;
        let renewed_keys = provider_call(current.provider.open(&material)).await?;
        let state = rotation::renew(base, &material, index)?;
        let published = Published::build(
            state,
            current.provider.clone(),
            renewed_keys,
            &self.datacenter,
        )?;
        let active = published
            .state()
            .active_root()
            .cloned()
            .ok_or_else(|| CaError::internal("the CA has no active root"))?;
        self.probe(&published, &active, now).await?;
        Ok(Some(published))
    }

    /// Runs [`CaEngine::maintain`] now, then every `period` and whenever the
    /// CA changes or waiters are woken (tests advance a manual clock and wake).
    pub fn spawn_maintenance(
        self: &Arc<Self>,
        period: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let ca = self.clone();
        tokio::spawn(async move {
            let mut changes = ca.subscribe();
            let mut leadership = ca.leadership();
            loop {
                if let Err(e) = ca.maintain().await {
                    tracing::error!(error = %e, "CA maintenance failed; retrying later");
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    r = changes.changed() => if r.is_err() { return },
                    // A new leader catches up on overdue upkeep at once.
                    alive = changed(&mut leadership) => if !alive { return },
                }
            }
        })
    }
}

/// Waits for the next leadership change (`false`: no more will come);
/// forever for a server alone on its store.
async fn changed(
    leadership: &mut Option<tokio::sync::watch::Receiver<meshca_store::Leadership>>,
) -> bool {
    match leadership {
        Some(l) => l.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

fn maintenance_due(p: &Published, now: OffsetDateTime) -> bool {
    let mut roots = p.roots.clone();
    rotation_due(p, now)
        || signing_renewal_due(&p.roots, now)
        || prune_roots(&mut roots, p.config.leaf_cert_ttl(), now)
}

/// A scheduled rotation is due (`RootRotationPeriod`) and possible: it
/// always cross-signs, so a provider that cannot is never rotated on a timer.
fn rotation_due(p: &Published, now: OffsetDateTime) -> bool {
    let period = p.config.root_rotation_period();
    p.provider.supports_cross_signing()
        && p.roots
            .iter()
            .find(|r| r.active)
            .is_some_and(|r| scheduled_rotation_due(r.not_before, period, now))
}
