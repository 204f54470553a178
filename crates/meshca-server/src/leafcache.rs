//! The agent leaf cache: one certificate per service, reissued when it
//! reaches its renewal point (a random 60–90% of its lifetime) or when the
//! certificate that signs leaves changes. Blocking queries on a leaf wait for
//! exactly that moment.
//!
//! The cache is bounded (entries and bytes) and forgets services nobody has
//! asked for in a while: anyone can name any service, so an unbounded map
//! would be a memory-growth path. The cached private key stays in a
//! `SecretString`, zeroed on drop and never printed.

use crate::error::ApiError;
use crate::ratelimit::Gate;
use meshca_ca::{CaEngine, IssuedLeaf, Requester};
use meshca_core::leaf::{renewal_point, RENEW_FRACTION};
use meshca_core::ServiceName;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use rand::Rng;
use secrecy::ExposeSecret as _;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// A cached leaf and when it must be replaced.
#[derive(Debug)]
pub struct CachedLeaf {
    pub issued: IssuedLeaf,
    pub renew_at: OffsetDateTime,
}

impl CachedLeaf {
    /// `SigningKeyID` of the certificate that actually signed this leaf.
    pub fn signed_by(&self) -> &str {
        &self.issued.signing_key_id
    }

    /// What the entry costs in memory, roughly: its PEM texts plus overhead.
    fn bytes(&self) -> u64 {
        let key = self
            .issued
            .private_key_pem
            .as_ref()
            .map_or(0, |k| k.expose_secret().len());
        (self.issued.cert_pem.len() + key + 512) as u64
    }
}

/// Bounds of the leaf cache.
#[derive(Debug, Clone, Copy)]
pub struct LeafCacheLimits {
    pub max_entries: u64,
    pub max_bytes: u64,
    /// An entry nobody read for this long is dropped; the next request for
    /// it simply issues a new leaf.
    pub idle: Duration,
}

impl Default for LeafCacheLimits {
    fn default() -> Self {
        Self {
            // About 4 KB per entry (leaf, chain, key, bookkeeping): 16 MiB
            // keeps the server's memory under 40 MB with any number of
            // services asked for. An evicted leaf costs one signing (about
            // 0.3 ms) when it is asked for again.
            max_entries: 4_096,
            max_bytes: 16 * 1024 * 1024,
            idle: Duration::from_secs(60 * 60),
        }
    }
}

pub struct LeafCache {
    /// Keyed by service and by who asked (one entry per token, as Consul
    /// caches): a leaf and its private key are never handed to another
    /// token than the one it was issued for.
    cache: Cache<(ServiceName, String), Arc<CachedLeaf>>,
}

impl Default for LeafCache {
    fn default() -> Self {
        Self::new(LeafCacheLimits::default())
    }
}

/// Longest a blocked leaf query sleeps before it re-reads the clock; bounds
/// the error when the wall clock jumps.
const MAX_NAP: Duration = Duration::from_secs(30);

/// Upper bound of the random delay before a blocked leaf query fetches a
/// certificate from a new signer.
pub const ROTATION_SPREAD: Duration = Duration::from_secs(3);

impl LeafCache {
    pub fn new(limits: LeafCacheLimits) -> Self {
        // Every entry weighs at least its share of the byte budget, so the
        // one weighted capacity bounds both the entries and the bytes.
        let floor = (limits.max_bytes / limits.max_entries.max(1)).max(1);
        let cache = Cache::builder()
            .max_capacity(limits.max_bytes)
            .weigher(move |_: &(ServiceName, String), leaf: &Arc<CachedLeaf>| {
                u32::try_from(leaf.bytes().max(floor)).unwrap_or(u32::MAX)
            })
            .time_to_idle(limits.idle)
            .build();
        Self { cache }
    }

    /// Entries and weighted bytes held now (after pending evictions run).
    pub async fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks().await;
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// The current leaf for `service`, issuing one if there is none or the
    /// cached one is due. One request per service issues; the others wait
    /// for it instead of signing again.
    pub async fn current(
        &self,
        ca: &Arc<CaEngine>,
        gate: &Gate<'_>,
        service: &ServiceName,
        requester: &Requester,
    ) -> Result<Arc<CachedLeaf>, ApiError> {
        let key = (service.clone(), requester.identity.clone());
        // A leaf that is not due is read without the compute below, which
        // registers a waiter for the key in a second map on every call.
        if let Some(cached) = self.cache.get(&key).await {
            if !is_due(ca, &cached) {
                return Ok(cached);
            }
        }
        let result = self
            .cache
            .entry(key)
            .and_try_compute_with(|cached| async move {
                if let Some(entry) = cached {
                    if !is_due(ca, entry.value()) {
                        return Ok(Op::Nop);
                    }
                }
                let admitted = gate.admit().await?;
                let issued = ca
                    .issue_service_leaf(service, requester.clone(), admitted)
                    .await?;
                let fraction = rand::thread_rng().gen_range(RENEW_FRACTION.0..=RENEW_FRACTION.1);
                Ok::<_, ApiError>(Op::Put(Arc::new(CachedLeaf {
                    renew_at: renewal_point(issued.valid_after, issued.valid_before, fraction),
                    issued,
                })))
            })
            .await?;
        match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                Ok(e.into_value())
            }
            CompResult::StillNone(_) | CompResult::Removed(_) => Err(ApiError::Internal(
                "the leaf cache lost an entry it was computing".into(),
            )),
        }
    }

    /// Blocking query: waits until the leaf cached at `index` is due (or the
    /// signing certificate changes, or `wait` passes, or `stop` turns true
    /// at shutdown), then returns the current leaf.
    pub async fn wait_for_newer(
        &self,
        ca: &Arc<CaEngine>,
        gate: &Gate<'_>,
        service: &ServiceName,
        requester: &Requester,
        parked: Parked,
    ) -> Result<Arc<CachedLeaf>, ApiError> {
        let Parked {
            index,
            wait,
            mut stop,
        } = parked;
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = ca.subscribe();
        loop {
            let leaf = self.current(ca, gate, service, requester).await?;
            // A newer leaf, or an index this server never gave out (from
            // before a restart): answer at once.
            if leaf.issued.index != index {
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
                () = crate::blocking::stopping(&mut stop) => return Ok(leaf),
            }
            if tokio::time::Instant::now() >= deadline {
                return self.current(ca, gate, service, requester).await;
            }
            if ca.published().signer.signing_key_id() != leaf.signed_by() {
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

/// What a blocked leaf query waits on: the index the client has, the
/// longest wait, and the server's shutdown signal.
pub struct Parked {
    pub index: u64,
    pub wait: Duration,
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Due when past its renewal point, or when it was signed by another key
/// than the one that signs now (the tag comes from the leaf itself, so a
/// leaf signed by an old key is never mistaken for a current one).
fn is_due(ca: &CaEngine, leaf: &CachedLeaf) -> bool {
    ca.clock().now() >= leaf.renew_at || ca.published().signer.signing_key_id() != leaf.signed_by()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::CsrLimiter;
    use meshca_core::{CaConfig, SystemClock};

    async fn engine() -> Arc<CaEngine> {
        let records = meshca_migrations::open(
            Arc::new(meshca_store::MemoryStore::new()),
            &meshca_store::StoreKey::generate().unwrap(),
            meshca_core::Clock::now(&SystemClock),
        )
        .unwrap();
        let store = Arc::new(records);
        let config = CaConfig::from_wire(
            "consul",
            serde_json::json!({"CSRMaxPerSecond": 0})
                .as_object()
                .unwrap(),
            None,
        )
        .unwrap();
        CaEngine::start(
            store,
            Arc::new(SystemClock),
            "dc1".into(),
            config,
            meshca_ca::default_provider_factory(),
        )
        .await
        .unwrap()
    }

    /// Regression: the cache kept one entry per service name anyone asked
    /// for, without bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn distinct_services_cannot_grow_the_cache_past_its_bounds() {
        let ca = engine().await;
        let limiter = CsrLimiter::new(0.0, 0);
        let limits = LeafCacheLimits {
            max_entries: 8,
            max_bytes: 8 * 4096,
            idle: Duration::from_secs(3600),
        };
        let cache = LeafCache::new(limits);
        for i in 0..60 {
            let service: ServiceName = format!("svc-{i}").parse().unwrap();
            let leaf = cache
                .current(
                    &ca,
                    &limiter.for_client(String::new()),
                    &service,
                    &Requester::default(),
                )
                .await
                .unwrap();
            assert_eq!(
                leaf.issued.spiffe_id.to_string().rsplit('/').next(),
                Some(service.as_str())
            );
        }
        let (entries, bytes) = cache.usage().await;
        assert!(entries <= limits.max_entries, "{entries} entries");
        assert!(bytes <= limits.max_bytes, "{bytes} bytes");
        assert!(entries > 0, "the cache still caches");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cached_leaf_never_prints_its_private_key() {
        let ca = engine().await;
        let cache = LeafCache::default();
        let leaf = cache
            .current(
                &ca,
                &CsrLimiter::new(0.0, 0).for_client(String::new()),
                &"web".parse().unwrap(),
                &Requester::default(),
            )
            .await
            .unwrap();
        let key = leaf.issued.private_key_pem.as_ref().unwrap();
        assert!(key.expose_secret().contains("PRIVATE KEY"));
        let shown = format!("{leaf:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        let again = cache
            .current(
                &ca,
                &CsrLimiter::new(0.0, 0).for_client(String::new()),
                &"web".parse().unwrap(),
                &Requester::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            again.issued.serial, leaf.issued.serial,
            "served from the cache"
        );
    }
}
