//! Backups: the whole store as a [`Snapshot`], and restoring one into the
//! running server. A restore is checked before anything is written — the
//! snapshot's data keys must open under this server's store key, its
//! schema be this one's, its CA be of this datacenter and role, and that
//! CA's keys open with its provider — then the store is replaced in one
//! step and the restored CA published with one swap.

use crate::{boot, provider_call, CaEngine, CaError};
use meshca_core::rotation::active_material;
use meshca_store::{Snapshot, StoreError};
use std::sync::Arc;

impl CaEngine {
    /// A consistent copy of the whole store.
    pub async fn snapshot(&self) -> Result<Snapshot, CaError> {
        self.store.snapshot().await
    }

    /// Replaces the whole store with `snapshot` and publishes its CA, or
    /// refuses and changes nothing. Returns the store's new index. The
    /// caller reloads what else it keeps from the store (the ACL table).
    pub async fn restore_snapshot(&self, snapshot: Snapshot) -> Result<u64, CaError> {
        let _writer = self.writer.begin("RESTORING")?;
        let snapshot = Arc::new(snapshot);
        let contents = self
            .store
            .open_snapshot(snapshot.clone())
            .await
            .map_err(unusable)?;
        let ours = self.store.schema_version().await?;
        if contents.schema_version != ours {
            return Err(refused(format!(
                "it is of store schema {}, this server's store is of schema {ours}: restore \
                 snapshots into a server of the meshca version that took them",
                contents.schema_version
            )));
        }
        if let Some(dc) = contents.datacenter.filter(|dc| *dc != self.datacenter) {
            return Err(refused(format!(
                "it holds the CA of datacenter {dc:?}, this server is datacenter {:?}",
                self.datacenter
            )));
        }
        let state = contents
            .ca
            .ok_or_else(|| refused("it holds no CA".to_string()))?;
        let primary = self.primary_link().map(|l| l.primary_datacenter);
        boot::check_role(&state, primary.as_deref()).map_err(|e| refused(e.to_string()))?;
        // The keys must open before the store is replaced.
        let provider = (self.factory)(&state.config.config)?;
        provider_call(provider.open(&active_material(&state)?))
            .await
            .map_err(|e| refused(format!("its CA keys do not open: {e}")))?;
        let index = self.store.restore(snapshot).await?;
        let restored = self.refresh().await?;
        tracing::info!(index, active_root = %restored.active_root_id, "snapshot restored");
        Ok(index)
    }
}

fn refused(why: String) -> CaError {
    CaError::Rejected(format!("snapshot refused: {why}"))
}

/// A snapshot whose records do not open here: another store's key, or
/// damaged records.
fn unusable(e: CaError) -> CaError {
    match e {
        CaError::Store(StoreError::WrongKey(_)) => refused(
            "its data keys do not open under this server's store key (it comes from another \
             store)"
                .into(),
        ),
        CaError::Store(e @ StoreError::Corrupt(_)) => refused(e.to_string()),
        other => other,
    }
}
