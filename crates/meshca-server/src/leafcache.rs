//! The agent leaf cache: one certificate per service, reissued when it
//! reaches its renewal point (a random 60–90% of its lifetime) or when the
//! certificate that signs leaves changes. Blocking queries on a leaf wait for
//! exactly that moment.

use crate::error::ApiError;
use crate::manager::{blocking, CaManager};
use crate::ratelimit::CsrLimiter;
use crate::wire::IssuedCert;
use meshca_core::leaf::{renewal_point, RENEW_FRACTION};
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

/// A cached leaf and when it must be replaced.
pub struct CachedLeaf {
    pub issued: IssuedCert,
    pub renew_at: OffsetDateTime,
    /// `SigningKeyID` of the certificate that signed it.
    pub signed_by: String,
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<CachedLeaf>>>>;

#[derive(Default)]
pub struct LeafCache {
    slots: Mutex<HashMap<String, Slot>>,
}

/// Longest a blocked leaf query sleeps before it re-reads the clock; bounds
/// the error when the wall clock jumps.
const MAX_NAP: Duration = Duration::from_secs(30);

/// Upper bound of the random delay before a blocked leaf query fetches a
/// certificate from a new signer.
pub const ROTATION_SPREAD: Duration = Duration::from_secs(3);

impl LeafCache {
    fn slot(&self, key: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.to_string()).or_default().clone()
    }

    /// The current leaf for `service`, issuing one if there is none or the
    /// cached one is due. One request per service issues; the others wait
    /// for it instead of signing again.
    pub async fn current(
        &self,
        ca: &Arc<CaManager>,
        limiter: &CsrLimiter,
        service: &str,
    ) -> Result<Arc<CachedLeaf>, ApiError> {
        let slot = self.slot(service);
        let mut entry = slot.lock().await;
        if let Some(leaf) = entry.as_ref() {
            if !is_due(ca, leaf) {
                return Ok(leaf.clone());
            }
        }
        let _permit = limiter.acquire()?;
        let (ca2, svc) = (ca.clone(), service.to_string());
        let issued = blocking(move || ca2.issue_service_leaf(&svc)).await?;
        let fraction = rand::thread_rng().gen_range(RENEW_FRACTION.0..=RENEW_FRACTION.1);
        let leaf = Arc::new(CachedLeaf {
            renew_at: renewal_point(issued.valid_after, issued.valid_before, fraction),
            signed_by: ca.published().signing_key_id.clone(),
            issued,
        });
        *entry = Some(leaf.clone());
        Ok(leaf)
    }

    /// Blocking query: waits until the leaf cached at `index` is due (or the
    /// signing certificate changes, or `wait` passes), then returns the
    /// current leaf.
    pub async fn wait_for_newer(
        &self,
        ca: &Arc<CaManager>,
        limiter: &CsrLimiter,
        service: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Arc<CachedLeaf>, ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = ca.subscribe();
        loop {
            let leaf = self.current(ca, limiter, service).await?;
            // A newer leaf, or an index this server never gave out (from
            // before a restart): answer at once.
            if leaf.issued.modify_index != index {
                return Ok(leaf);
            }
            let until_due = (leaf.renew_at - ca.clock().now())
                .try_into()
                .unwrap_or(Duration::ZERO)
                .min(MAX_NAP);
            let wake = std::cmp::min(deadline, tokio::time::Instant::now() + until_due);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = changes.changed() => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return self.current(ca, limiter, service).await;
            }
            if ca.published().signing_key_id != leaf.signed_by {
                // The signer changed (rotation or renewal): every proxy wakes
                // now, so spread their renewals instead of signing in a burst.
                let spread = rand::thread_rng().gen_range(Duration::ZERO..ROTATION_SPREAD);
                tokio::time::sleep_until(std::cmp::min(
                    deadline,
                    tokio::time::Instant::now() + spread,
                ))
                .await;
            }
        }
    }
}

fn is_due(ca: &CaManager, leaf: &CachedLeaf) -> bool {
    ca.clock().now() >= leaf.renew_at || ca.published().signing_key_id != leaf.signed_by
}
