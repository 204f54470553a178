//! meshca's CA engine: the life of one certificate authority, free of HTTP.
//!
//! [`CaEngine`] bootstraps or restores the CA, publishes it, applies
//! configuration changes (rotating the root when the key changes), renews
//! the signing intermediate, prunes what has expired, and issues leaves.
//! It sequences I/O around pure transitions from `meshca_core::rotation`:
//! a provider stages new keys and certificates, the engine validates them,
//! commits the new state in one store transaction, and then makes it live
//! with one atomic swap of [`Published`].
//!
//! Architecture Invariant: nothing here imports HTTP or wire types; the
//! server converts at its edge and maps [`CaError`] to statuses in one place.
//!
//! Architecture Invariant: a `Published` value is never mutated. Every
//! change builds a new one and swaps it in after the store commit, so a
//! request sees one consistent CA from start to end.

mod boot;
mod error;
mod follower;
mod issue;
pub mod keygen;
mod maintain;
mod observe;
mod persist;
pub mod primary;
mod published;
mod reconfigure;
mod rotate;
mod shared_store;
mod sign_intermediate;
mod signing_threads;
mod snapshot;
mod writer;

pub use error::{CaError, Reaction};
pub use follower::{LinkStatus, PrimaryLink};
pub use issue::{IssuedLeaf, Pace, Requester, SigningTurn, ISSUED_AUDIT_EVENT};
pub use meshca_store::{snapshot_file, Snapshot};
pub use observe::{IssueKind, IssueObserver};
pub use published::Published;
pub use reconfigure::ConfigChange;

use arc_swap::ArcSwap;
use meshca_core::state::CaState;
use meshca_core::{CaConfig, Clock, ProviderKind};
use meshca_provider::{BuiltinProvider, CaProvider, ProviderError};
use meshca_store::Records;
use persist::Persistence;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use writer::WriterLock;

/// Longest a provider may take to sign, cross-sign, or create keys (an
/// RSA-4096 key in a debug build takes seconds; a remote provider may hang).
pub const PROVIDER_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Creates the provider for a configuration.
pub type ProviderFactory =
    Arc<dyn Fn(&CaConfig) -> Result<Arc<dyn CaProvider>, CaError> + Send + Sync>;

/// The default factory: the built-in provider (`consul`) and `vault`.
pub fn default_provider_factory() -> ProviderFactory {
    Arc::new(|cfg: &CaConfig| match cfg.provider() {
        ProviderKind::Consul => Ok(Arc::new(BuiltinProvider::new()) as Arc<dyn CaProvider>),
        ProviderKind::Vault => {
            Ok(Arc::new(meshca_provider_vault::VaultProvider::new(cfg)?) as Arc<dyn CaProvider>)
        }
    })
}

/// The CA engine. Readers load [`Published`] without locking; writers are
/// serialised by one lock and a second writer is refused, not queued.
pub struct CaEngine {
    store: Persistence,
    clock: Arc<dyn Clock>,
    datacenter: String,
    factory: ProviderFactory,
    published: ArcSwap<Published>,
    changes: watch::Sender<u64>,
    writer: WriterLock,
    issue_index: AtomicU64,
    /// Set in a secondary datacenter.
    follower: Option<follower::Follower>,
    /// Told about every issuance, once set.
    observer: std::sync::OnceLock<Arc<dyn IssueObserver>>,
    /// Every issued leaf is durable here before it is returned, once set.
    journal: std::sync::OnceLock<Arc<meshca_journal::Journal>>,
    /// Who leads the servers sharing the store; unset: this server alone.
    leadership: std::sync::OnceLock<watch::Receiver<meshca_store::Leadership>>,
    /// Started when a caller first asks for them ([`Pace::Background`]);
    /// `None` if they could not be: its signings then run on the worker.
    signing_threads: std::sync::OnceLock<Option<signing_threads::SigningThreads>>,
}

impl CaEngine {
    /// Loads the CA from the store, or creates it on first start from
    /// `initial` (the agent configuration's `ca_config`).
    pub async fn start(
        store: Arc<Records>,
        clock: Arc<dyn Clock>,
        datacenter: String,
        initial: CaConfig,
        factory: ProviderFactory,
    ) -> Result<Arc<Self>, CaError> {
        let store = Persistence::new(store);
        let published =
            boot::load_or_bootstrap(&store, &*clock, initial, &factory, &datacenter).await?;
        Ok(Self::assemble(
            store, clock, datacenter, factory, published, None,
        ))
    }

    /// Loads a secondary datacenter's CA from the store, or makes it on
    /// first start with an intermediate the primary signs (waiting up to
    /// `wait` for the primary). `initial` gives its own provider and key
    /// settings. Call [`CaEngine::spawn_follower`] to follow the primary.
    pub async fn start_secondary(
        store: Arc<Records>,
        clock: Arc<dyn Clock>,
        datacenter: String,
        initial: CaConfig,
        factory: ProviderFactory,
        link: PrimaryLink,
        wait: Duration,
    ) -> Result<Arc<Self>, CaError> {
        let store = Persistence::new(store);
        let published = match store.load().await? {
            Some(state) => {
                boot::check_role(&state, Some(&link.primary_datacenter))?;
                boot::restore(state, &factory, &datacenter).await?
            }
            None => {
                let boot = follower::BootContext {
                    store: &store,
                    clock: &*clock,
                    initial: &initial,
                    factory: &factory,
                    datacenter: &datacenter,
                    link: &link,
                };
                follower::bootstrap_secondary(boot, wait).await?
            }
        };
        let follower = Some(follower::Follower::new(link));
        Ok(Self::assemble(
            store, clock, datacenter, factory, published, follower,
        ))
    }

    fn assemble(
        store: Persistence,
        clock: Arc<dyn Clock>,
        datacenter: String,
        factory: ProviderFactory,
        published: Published,
        follower: Option<follower::Follower>,
    ) -> Arc<Self> {
        let index = published.index;
        let leaf_base = issue::leaf_index_base(index, clock.now());
        Arc::new(Self {
            store,
            clock,
            datacenter,
            factory,
            published: ArcSwap::from_pointee(published),
            changes: watch::channel(index).0,
            writer: WriterLock::new(),
            issue_index: AtomicU64::new(leaf_base),
            follower,
            observer: std::sync::OnceLock::new(),
            journal: std::sync::OnceLock::new(),
            leadership: std::sync::OnceLock::new(),
            signing_threads: std::sync::OnceLock::new(),
        })
    }

    /// The signing threads, started on first use.
    fn signing_threads(&self) -> Option<&signing_threads::SigningThreads> {
        self.signing_threads
            .get_or_init(|| {
                signing_threads::SigningThreads::start()
                    .inspect_err(
                        |e| tracing::warn!(error = %e, "signing on the runtime's workers only"),
                    )
                    .ok()
            })
            .as_ref()
    }

    /// Records every issuance in `journal` from now on: a leaf is returned
    /// only once its entry is durable. Set once; a second journal is
    /// refused (`false`).
    pub fn journal_issuance(&self, journal: Arc<meshca_journal::Journal>) -> bool {
        self.journal.set(journal).is_ok()
    }

    /// Follows the election of the servers sharing the store: upkeep
    /// (rotation, renewal, pruning, data keys) runs only while this server
    /// leads. Set once; a second receiver is refused (`false`).
    pub fn follow_leadership(&self, leadership: watch::Receiver<meshca_store::Leadership>) -> bool {
        self.leadership.set(leadership).is_ok()
    }

    /// Whether this server leads (always, when it is alone on its store).
    pub fn leads(&self) -> bool {
        self.leadership.get().is_none_or(|l| l.borrow().is_me)
    }

    /// A receiver of the leadership, when servers share the store.
    pub fn leadership(&self) -> Option<watch::Receiver<meshca_store::Leadership>> {
        self.leadership.get().cloned()
    }

    /// Tells `observer` about every issuance from now on. Set once; a
    /// second observer is refused (`false`).
    pub fn observe_issuance(&self, observer: Arc<dyn IssueObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// The CA as it is published now.
    pub fn published(&self) -> Arc<Published> {
        self.published.load_full()
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// A receiver that changes whenever the CA is republished (and on
    /// [`CaEngine::wake_waiters`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Wakes every blocked query so it re-reads the clock. Production never
    /// needs it; tests call it after advancing a manual clock.
    pub fn wake_waiters(&self) {
        self.changes.send_modify(|_| {});
    }

    /// `Err` naming the problem while the CA cannot take changes: the last
    /// store write failed (until one succeeds).
    pub fn health(&self) -> Result<(), String> {
        self.store.health()
    }

    /// Makes `published` live: one atomic swap, then wake the waiters.
    fn install(&self, published: Published) {
        let index = published.index;
        self.published.store(Arc::new(published));
        self.changes.send_replace(index);
    }

    /// A new snapshot of `state` with the current provider and keys (for
    /// changes that keep the signing key: configuration, pruning).
    fn rebuild(&self, current: &Published, state: CaState) -> Result<Published, CaError> {
        Published::build(
            state,
            current.provider.clone(),
            current.signer.keys().clone(),
            &self.datacenter,
        )
    }

    /// Called by a writer holding the lock: the published CA, made equal to
    /// the store's first. After a failed write whose outcome was unknown
    /// (the disk filled up mid-commit), the store may hold a newer
    /// committed state than memory; that state is published rather than
    /// refusing every later change.
    async fn refresh(&self) -> Result<Arc<Published>, CaError> {
        let before = self.published().index;
        if let Some(stored) = self.publish_stored().await? {
            tracing::warn!(
                published = before,
                stored,
                "the store holds another CA state than the one published; publishing the stored one"
            );
        }
        Ok(self.published())
    }

    /// Called by a writer holding the lock: publishes the store's CA state
    /// if it is not the published one; its index when it was published.
    async fn publish_stored(&self) -> Result<Option<u64>, CaError> {
        let current = self.published();
        let Some(stored) = self.store.load().await? else {
            return Err(CaError::internal("the store no longer holds the CA"));
        };
        if stored.modify_index == current.index {
            return Ok(None);
        }
        let index = stored.modify_index;
        let provider = (self.factory)(&stored.config.config)?;
        let published = Published::open(stored, provider, &self.datacenter).await?;
        self.install(published);
        Ok(Some(index))
    }
}

/// Runs blocking (CPU-heavy or fsync) work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CaError> + Send + 'static,
) -> Result<T, CaError> {
    // The caller's span (e.g. the request and its ID) goes along, so the
    // blocking work's log lines name the request too.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| CaError::Internal(format!("worker task failed: {e}")))?
}

/// Awaits a provider call for at most [`PROVIDER_CALL_TIMEOUT`]; the call
/// is cancelled (dropped) when the time is up.
pub(crate) async fn provider_call<T>(
    call: impl Future<Output = Result<T, ProviderError>>,
) -> Result<T, CaError> {
    tokio::time::timeout(PROVIDER_CALL_TIMEOUT, call)
        .await
        .map_err(|_| CaError::Unavailable("the CA provider did not answer in time".into()))?
        .map_err(CaError::from)
}
