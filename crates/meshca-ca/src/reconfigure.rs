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
        if current.config.requires_rotation(&next) {
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
