//! `PUT /v1/connect/ca/configuration`: a change that keeps the root key is
//! committed as is; one that changes it runs a root rotation.

use crate::{CaEngine, CaError};
use meshca_core::rotation;
use meshca_core::CaConfig;
use serde_json::{Map, Value};

/// A requested configuration change, as the API received it.
#[derive(Debug, Clone, Default)]
pub struct ConfigChange {
    /// `consul` or `vault`.
    pub provider: String,
    pub config: Map<String, Value>,
    /// Must be absent or empty: provider state is read-only.
    pub state: Option<Map<String, Value>>,
    /// Skip cross-signing (the escape hatch when the old root key must not
    /// vouch for the new one).
    pub force_without_cross_signing: bool,
}

/// What a secondary datacenter's configuration cannot ask for: its root is
/// the primary's.
fn check_secondary_change(next: &CaConfig, change: &ConfigChange) -> Result<(), CaError> {
    if next.private_key().is_some() || next.root_cert().is_some() {
        return Err(CaError::Rejected(
            "a secondary datacenter's root is the primary's: RootCert and PrivateKey cannot be \
             set here (change them in the primary datacenter)"
                .into(),
        ));
    }
    if change.force_without_cross_signing {
        return Err(CaError::Rejected(
            "ForceWithoutCrossSigning does not apply in a secondary datacenter: it has no root \
             to rotate (a key change gets a new intermediate from the primary)"
                .into(),
        ));
    }
    Ok(())
}

impl CaEngine {
    pub async fn change_config(&self, change: ConfigChange) -> Result<(), CaError> {
        if change.state.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(CaError::ProviderStateReadOnly);
        }
        // Invalid input is a 400 even while another writer runs.
        CaConfig::from_wire(
            &change.provider,
            &change.config,
            Some(&self.published().config),
        )?;
        let _writer = self.writer.begin("RECONFIGURING")?;
        let current = self.refresh().await?;
        let next = CaConfig::from_wire(&change.provider, &change.config, Some(&current.config))?;
        if next == current.config {
            return Ok(());
        }
        if self.is_secondary() {
            check_secondary_change(&next, &change)?;
            if current.config.requires_rotation(&next) {
                return self.reconfigure_secondary(&current, next).await;
            }
        } else if current.config.requires_rotation(&next) {
            return self
                .rotate(&current, next, change.force_without_cross_signing)
                .await;
        }
        let expected = current.index;
        let state = rotation::update_config(current.state(), next, expected + 1);
        let published = self.rebuild(&current, state)?;
        self.store.commit(published.state(), expected).await?;
        tracing::info!(config = %published.config, index = published.index, "CA configuration changed");
        self.install(published);
        Ok(())
    }
}
