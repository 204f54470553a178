//! The `vault` CA provider: the root and the signing intermediate are keys
//! of Vault's PKI secrets engine (or OpenBao's, which speaks the same API)
//! and never leave it. meshca asks Vault to sign and checks every
//! certificate Vault returns before using it.
//!
//! Layout in Vault, for `RootPKIPath = R` and `IntermediatePKIPath = I`:
//!
//! - `R` holds the root as an *issuer*. Each new CA is a new issuer (named
//!   `meshca-root-…`), so a staged CA never disturbs the active one. A root
//!   an operator created there (the mount's default issuer, under another
//!   name) is used as it is.
//! - `I` holds the signing intermediates, one issuer each, signed by the
//!   root issuer; leaves are signed through
//!   `I/issuer/<id>/sign/meshca-leaf`, so each opened CA signs with exactly
//!   its own intermediate.
//! - The CA's `provider_state` records the mounts and issuer IDs; no key
//!   material is stored by meshca.
//!
//! Cross-signing another CA's root uses `R/issuer/<id>/sign-self-issued`
//! with a template meshca builds (same subject, key, SKID, SANs; the
//! validity the engine asks for), so Vault cross-signs roots of any key
//! type for exactly as long as the rotation needs.

mod client;
mod pki;

use async_trait::async_trait;
use meshca_core::config::VaultConfig;
use meshca_core::{CaConfig, ProviderKind};
use meshca_provider::{
    CaKeys, CaMaterial, CaProvider, CaRequest, IntermediateRequest, LeafRequest, ProviderError,
    SignedLeaf, StagedIntermediate,
};
use std::sync::Arc;
use time::OffsetDateTime;

pub use client::VaultClient;
use pki::{Mounts, State};

/// The Vault CA provider for one configuration.
#[derive(Debug)]
pub struct VaultProvider {
    mounts: Arc<Mounts>,
    /// Keeps the token alive while this provider is in use.
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for VaultProvider {
    fn drop(&mut self) {
        // A reconfiguration replaces the provider: its token is not ours to
        // keep alive any more.
        if let Some(renewer) = &self.renewer {
            renewer.abort();
        }
    }
}

impl VaultProvider {
    /// A provider for `config` (which must be a `vault` configuration).
    /// Checks the settings and reads the TLS files; contacts Vault only when
    /// asked to do something.
    pub fn new(config: &CaConfig) -> Result<Self, ProviderError> {
        let vault = vault_settings(config)?;
        let client = Arc::new(VaultClient::new(vault)?);
        let renewer = client.spawn_renewer();
        Ok(Self {
            mounts: Arc::new(Mounts::new(client, vault)),
            renewer,
        })
    }
}

fn vault_settings(config: &CaConfig) -> Result<&VaultConfig, ProviderError> {
    match (config.provider(), config.vault()) {
        (ProviderKind::Vault, Some(v)) => Ok(v),
        _ => Err(ProviderError::InvalidInput(
            "the vault provider needs a vault configuration".into(),
        )),
    }
}

#[async_trait]
impl CaProvider for VaultProvider {
    fn supports_cross_signing(&self) -> bool {
        true
    }

    async fn generate_ca(&self, req: &CaRequest) -> Result<CaMaterial, ProviderError> {
        self.mounts.generate_ca(req).await
    }

    /// A secondary datacenter's intermediate in Vault needs an intermediate
    /// mount whose CSR the primary signs: not built yet. A secondary uses
    /// the built-in provider (the primary may use Vault).
    async fn stage_intermediate(
        &self,
        _req: &CaRequest,
    ) -> Result<StagedIntermediate, ProviderError> {
        Err(ProviderError::Unsupported {
            provider: "vault",
            operation: "secondary datacenters (use the consul provider in a secondary)",
        })
    }

    async fn open(&self, material: &CaMaterial) -> Result<Arc<dyn CaKeys>, ProviderError> {
        let state = State::from_material(material)?;
        self.mounts.check_material(&state, material).await?;
        Ok(Arc::new(VaultKeys {
            mounts: self.mounts.clone(),
            state,
        }))
    }

    async fn cleanup(&self, successor: &CaConfig) -> Result<(), ProviderError> {
        self.mounts.cleanup(successor.vault()).await
    }
}

/// One CA's keys in Vault: its root issuer and its signing intermediate.
struct VaultKeys {
    mounts: Arc<Mounts>,
    state: State,
}

#[async_trait]
impl CaKeys for VaultKeys {
    async fn sign_leaf(&self, req: &LeafRequest) -> Result<SignedLeaf, ProviderError> {
        self.mounts.sign_leaf(&self.state, req).await
    }

    async fn cross_sign_ca(
        &self,
        cert_pem: &str,
        not_after: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<String, ProviderError> {
        self.mounts
            .cross_sign(&self.state, cert_pem, not_after, now)
            .await
    }

    async fn renew_intermediate(&self, req: &CaRequest) -> Result<CaMaterial, ProviderError> {
        self.mounts.renew_intermediate(&self.state, req).await
    }

    async fn sign_intermediate(&self, req: &IntermediateRequest) -> Result<String, ProviderError> {
        self.mounts.sign_intermediate(&self.state, req).await
    }
}
