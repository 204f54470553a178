//! A secondary datacenter's engine: it has no root of its own. It trusts
//! the primary's roots, signs leaves with its own intermediate (whose key
//! its own provider keeps and whose certificate the primary's active root
//! signed), and follows the primary: a blocking query on the primary's
//! roots brings a rotation at once, and a new intermediate from the new
//! root follows it. Renewal at half-life also goes through the primary.
//!
//! Nothing is published before it is checked: the signed intermediate must
//! be a CA for our trust domain with our staged key, chain to the primary's
//! active root, and sign a probe leaf; with a cross-signed chain, the probe
//! must also verify against the old root alone. When the primary cannot be
//! reached the secondary keeps signing with what it has, reports it
//! ([`CaEngine::primary_link`], the log) and retries with a bounded backoff.

use crate::primary::{Primary, PrimaryRoots};
use crate::published::Published;
use crate::rotate::{probe_leaf, verify_through_chain};
use crate::{provider_call, CaEngine, CaError};
use meshca_core::rotation::first_cert_der;
use meshca_core::secondary::{needs_new_intermediate, shows_bundle, Follow};
use meshca_core::state::CaState;
use meshca_core::x509::cert_pem;
use meshca_core::CaConfig;
use meshca_provider::verify::check_signed_intermediate;
use meshca_provider::{CaProvider, CaRequest};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

/// How long one blocking query on the primary's roots waits.
const WATCH_WAIT: Duration = Duration::from_secs(300);
/// The first and the longest pause after a failed contact with the primary.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A secondary datacenter's primary: how to reach it and its name.
#[derive(Clone)]
pub struct PrimaryLink {
    pub primary: Arc<dyn Primary>,
    pub primary_datacenter: String,
}

/// The secondary's part of the engine: the link and how it is doing.
pub(crate) struct Follower {
    link: PrimaryLink,
    status: Mutex<LinkStatus>,
}

/// How the secondary's contact with its primary is going.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    pub primary_datacenter: String,
    /// The last successful contact.
    pub last_contact: Option<OffsetDateTime>,
    /// The last failure, while it is not followed by a success.
    pub error: Option<String>,
    /// Failed contacts and refused requests since start.
    pub failures: u64,
}

impl Follower {
    pub(crate) fn new(link: PrimaryLink) -> Self {
        let status = LinkStatus {
            primary_datacenter: link.primary_datacenter.clone(),
            ..LinkStatus::default()
        };
        Self {
            link,
            status: Mutex::new(status),
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, LinkStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn contacted(&self, now: OffsetDateTime) {
        let mut s = self.status();
        if let Some(e) = s.error.take() {
            tracing::info!(previous_error = %e, "the primary datacenter is reachable again");
        }
        s.last_contact = Some(now);
    }

    fn failed(&self, e: &CaError) {
        let mut s = self.status();
        s.failures += 1;
        s.error = Some(e.to_string());
        tracing::warn!(error = %e, failures = s.failures, primary = %s.primary_datacenter,
            "the secondary could not follow its primary datacenter; it keeps signing with its \
             current intermediate and retries");
    }
}

/// Everything a new intermediate from the primary needs.
pub(crate) struct NewIntermediate<'a> {
    pub link: &'a PrimaryLink,
    pub datacenter: &'a str,
    pub prev: Option<&'a CaState>,
    pub roots: &'a PrimaryRoots,
    pub config: CaConfig,
    pub provider: Arc<dyn CaProvider>,
    pub now: OffsetDateTime,
    pub index: u64,
}

impl NewIntermediate<'_> {
    /// Stages a key with the provider, has the primary sign it, checks the
    /// certificate and a probe leaf: the next published CA, not committed.
    pub(crate) async fn build(self) -> Result<Published, CaError> {
        let active = self.roots.checked_active()?;
        let req = CaRequest {
            cluster_id: self.roots.cluster_id()?,
            trust_domain: self.roots.trust_domain.clone(),
            config: self.config.clone(),
            now: self.now,
        };
        let staged = provider_call(self.provider.stage_intermediate(&req)).await?;
        let signed = self.link.primary.sign_intermediate(&staged.csr_pem).await?;
        let der = first_cert_der(&signed)?;
        check_signed_intermediate(
            &der,
            &staged.spki_der,
            &first_cert_der(&active.root_cert)?,
            &req.trust_domain,
        )
        .map_err(|e| {
            CaError::Rejected(format!(
                "the intermediate the primary signed is unusable: {e}"
            ))
        })?;
        let material = staged.into_material(&active.root_cert, &cert_pem(&der));
        let keys = provider_call(self.provider.open(&material)).await?;
        let state = Follow {
            prev: self.prev,
            primary: self.roots,
            primary_datacenter: &self.link.primary_datacenter,
            config: self.config,
            own: Some(&material),
            now: self.now,
            index: self.index,
        }
        .state()?;
        let published = Published::build(state, self.provider, keys, self.datacenter)?;
        let leaf = probe_leaf(&published, self.now, self.datacenter).await?;
        // With a cross-signed chain (the primary's chain has more than its
        // own signing certificate), peers that trust only an older root
        // must accept our leaves too.
        if active.intermediate_certs.len() > 1 {
            let older = older_roots(self.roots)?;
            verify_through_chain(&published, &leaf, &older, self.now)?;
        }
        Ok(published)
    }
}

fn older_roots(roots: &PrimaryRoots) -> Result<Vec<Vec<u8>>, CaError> {
    let older: Vec<Vec<u8>> = roots
        .roots
        .iter()
        .filter(|r| !r.active)
        .map(|r| first_cert_der(&r.root_cert))
        .collect::<Result<_, _>>()?;
    if older.is_empty() {
        return Err(CaError::Rejected(
            "the primary's chain is cross-signed but it publishes no older root".into(),
        ));
    }
    Ok(older)
}

impl CaEngine {
    fn follower(&self) -> Option<&Follower> {
        self.follower.as_ref()
    }

    /// How the contact with the primary datacenter is going; `None` in the
    /// primary datacenter.
    pub fn primary_link(&self) -> Option<LinkStatus> {
        self.follower().map(|f| f.status().clone())
    }

    /// Whether this engine is a secondary datacenter's.
    pub fn is_secondary(&self) -> bool {
        self.follower.is_some()
    }

    /// The primary's roots now (no waiting), noting the contact.
    async fn current_primary_roots(&self, f: &Follower) -> Result<PrimaryRoots, CaError> {
        let result = f.link.primary.roots(0, Duration::from_secs(1)).await;
        match &result {
            Ok(_) => f.contacted(self.clock.now()),
            Err(e) => f.failed(e),
        }
        result
    }

    /// Brings the published CA in line with the primary's `roots`: a new
    /// intermediate when the primary's active root changed, the new bundle
    /// otherwise. Returns whether anything changed.
    async fn follow(&self, f: &Follower, roots: &PrimaryRoots) -> Result<bool, CaError> {
        let p = self.published();
        if !needs_new_intermediate(p.state(), roots) && shows_bundle(p.state(), roots) {
            return Ok(false);
        }
        let _writer = self.writer.begin("FOLLOWING_PRIMARY")?;
        let current = self.refresh().await?;
        let now = self.clock.now();
        let index = current.index + 1;
        let published = if needs_new_intermediate(current.state(), roots) {
            self.intermediate_from(
                f,
                &current,
                roots,
                current.config.clone(),
                current.provider.clone(),
            )
            .await?
        } else {
            let state = Follow {
                prev: Some(current.state()),
                primary: roots,
                primary_datacenter: &f.link.primary_datacenter,
                config: current.config.clone(),
                own: None,
                now,
                index,
            }
            .state()?;
            self.rebuild(&current, state)?
        };
        self.store.commit(published.state(), current.index).await?;
        tracing::info!(active_root = %published.active_root_id, index = published.index,
            signing_key_id = %published.signer.signing_key_id(), primary_index = roots.index,
            "followed the primary datacenter's roots");
        self.install(published);
        Ok(true)
    }

    /// A new intermediate for `current`'s CA from the primary's active root.
    async fn intermediate_from(
        &self,
        f: &Follower,
        current: &Published,
        roots: &PrimaryRoots,
        config: CaConfig,
        provider: Arc<dyn CaProvider>,
    ) -> Result<Published, CaError> {
        NewIntermediate {
            link: &f.link,
            datacenter: &self.datacenter,
            prev: Some(current.state()),
            roots,
            config,
            provider,
            now: self.clock.now(),
            index: current.index + 1,
        }
        .build()
        .await
    }

    /// Renews the intermediate through the primary when it is half-way
    /// through its life (the caller checked). The current one keeps signing
    /// when this fails.
    pub(crate) async fn renew_from_primary(&self) -> Result<bool, CaError> {
        let Some(f) = self.follower() else {
            return Ok(false);
        };
        let Ok(_writer) = self.writer.begin("RENEWING") else {
            return Ok(false);
        };
        let current = self.refresh().await?;
        let roots = self.current_primary_roots(f).await?;
        let published = self
            .intermediate_from(
                f,
                &current,
                &roots,
                current.config.clone(),
                current.provider.clone(),
            )
            .await
            .inspect_err(|e| f.failed(e))?;
        self.store.commit(published.state(), current.index).await?;
        tracing::info!(signing_key_id = %published.signer.signing_key_id(), index = published.index,
            "renewed the intermediate through the primary datacenter");
        self.install(published);
        Ok(true)
    }

    /// A configuration change in a secondary that changes its key settings
    /// or provider: a new intermediate with them, signed by the primary.
    /// The root is the primary's and never changes here.
    pub(crate) async fn reconfigure_secondary(
        &self,
        current: &Arc<Published>,
        next: CaConfig,
    ) -> Result<(), CaError> {
        let f = self
            .follower()
            .ok_or_else(|| CaError::internal("not a secondary datacenter"))?;
        let provider = (self.factory)(&next)?;
        let roots = self.current_primary_roots(f).await?;
        let published = self
            .intermediate_from(f, current, &roots, next, provider)
            .await?;
        self.store.commit(published.state(), current.index).await?;
        tracing::info!(config = %published.config, index = published.index,
            signing_key_id = %published.signer.signing_key_id(),
            "CA configuration changed: new intermediate from the primary datacenter");
        self.install(published);
        Ok(())
    }

    /// Follows the primary until the engine is dropped: a blocking query on
    /// its roots, then [`CaEngine::follow`]; after a failure, a pause that
    /// doubles up to 30 s. `None` in the primary datacenter.
    pub fn spawn_follower(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.follower.as_ref()?;
        let weak = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut after = 0;
            let mut backoff = BACKOFF_MIN;
            loop {
                let Some(ca) = weak.upgrade() else { return };
                match ca.follow_once(after).await {
                    Ok(index) => {
                        after = index;
                        backoff = BACKOFF_MIN;
                    }
                    Err(()) => {
                        drop(ca);
                        tokio::time::sleep(backoff).await;
                        backoff = std::cmp::min(backoff * 2, BACKOFF_MAX);
                    }
                }
            }
        }))
    }

    /// One blocking query and the follow-up; the primary's index on
    /// success. A failure is reported in the link status and the log.
    async fn follow_once(&self, after: u64) -> Result<u64, ()> {
        let f = self.follower().ok_or(())?;
        let result = match f.link.primary.roots(after, WATCH_WAIT).await {
            Ok(roots) => {
                f.contacted(self.clock.now());
                self.follow(f, &roots).await.map(|_| roots.index)
            }
            Err(e) => Err(e),
        };
        result.map_err(|e| f.failed(&e))
    }
}

/// The first CA of a new secondary: the primary's roots and a new
/// intermediate from its active root, committed. Waits for an unreachable
/// primary up to `wait`, retrying with backoff; a refusal (a wrong
/// replication token, a CSR the primary rejects) fails at once.
pub(crate) async fn bootstrap_secondary(
    engine: BootContext<'_>,
    wait: Duration,
) -> Result<Published, CaError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut backoff = BACKOFF_MIN;
    loop {
        match engine.try_bootstrap().await {
            Ok(p) => return Ok(p),
            Err(e @ CaError::Unavailable(_))
                if tokio::time::Instant::now() + backoff < deadline =>
            {
                tracing::warn!(error = %e, "the secondary's first CA could not be made yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = std::cmp::min(backoff * 2, BACKOFF_MAX);
            }
            Err(e) => {
                let msg = format!(
                    "the secondary datacenter could not get its first intermediate from the \
                     primary datacenter {}: {e}",
                    engine.link.primary_datacenter
                );
                return Err(match e {
                    CaError::Unavailable(_) => CaError::Unavailable(msg),
                    CaError::Rejected(_) => CaError::Rejected(msg),
                    other => other,
                });
            }
        }
    }
}

/// What [`bootstrap_secondary`] needs from start-up.
pub(crate) struct BootContext<'a> {
    pub store: &'a crate::persist::Persistence,
    pub clock: &'a dyn meshca_core::Clock,
    pub initial: &'a CaConfig,
    pub factory: &'a crate::ProviderFactory,
    pub datacenter: &'a str,
    pub link: &'a PrimaryLink,
}

impl BootContext<'_> {
    async fn try_bootstrap(&self) -> Result<Published, CaError> {
        let roots = self.link.primary.roots(0, Duration::from_secs(1)).await?;
        let expected = self.store.index().await?;
        let published = NewIntermediate {
            link: self.link,
            datacenter: self.datacenter,
            prev: None,
            roots: &roots,
            config: self.initial.clone(),
            provider: (self.factory)(self.initial)?,
            now: self.clock.now(),
            index: expected + 1,
        }
        .build()
        .await?;
        self.store.commit(published.state(), expected).await?;
        tracing::info!(cluster_id = %published.cluster_id, active_root = %published.active_root_id,
            signing_key_id = %published.signer.signing_key_id(),
            "secondary CA initialised with an intermediate from the primary datacenter");
        Ok(published)
    }
}
