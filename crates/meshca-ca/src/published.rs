//! [`Published`]: everything a request needs, prepared once per CA change
//! and replaced whole by one atomic swap. Nothing inside is ever mutated, so
//! a request that loaded one `Published` signs with its signer, ships its
//! chain and reports its SigningKeyID — all from the same CA.

use crate::CaError;
use bytes::Bytes;
use meshca_core::csr::CsrPolicy;
use meshca_core::rotation::active_material;
use meshca_core::state::{CaRoot, CaState};
use meshca_core::{CaConfig, TrustDomain};
use meshca_provider::{CaKeys, CaProvider, Signer};
use std::sync::Arc;
use uuid::Uuid;

/// The published CA: roots, active signer, configuration and index.
pub struct Published {
    /// The store index the state was committed at (`X-Consul-Index`).
    pub index: u64,
    pub cluster_id: Uuid,
    pub trust_domain: TrustDomain,
    pub config: CaConfig,
    pub config_create_index: u64,
    pub roots: Vec<CaRoot>,
    /// Every root followed by its intermediates, as one PEM bundle.
    pub roots_pem: Bytes,
    pub active_root_id: String,
    /// The active signer: keys, signing certificate, chain, NotAfter.
    pub signer: Arc<Signer>,
    pub provider: Arc<dyn CaProvider>,
    /// What a CSR may ask for in this trust domain and datacenter.
    pub policy: CsrPolicy,
    /// The committed state this was built from (the next change starts here).
    pub(crate) state: Arc<CaState>,
}

impl Published {
    /// Builds the snapshot of `state`, whose active root's keys are `keys`.
    pub(crate) fn build(
        state: CaState,
        provider: Arc<dyn CaProvider>,
        keys: Arc<dyn CaKeys>,
        datacenter: &str,
    ) -> Result<Self, CaError> {
        let active = state
            .active_root()
            .ok_or_else(|| CaError::internal("the CA has no active root"))?;
        let signer = Signer::new(keys, &active.root_cert, &active.intermediate_certs)?;
        let trust_domain = state.trust_domain();
        let roots_pem: String = state
            .roots
            .iter()
            .flat_map(|r| std::iter::once(&r.root_cert).chain(r.intermediate_certs.iter()))
            .map(|pem| with_newline(pem))
            .collect();
        Ok(Self {
            index: state.modify_index,
            cluster_id: state.cluster_id,
            trust_domain: trust_domain.clone(),
            config: state.config.config.clone(),
            config_create_index: state.config.create_index,
            roots: state.roots.clone(),
            roots_pem: Bytes::from(roots_pem),
            active_root_id: active.id.clone(),
            signer: Arc::new(signer),
            provider,
            policy: CsrPolicy::new(trust_domain, datacenter),
            state: Arc::new(state),
        })
    }

    /// Builds the snapshot of a stored state, opening its active keys with
    /// `provider` (after a restart, or when the store moved ahead of us).
    pub(crate) async fn open(
        state: CaState,
        provider: Arc<dyn CaProvider>,
        datacenter: &str,
    ) -> Result<Self, CaError> {
        let keys = crate::provider_call(provider.open(&active_material(&state)?)).await?;
        Self::build(state, provider, keys, datacenter)
    }

    /// The committed state this snapshot was built from.
    pub fn state(&self) -> &CaState {
        &self.state
    }
}

fn with_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_string()
    } else {
        format!("{pem}\n")
    }
}
