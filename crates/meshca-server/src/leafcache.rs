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
use quick_cache::sync::{Cache, DefaultLifecycle, EntryAction, EntryResult};
use quick_cache::{OptionsBuilder, Weighter};
use rand::Rng;
use secrecy::ExposeSecret as _;
use std::collections::hash_map::RandomState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// A cached leaf and when it must be replaced.
#[derive(Debug)]
pub struct CachedLeaf {
    pub issued: IssuedLeaf,
    pub renew_at: OffsetDateTime,
    /// When it was last handed out, in seconds since the cache started.
    last_read: AtomicU64,
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

/// Keyed by service and by who asked (one entry per token, as Consul
/// caches): a leaf and its private key are never handed to another token
/// than the one it was issued for.
type Key = (ServiceName, String);

/// An entry weighs its bytes, and at least its share of the byte budget,
/// so that the one weighted capacity bounds both the entries and the bytes.
#[derive(Clone)]
struct ByBytes {
    floor: u64,
}

impl Weighter<Key, Arc<CachedLeaf>> for ByBytes {
    fn weight(&self, _: &Key, leaf: &Arc<CachedLeaf>) -> u64 {
        leaf.bytes().max(self.floor)
    }
}

pub struct LeafCache {
    /// SipHash with a random key (the standard library's): anyone can name
    /// services, so the hash must not let them pick colliding keys.
    cache: Cache<Key, Arc<CachedLeaf>, ByBytes, RandomState>,
    idle: Duration,
    started: Instant,
    /// When the next look for idle entries is due, in seconds since
    /// `started`.
    next_sweep: AtomicU64,
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

/// Each shard of the cache evicts on its own share of the budget; with at
/// least this many entries per shard, a shard's bound is close to the
/// whole cache's.
const ENTRIES_PER_SHARD: u64 = 512;

impl LeafCache {
    pub fn new(limits: LeafCacheLimits) -> Self {
        let max_entries = limits.max_entries.max(1);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(usize::try_from(max_entries).unwrap_or(usize::MAX))
            .weight_capacity(limits.max_bytes)
            .shards((max_entries / ENTRIES_PER_SHARD).clamp(1, 16) as usize)
            .build()
            .expect("both capacities are set");
        let weigher = ByBytes {
            floor: (limits.max_bytes / max_entries).max(1),
        };
        Self {
            cache: Cache::with_options(
                options,
                weigher,
                RandomState::new(),
                DefaultLifecycle::default(),
            ),
            idle: limits.idle,
            started: Instant::now(),
            next_sweep: AtomicU64::new(limits.idle.as_secs()),
        }
    }

    /// Entries and weighted bytes held now.
    pub fn usage(&self) -> (u64, u64) {
        (self.cache.len() as u64, self.cache.weight())
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
        let now = self.seconds();
        self.forget_idle(now);
        let key = (service.clone(), requester.identity.clone());
        // A leaf that is not due is read under the shard's read lock; only
        // a missing or due one takes the entry below, which write-locks it.
        let cached = match self.cache.get(&key) {
            Some(cached) if !is_due(ca, &cached) => cached,
            _ => {
                self.issue_once(ca, gate, service, requester, &key, now)
                    .await?
            }
        };
        // At most one write a second per leaf: a popular leaf's line is
        // read by every worker and should not bounce between them.
        if cached.last_read.load(Ordering::Relaxed) != now {
            cached.last_read.store(now, Ordering::Relaxed);
        }
        Ok(cached)
    }

    /// The leaf for `key` issued by this request (read at `now`), or by the
    /// one request already issuing it, or cached meanwhile and not due.
    async fn issue_once(
        &self,
        ca: &Arc<CaEngine>,
        gate: &Gate<'_>,
        service: &ServiceName,
        requester: &Requester,
        key: &Key,
        now: u64,
    ) -> Result<Arc<CachedLeaf>, ApiError> {
        let loading = match self
            .cache
            .entry_async(key, |_, cached| {
                if is_due(ca, cached) {
                    EntryAction::ReplaceWithGuard
                } else {
                    EntryAction::Retain(cached.clone())
                }
            })
            .await
        {
            EntryResult::Retained(cached) => return Ok(cached),
            EntryResult::Vacant(loading) | EntryResult::Replaced(loading, _) => loading,
            EntryResult::Removed(..) | EntryResult::Timeout => {
                return Err(ApiError::Internal(
                    "the leaf cache lost an entry it was computing".into(),
                ))
            }
        };
        // On an error `loading` is dropped unfilled, and the next request
        // waiting for this key issues instead.
        let admitted = gate.admit().await?;
        let issued = ca
            .issue_service_leaf(service, requester.clone(), admitted)
            .await?;
        let fraction = rand::thread_rng().gen_range(RENEW_FRACTION.0..=RENEW_FRACTION.1);
        let leaf = Arc::new(CachedLeaf {
            renew_at: renewal_point(issued.valid_after, issued.valid_before, fraction),
            issued,
            last_read: AtomicU64::new(now),
        });
        let _ = loading.insert(leaf.clone());
        Ok(leaf)
    }

    fn seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Drops the entries nobody read for `idle`, at most once a minute
    /// (and by whichever request comes first after that).
    fn forget_idle(&self, now: u64) {
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let next = now + self.idle.as_secs().clamp(1, 60);
        if self
            .next_sweep
            .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another request sweeps
        }
        let idle = self.idle.as_secs();
        self.cache
            .retain(|_, leaf| now.saturating_sub(leaf.last_read.load(Ordering::Relaxed)) < idle);
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
            let service = format!("svc-{i}");
            let leaf = leaf_through(&ca, &cache, &limiter, &service).await.unwrap();
            assert_eq!(
                leaf.issued.spiffe_id.to_string().rsplit('/').next(),
                Some(service.as_str())
            );
        }
        let (entries, bytes) = cache.usage();
        assert!(entries <= limits.max_entries, "{entries} entries");
        assert!(bytes <= limits.max_bytes, "{bytes} bytes");
        assert!(entries > 0, "the cache still caches");
    }

    async fn leaf_for(ca: &Arc<CaEngine>, cache: &LeafCache, service: &str) -> Arc<CachedLeaf> {
        leaf_through(ca, cache, &CsrLimiter::new(0.0, 0), service)
            .await
            .unwrap()
    }

    /// The current leaf for `service`, admitted by `limiter`.
    async fn leaf_through(
        ca: &Arc<CaEngine>,
        cache: &LeafCache,
        limiter: &CsrLimiter,
        service: &str,
    ) -> Result<Arc<CachedLeaf>, ApiError> {
        cache
            .current(
                ca,
                &limiter.for_client(String::new()),
                &service.parse().unwrap(),
                &Requester::default(),
            )
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_for_one_service_at_once_issue_one_leaf() {
        let ca = engine().await;
        let cache = Arc::new(LeafCache::default());
        let asking: Vec<_> = (0..16)
            .map(|_| {
                let (ca, cache) = (ca.clone(), cache.clone());
                tokio::spawn(async move { leaf_for(&ca, &cache, "web").await })
            })
            .collect();
        let mut serials = std::collections::BTreeSet::new();
        for asked in asking {
            serials.insert(asked.await.unwrap().issued.serial.clone());
        }
        assert_eq!(serials.len(), 1, "{serials:?}");
        assert_eq!(cache.usage().0, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_issuance_leaves_the_service_to_the_next_request() {
        let ca = engine().await;
        let cache = LeafCache::default();
        let limiter = CsrLimiter::new(0.0, 1);
        let held = limiter.acquire().unwrap();
        let refused = leaf_through(&ca, &cache, &limiter, "web").await;
        assert!(
            matches!(refused, Err(ApiError::RateLimited { .. })),
            "{refused:?}"
        );
        assert_eq!(cache.usage().0, 0, "nothing cached for a refusal");
        drop(held);
        let leaf = leaf_through(&ca, &cache, &limiter, "web").await.unwrap();
        assert!(leaf.issued.spiffe_id.to_string().ends_with("/svc/web"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_nobody_read_for_the_idle_time_are_forgotten() {
        let ca = engine().await;
        let cache = LeafCache::new(LeafCacheLimits {
            idle: Duration::from_secs(600),
            ..LeafCacheLimits::default()
        });
        let old = leaf_for(&ca, &cache, "old").await;
        let kept = leaf_for(&ca, &cache, "kept").await;
        let read_at = old.last_read.load(Ordering::Relaxed);
        // "kept" is read again 500 s later, "old" never again.
        kept.last_read.store(read_at + 500, Ordering::Relaxed);
        cache.forget_idle(read_at + 600);
        assert_eq!(cache.usage().0, 1, "old is forgotten, kept is not");
        let again = cache.cache.get(&key("kept")).expect("kept is still cached");
        assert_eq!(again.issued.serial, kept.issued.serial);
        cache.forget_idle(read_at + 1100);
        assert_eq!(cache.usage().0, 0, "kept unread for 600 s as well");
        let reissued = leaf_for(&ca, &cache, "old").await;
        assert_ne!(
            reissued.issued.serial, old.issued.serial,
            "old was forgotten"
        );
    }

    fn key(service: &str) -> Key {
        (service.parse().unwrap(), Requester::default().identity)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cached_leaf_never_prints_its_private_key() {
        let ca = engine().await;
        let cache = LeafCache::default();
        let leaf = leaf_for(&ca, &cache, "web").await;
        let key = leaf.issued.private_key_pem.as_ref().unwrap();
        assert!(key.expose_secret().contains("PRIVATE KEY"));
        let shown = format!("{leaf:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        let again = leaf_for(&ca, &cache, "web").await;
        assert_eq!(
            again.issued.serial, leaf.issued.serial,
            "served from the cache"
        );
    }
}
