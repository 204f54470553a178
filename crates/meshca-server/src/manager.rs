//! The CA manager: bootstraps or restores the CA, publishes the roots view
//! once per change, issues leaves, and applies configuration changes.
//!
//! Readers (roots, signing) never lock: they load an immutable [`Published`]
//! snapshot through `ArcSwap`. Writers (configuration changes) are serialised
//! by one async mutex; a second writer gets 409 instead of queueing.

use crate::error::ApiError;
use crate::wire::{CaConfiguration, CaConfigurationUpdate, CaRootWire, IndexedCaRoots, IssuedCert};
use arc_swap::ArcSwap;
use bytes::Bytes;
use meshca_core::csr::{validate_csr, CsrKeyType, CsrPolicy, ValidatedCsr};
use meshca_core::leaf::leaf_validity;
use meshca_core::rotation::{
    cross_sign_not_after, prune, prune_roots, scheduled_rotation_due, signing_renewal_due,
};
use meshca_core::state::{CaRoot, CaState, StoredConfig};
use meshca_core::x509::{cert_facts, cert_id, colon_hex, decode_pem_blocks, serial_u64};
use meshca_core::{CaConfig, Clock, KeySpec, ProviderKind, SpiffeId, TrustDomain};
use meshca_provider::{BuiltinProvider, CaMaterial, CaProvider, CaRequest, LeafRequest};
use meshca_store::Records;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::{watch, Mutex};
use uuid::Uuid;

/// The name every built-in root carries (Consul says "Consul CA Primary Cert").
pub const ROOT_NAME: &str = "meshca CA Primary Cert";

/// Everything a request needs, prepared once per CA change.
pub struct Published {
    pub index: u64,
    pub cluster_id: Uuid,
    pub trust_domain: TrustDomain,
    pub config: CaConfig,
    pub config_create_index: u64,
    pub roots: Vec<CaRoot>,
    pub roots_json: Bytes,
    pub roots_pem: Bytes,
    pub active_root_id: String,
    /// The active root's intermediates, appended to every leaf's `CertPEM`.
    pub chain_suffix: String,
    pub signing_key_id: String,
    pub signing_not_after: OffsetDateTime,
    pub policy: CsrPolicy,
    pub provider: Arc<dyn CaProvider>,
}

/// Creates the provider for a configuration.
pub type ProviderFactory =
    Arc<dyn Fn(&CaConfig) -> Result<Arc<dyn CaProvider>, ApiError> + Send + Sync>;

/// The default factory: the built-in provider; Vault arrives in a later issue.
pub fn default_provider_factory() -> ProviderFactory {
    Arc::new(|cfg: &CaConfig| match cfg.provider {
        ProviderKind::Consul => Ok(Arc::new(BuiltinProvider::new()) as Arc<dyn CaProvider>),
        ProviderKind::Vault => Err(ApiError::BadRequest(
            "the vault CA provider is not available in this version of meshca".into(),
        )),
    })
}

pub struct CaManager {
    store: Arc<Records>,
    clock: Arc<dyn Clock>,
    datacenter: String,
    factory: ProviderFactory,
    published: ArcSwap<Published>,
    changes: watch::Sender<u64>,
    admin: Mutex<()>,
    /// What the writer holding `admin` is doing, for the 409 message.
    admin_state: std::sync::Mutex<&'static str>,
    issue_index: AtomicU64,
}

/// Held while a writer changes the CA; resets the state name on drop.
struct Writer<'a> {
    _lock: tokio::sync::MutexGuard<'a, ()>,
    state: &'a std::sync::Mutex<&'static str>,
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = "INITIALIZED";
    }
}

/// Crash injection for the rotation crash tests: when `MESHCA_FAILPOINT`
/// names this step, the process aborts here, exactly as a `SIGKILL` would
/// stop it. Unset in production; reading it costs nothing that matters on
/// these rare paths.
fn failpoint(step: &str) {
    if std::env::var("MESHCA_FAILPOINT").is_ok_and(|v| v == step) {
        tracing::error!(step, "failpoint reached: aborting");
        std::process::abort();
    }
}

/// Runs blocking (CPU-heavy or fsync) work off the async runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("worker task failed: {e}")))?
}

impl CaManager {
    /// Loads the CA from the store, or creates it on first start from
    /// `initial` (the agent configuration's `ca_config`).
    pub async fn start(
        store: Arc<Records>,
        clock: Arc<dyn Clock>,
        datacenter: String,
        initial: CaConfig,
        factory: ProviderFactory,
    ) -> Result<Arc<Self>, ApiError> {
        let (s, c, f) = (store.clone(), clock.clone(), factory.clone());
        let (state, provider) = blocking(move || load_or_bootstrap(&s, &*c, initial, &f)).await?;
        let published = publish(&state, provider, &datacenter)?;
        let index = published.index;
        let leaf_base = leaf_index_base(index, clock.now());
        Ok(Arc::new(Self {
            store,
            clock,
            datacenter,
            factory,
            published: ArcSwap::from_pointee(published),
            changes: watch::channel(index).0,
            admin: Mutex::new(()),
            admin_state: std::sync::Mutex::new("INITIALIZED"),
            issue_index: AtomicU64::new(leaf_base),
        }))
    }

    pub fn published(&self) -> Arc<Published> {
        self.published.load_full()
    }

    /// `Ok` while the store's writes succeed; the last write error otherwise.
    pub fn store_health(&self) -> Result<(), ApiError> {
        Ok(self.store.health()?)
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// A receiver that changes whenever the roots or configuration change
    /// (and on [`CaManager::wake_waiters`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Wakes every blocked query so it re-reads the clock. Production never
    /// needs it; tests call it after advancing a manual clock.
    pub fn wake_waiters(&self) {
        self.changes.send_modify(|_| {});
    }

    /// `GET /v1/connect/ca/configuration`.
    pub fn configuration(&self) -> CaConfiguration {
        let p = self.published();
        CaConfiguration {
            cluster_id: p.cluster_id.to_string(),
            provider: p.config.provider.as_str().to_string(),
            config: p.config.to_wire(true),
            state: None,
            force_without_cross_signing: false,
            create_index: p.config_create_index,
            modify_index: p.index,
        }
    }

    /// Takes the writer lock without waiting: a concurrent change is refused
    /// with Consul's `CA is already in state "…"` (409).
    fn begin(&self, what: &'static str) -> Result<Writer<'_>, ApiError> {
        let mut state = self.admin_state.lock().unwrap_or_else(|p| p.into_inner());
        let lock = self
            .admin
            .try_lock()
            .map_err(|_| ApiError::CaBusy(*state))?;
        *state = what;
        Ok(Writer {
            _lock: lock,
            state: &self.admin_state,
        })
    }

    /// `PUT /v1/connect/ca/configuration`: a change that keeps the root key
    /// is committed as is; one that changes it runs a root rotation.
    pub async fn update_configuration(&self, upd: CaConfigurationUpdate) -> Result<(), ApiError> {
        if upd.state.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::ProviderStateReadOnly);
        }
        // Invalid input is a 400 even while another writer runs.
        CaConfig::from_wire(&upd.provider, &upd.config, Some(&self.published().config))?;
        let _writer = self.begin("RECONFIGURING")?;
        let current = self.published();
        let next = CaConfig::from_wire(&upd.provider, &upd.config, Some(&current.config))?;
        if next == current.config {
            return Ok(());
        }
        if current.config.requires_rotation(&next) {
            return self
                .rotate(&current, next, upd.force_without_cross_signing)
                .await;
        }
        let store = self.store.clone();
        let state = blocking(move || {
            let mut state = store
                .load_ca()?
                .ok_or_else(|| ApiError::Unavailable("the CA is not initialised".into()))?;
            let expected = state.modify_index;
            state.config.config = next;
            state.config.modify_index = expected + 1;
            commit(&store, &mut state, expected)?;
            Ok(state)
        })
        .await?;
        let published = publish(&state, current.provider.clone(), &self.datacenter)?;
        tracing::info!(config = %state.config.config, index = published.index, "CA configuration changed");
        self.install(published);
        Ok(())
    }

    /// Root rotation (SPEC §5, ARCHITECTURE.md "A root rotation"): new root
    /// and intermediate from the new provider, cross-signed by the old root,
    /// validated, then committed in one transaction and published.
    async fn rotate(
        &self,
        current: &Arc<Published>,
        next: CaConfig,
        force: bool,
    ) -> Result<(), ApiError> {
        let old = current.provider.clone();
        let cross_sign = old.supports_cross_signing();
        if !cross_sign && !force {
            return Err(ApiError::CrossSigningUnsupported);
        }
        let new = (self.factory)(&next)?;
        let step = RotationStep {
            store: self.store.clone(),
            now: self.clock.now(),
            datacenter: self.datacenter.clone(),
            expected_index: current.index,
            old: cross_sign.then(|| old.clone()),
            new: new.clone(),
        };
        let (from, to) = (describe_root(&current.config), describe_root(&next));
        let state = blocking(move || step.run(next)).await?;
        let published = publish(&state, new, &self.datacenter)?;
        tracing::info!(%from, %to, active_root = %published.active_root_id,
            cross_signed = cross_sign, index = published.index, "root rotated");
        self.install(published);
        if let Err(e) = old.cleanup() {
            tracing::warn!(error = %e, "the old CA provider did not clean up");
        }
        Ok(())
    }

    /// One round of upkeep: prune rotated-out roots and expired chain
    /// entries, renew the signing intermediate at half-life. Skipped (not
    /// queued) while another writer is active. Returns whether it changed
    /// anything.
    pub async fn maintain(&self) -> Result<bool, ApiError> {
        // Decide on the published snapshot first, so that the writer lock
        // (and a 409 for API writers) is taken only when there is work.
        if !self.maintenance_due(&self.published(), self.clock.now()) {
            return Ok(false);
        }
        let Ok(_writer) = self.begin("RENEWING") else {
            return Ok(false);
        };
        let current = self.published();
        let now = self.clock.now();
        if self.scheduled_rotation_due(&current, now) {
            tracing::info!(root = %current.active_root_id, period = %current.config.root_rotation_period,
                "scheduled root rotation");
            self.rotate(&current, current.config.clone(), false).await?;
            return Ok(true);
        }
        let (store, provider) = (self.store.clone(), current.provider.clone());
        let Some(state) = blocking(move || maintain_blocking(&store, &*provider, now)).await?
        else {
            return Ok(false);
        };
        let published = publish(&state, current.provider.clone(), &self.datacenter)?;
        tracing::info!(index = published.index, signing_key_id = %published.signing_key_id, "CA maintenance committed");
        self.install(published);
        Ok(true)
    }

    fn maintenance_due(&self, p: &Published, now: OffsetDateTime) -> bool {
        let mut roots = p.roots.clone();
        self.scheduled_rotation_due(p, now)
            || signing_renewal_due(&p.roots, now)
            || prune_roots(&mut roots, p.config.leaf_cert_ttl, now)
    }

    fn scheduled_rotation_due(&self, p: &Published, now: OffsetDateTime) -> bool {
        let period = p.config.root_rotation_period;
        p.provider.supports_cross_signing()
            && p.roots
                .iter()
                .find(|r| r.active)
                .is_some_and(|r| scheduled_rotation_due(r.not_before, period, now))
    }

    /// Runs [`CaManager::maintain`] now, then every `period` and whenever the
    /// CA changes or waiters are woken (tests advance a manual clock and wake).
    pub fn spawn_maintenance(
        self: &Arc<Self>,
        period: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let ca = self.clone();
        tokio::spawn(async move {
            let mut changes = ca.subscribe();
            loop {
                if let Err(e) = ca.maintain().await {
                    tracing::error!(error = %e, "CA maintenance failed; retrying later");
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    r = changes.changed() => if r.is_err() { return },
                }
            }
        })
    }

    fn install(&self, published: Published) {
        let index = published.index;
        self.published.store(Arc::new(published));
        self.changes.send_replace(index);
    }

    /// Validates a CSR and signs it (CPU-bound: call from a blocking task).
    pub fn sign_csr(&self, csr_pem: &str) -> Result<IssuedCert, ApiError> {
        let p = self.published();
        let csr = validate_csr(csr_pem, &p.policy)?;
        self.issue(&p, csr)
    }

    /// Issues a leaf for `service` with a fresh server-side P-256 key
    /// (the agent leaf endpoint). CPU-bound.
    pub fn issue_service_leaf(&self, service: &str) -> Result<IssuedCert, ApiError> {
        let p = self.published();
        let id = SpiffeId::service(&p.trust_domain, "default", &self.datacenter, service)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let csr = ValidatedCsr {
            spiffe_id: id,
            spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
            key_type: CsrKeyType::EcP256,
            dns_sans: vec![],
            ip_sans: vec![],
        };
        let mut issued = self.issue(&p, csr)?;
        issued.private_key_pem = Some(key.serialize_pem());
        Ok(issued)
    }

    fn issue(&self, p: &Published, csr: ValidatedCsr) -> Result<IssuedCert, ApiError> {
        let now = self.clock.now();
        let (not_before, not_after) =
            leaf_validity(now, p.config.leaf_cert_ttl, p.signing_not_after);
        if not_after <= now {
            return Err(ApiError::Unavailable(
                "the signing certificate has expired".into(),
            ));
        }
        let serial = meshca_provider::profile::leaf_serial()?;
        let leaf_pem = p.provider.sign_leaf(&LeafRequest {
            csr: csr.clone(),
            not_before,
            not_after,
            serial: serial.clone(),
        })?;
        let index = self.issue_index.fetch_add(1, Ordering::Relaxed) + 1;
        let id = csr.spiffe_id.to_string();
        let serial_hex = colon_hex(&serial);
        tracing::info!(target: "audit", serial = %serial_hex, spiffe_id = %id,
            valid_after = %not_before, valid_before = %not_after, "issued certificate");
        let mut issued = IssuedCert {
            serial_number: serial_hex,
            cert_pem: format!("{leaf_pem}{}", p.chain_suffix),
            private_key_pem: None,
            service: None,
            service_uri: None,
            agent: None,
            agent_uri: None,
            server_uri: None,
            kind: None,
            kind_uri: None,
            valid_after: not_before,
            valid_before: not_after,
            create_index: index,
            modify_index: index,
        };
        match &csr.spiffe_id {
            SpiffeId::Service { service, .. } => {
                issued.service = Some(service.clone());
                issued.service_uri = Some(id);
            }
            SpiffeId::Agent { node, .. } => {
                issued.agent = Some(node.clone());
                issued.agent_uri = Some(id);
            }
            SpiffeId::Server { .. } => issued.server_uri = Some(id),
            SpiffeId::MeshGateway { .. } => {
                issued.kind = Some("mesh-gateway".into());
                issued.kind_uri = Some(id);
            }
        }
        Ok(issued)
    }

    pub fn factory(&self) -> &ProviderFactory {
        &self.factory
    }
}

/// The blocking part of a rotation, with the crash-injection points the
/// crash tests use. Nothing is written before the single commit.
struct RotationStep {
    store: Arc<Records>,
    now: OffsetDateTime,
    datacenter: String,
    expected_index: u64,
    /// The old provider, when it cross-signs.
    old: Option<Arc<dyn CaProvider>>,
    new: Arc<dyn CaProvider>,
}

impl RotationStep {
    fn run(self, next: CaConfig) -> Result<CaState, ApiError> {
        let mut state = self
            .store
            .load_ca()?
            .ok_or_else(|| ApiError::Unavailable("the CA is not initialised".into()))?;
        if state.modify_index != self.expected_index {
            return Err(ApiError::CaBusy("RECONFIGURING"));
        }
        let old_root = state
            .active_root()
            .cloned()
            .ok_or_else(|| ApiError::Internal("stored CA has no active root".into()))?;
        let req = CaRequest {
            cluster_id: state.cluster_id,
            trust_domain: state.trust_domain(),
            config: next.clone(),
            now: self.now,
        };
        let material = self.new.generate_ca(&req)?;
        failpoint("rotation-generated");
        let new_id = cert_id(&first_der(&material.root_pem)?);
        if state.roots.iter().any(|r| r.id == new_id) {
            return Err(ApiError::BadRequest(
                "the new root is already in the trust bundle; supply a different root".into(),
            ));
        }
        // An expired old root vouches for nobody (recovery from an expired
        // CA): a cross-signature by it would be born dead.
        let old_root_alive = old_root.not_after > self.now + time::Duration::minutes(1);
        if self.old.is_some() && !old_root_alive {
            tracing::warn!(root = %old_root.id, "the old root has expired; rotating without cross-signing");
        }
        let cross_signed = match self.old.as_ref().filter(|_| old_root_alive) {
            Some(old) => {
                let not_after = cross_sign_not_after(
                    self.now,
                    state.config.config.leaf_cert_ttl,
                    next.leaf_cert_ttl,
                    old_root.not_after,
                );
                Some(old.cross_sign_ca(&material.root_pem, not_after, self.now)?)
            }
            None => None,
        };
        failpoint("rotation-cross-signed");
        self.check(&req, &material, cross_signed.as_deref(), &old_root)?;
        let index = self.expected_index + 1;
        for r in state.roots.iter_mut().filter(|r| r.active) {
            r.active = false;
            r.rotated_out_at = Some(self.now);
            r.modify_index = index;
        }
        let mut root = root_record(&material, &state.cluster_id, index)?;
        if let Some(x) = cross_signed {
            root.intermediate_certs.insert(0, x);
        }
        state.roots.push(root);
        state.config.config = next;
        state.config.modify_index = index;
        state.private_keys = material.private_keys;
        state.provider_state = material.provider_state;
        failpoint("rotation-before-commit");
        commit(&self.store, &mut state, self.expected_index)?;
        failpoint("rotation-committed");
        Ok(state)
    }

    /// Validate before publishing: a probe leaf from the new CA must verify
    /// against the new root (the provider's own check), and — through the
    /// cross-signed certificate — against the old root alone.
    fn check(
        &self,
        req: &CaRequest,
        material: &CaMaterial,
        cross_signed: Option<&str>,
        old_root: &CaRoot,
    ) -> Result<(), ApiError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let id = SpiffeId::service(
            &req.trust_domain,
            "default",
            &self.datacenter,
            "meshca-rotation-probe",
        )
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        let signing = cert_facts(&first_der(&material.signing_pem)?).map_err(ApiError::Internal)?;
        let (not_before, not_after) =
            leaf_validity(self.now, req.config.leaf_cert_ttl, signing.not_after);
        let leaf = self.new.sign_leaf(&LeafRequest {
            csr: ValidatedCsr {
                spiffe_id: id,
                spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
                key_type: CsrKeyType::EcP256,
                dns_sans: vec![],
                ip_sans: vec![],
            },
            not_before,
            not_after,
            serial: meshca_provider::profile::leaf_serial()?,
        })?;
        let Some(x) = cross_signed else {
            return Ok(());
        };
        let chain = [first_der(x)?, first_der(&material.signing_pem)?];
        meshca_provider::verify::verify_chain(
            &first_der(&leaf)?,
            &chain,
            &[first_der(&old_root.root_cert)?],
            self.now,
        )
        .map_err(|e| {
            ApiError::Internal(format!(
                "cross-signed chain does not verify against the old root: {e}"
            ))
        })
    }
}

/// Prunes and renews as due; `None` when nothing needed doing.
fn maintain_blocking(
    store: &Records,
    provider: &dyn CaProvider,
    now: OffsetDateTime,
) -> Result<Option<CaState>, ApiError> {
    let Some(mut state) = store.load_ca()? else {
        return Ok(None);
    };
    let expected = state.modify_index;
    let index = expected + 1;
    let pruned = prune(&mut state, now);
    let renewed = renew_if_due(&mut state, provider, now, index)?;
    if !pruned && renewed.is_none() {
        return Ok(None);
    }
    if let Some(r) = state.roots.iter_mut().find(|r| r.active) {
        r.modify_index = index;
    }
    commit(store, &mut state, expected)?;
    if let Some(material) = renewed {
        provider.restore(&material)?;
    }
    Ok(Some(state))
}

/// Renews the active signing intermediate at half-life, unless it already
/// reaches the root's NotAfter (a new one could not live longer).
fn renew_if_due(
    state: &mut CaState,
    provider: &dyn CaProvider,
    now: OffsetDateTime,
    index: u64,
) -> Result<Option<CaMaterial>, ApiError> {
    let cluster_id = state.cluster_id;
    let trust_domain = state.trust_domain();
    let config = state.config.config.clone();
    let Some(root) = state.roots.iter_mut().find(|r| r.active) else {
        return Ok(None);
    };
    if !signing_renewal_due(std::slice::from_ref(root), now) {
        return Ok(None);
    }
    let material = provider.renew_intermediate(&CaRequest {
        cluster_id,
        trust_domain,
        config,
        now,
    })?;
    let signing = cert_facts(&first_der(&material.signing_pem)?).map_err(ApiError::Internal)?;
    if let Some(last) = root.intermediate_certs.last_mut() {
        *last = material.signing_pem.clone();
    }
    root.signing_key_id = colon_hex(&signing.subject_key_id.unwrap_or_default());
    root.modify_index = index;
    state.private_keys = material.private_keys.clone();
    Ok(Some(material))
}

/// Where leaf indexes start in this run: above the store index and above
/// any index an earlier run gave out (milliseconds since the epoch grow
/// faster than issuance), so a blocked client holding an index from before a
/// restart never mistakes a new leaf for its own.
fn leaf_index_base(store_index: u64, now: OffsetDateTime) -> u64 {
    let millis = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    store_index.max(millis)
}

fn describe_root(c: &CaConfig) -> String {
    if c.private_key.is_some() {
        return format!("{} with a supplied root", c.provider.as_str());
    }
    format!("{} {}", c.provider.as_str(), c.key_spec)
}

/// Commits `state` at `expected + 1`, which is the index the records in it
/// were stamped with.
fn commit(store: &Records, state: &mut CaState, expected: u64) -> Result<(), ApiError> {
    let index = store.commit_ca(state, expected)?;
    if index != expected + 1 {
        return Err(ApiError::Internal(format!(
            "store committed at index {index}, expected {}",
            expected + 1
        )));
    }
    state.modify_index = index;
    Ok(())
}

fn load_or_bootstrap(
    store: &Records,
    clock: &dyn Clock,
    initial: CaConfig,
    factory: &ProviderFactory,
) -> Result<(CaState, Arc<dyn CaProvider>), ApiError> {
    if let Some(state) = store.load_ca()? {
        let provider = factory(&state.config.config)?;
        provider.restore(&material_of(&state)?)?;
        tracing::info!(cluster_id = %state.cluster_id, index = state.modify_index, "CA restored from the store");
        return Ok((state, provider));
    }
    let expected = store.index()?;
    let index = expected + 1;
    let cluster_id = Uuid::new_v4();
    let provider = factory(&initial)?;
    let req = CaRequest {
        cluster_id,
        trust_domain: TrustDomain::for_cluster(&cluster_id),
        config: initial.clone(),
        now: clock.now(),
    };
    let material = provider.generate_ca(&req)?;
    let root = root_record(&material, &cluster_id, index)?;
    let mut state = CaState {
        cluster_id,
        config: StoredConfig {
            config: initial,
            create_index: index,
            modify_index: index,
        },
        roots: vec![root],
        provider_state: material.provider_state,
        private_keys: material.private_keys,
        modify_index: index,
    };
    commit(store, &mut state, expected)?;
    tracing::info!(%cluster_id, "CA initialised with a new root");
    Ok((state, provider))
}

/// The provider material of the active root, for restoring after a restart.
fn material_of(state: &CaState) -> Result<CaMaterial, ApiError> {
    let root = state
        .active_root()
        .ok_or_else(|| ApiError::Internal("stored CA has no active root".into()))?;
    let signing_pem = root
        .intermediate_certs
        .last()
        .cloned()
        .ok_or_else(|| ApiError::Internal("active root has no signing certificate".into()))?;
    let key_spec = KeySpec::from_type_and_bits(&root.private_key_type, root.private_key_bits)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(CaMaterial {
        root_pem: root.root_cert.clone(),
        signing_pem,
        key_spec,
        private_keys: state.private_keys.clone(),
        provider_state: state.provider_state.clone(),
    })
}

fn first_der(pem: &str) -> Result<Vec<u8>, ApiError> {
    decode_pem_blocks(pem, "CERTIFICATE")
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal("empty certificate".into()))
}

/// The `CARoot` record of freshly generated material.
fn root_record(m: &CaMaterial, cluster_id: &Uuid, index: u64) -> Result<CaRoot, ApiError> {
    let root_der = first_der(&m.root_pem)?;
    let root = cert_facts(&root_der).map_err(ApiError::Internal)?;
    let signing = cert_facts(&first_der(&m.signing_pem)?).map_err(ApiError::Internal)?;
    Ok(CaRoot {
        id: cert_id(&root_der),
        name: ROOT_NAME.to_string(),
        serial_number: serial_u64(&root.serial),
        signing_key_id: colon_hex(&signing.subject_key_id.unwrap_or_default()),
        external_trust_domain: cluster_id.to_string(),
        not_before: root.not_before,
        not_after: root.not_after,
        root_cert: m.root_pem.clone(),
        intermediate_certs: vec![m.signing_pem.clone()],
        active: true,
        rotated_out_at: None,
        private_key_type: m.key_spec.key_type().to_string(),
        private_key_bits: m.key_spec.bits(),
        create_index: index,
        modify_index: index,
    })
}

/// Builds the read-side snapshot: the roots answer (JSON and PEM) is
/// serialised here, once per change, not per request.
fn publish(
    state: &CaState,
    provider: Arc<dyn CaProvider>,
    datacenter: &str,
) -> Result<Published, ApiError> {
    let active = state
        .active_root()
        .ok_or_else(|| ApiError::Internal("stored CA has no active root".into()))?;
    let signing_pem = active
        .intermediate_certs
        .last()
        .ok_or_else(|| ApiError::Internal("active root has no signing certificate".into()))?;
    let signing = cert_facts(&first_der(signing_pem)?).map_err(ApiError::Internal)?;
    let trust_domain = state.trust_domain();
    let roots_wire = IndexedCaRoots {
        active_root_id: active.id.clone(),
        trust_domain: trust_domain.to_string(),
        roots: state.roots.iter().map(CaRootWire::from).collect(),
    };
    let roots_json =
        serde_json::to_vec(&roots_wire).map_err(|e| ApiError::Internal(e.to_string()))?;
    let roots_pem: String = state
        .roots
        .iter()
        .flat_map(|r| std::iter::once(&r.root_cert).chain(r.intermediate_certs.iter()))
        .map(|pem| ensure_newline(pem))
        .collect();
    Ok(Published {
        index: state.modify_index,
        cluster_id: state.cluster_id,
        trust_domain: trust_domain.clone(),
        config: state.config.config.clone(),
        config_create_index: state.config.create_index,
        roots: state.roots.clone(),
        roots_json: Bytes::from(roots_json),
        roots_pem: Bytes::from(roots_pem),
        active_root_id: active.id.clone(),
        chain_suffix: active
            .intermediate_certs
            .iter()
            .map(|p| ensure_newline(p))
            .collect(),
        signing_key_id: active.signing_key_id.clone(),
        signing_not_after: signing.not_after,
        policy: CsrPolicy::new(trust_domain, datacenter),
        provider,
    })
}

fn ensure_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_string()
    } else {
        format!("{pem}\n")
    }
}
