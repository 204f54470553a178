//! The engine's side of the store: load and commit the CA records off the
//! async runtime, and remember whether the last write failed (for health).

use crate::{blocking, CaError};
use meshca_core::state::CaState;
use meshca_store::Records;
use std::sync::{Arc, Mutex};

pub(crate) struct Persistence {
    store: Arc<Records>,
    /// The error of the last failed commit, until a commit succeeds.
    last_write_error: Mutex<Option<String>>,
}

impl Persistence {
    pub(crate) fn new(store: Arc<Records>) -> Self {
        Self {
            store,
            last_write_error: Mutex::new(None),
        }
    }

    pub(crate) async fn load(&self) -> Result<Option<CaState>, CaError> {
        let store = self.store.clone();
        blocking(move || Ok(store.load_ca()?)).await
    }

    /// The store as a whole (sealed records stay sealed).
    pub(crate) async fn snapshot(&self) -> Result<meshca_store::Snapshot, CaError> {
        let store = self.store.clone();
        blocking(move || Ok(store.snapshot()?)).await
    }

    /// What a snapshot holds, opened under this store's key; writes nothing.
    pub(crate) async fn open_snapshot(
        &self,
        snapshot: Arc<meshca_store::Snapshot>,
    ) -> Result<meshca_store::SnapshotContents, CaError> {
        let store = self.store.clone();
        blocking(move || Ok(store.open_snapshot(&snapshot)?)).await
    }

    pub(crate) async fn schema_version(&self) -> Result<u64, CaError> {
        let store = self.store.clone();
        blocking(move || Ok(store.schema_version()?)).await
    }

    /// Replaces the whole store with `snapshot`; the new index.
    pub(crate) async fn restore(
        &self,
        snapshot: Arc<meshca_store::Snapshot>,
    ) -> Result<u64, CaError> {
        let store = self.store.clone();
        blocking(move || Ok(store.restore(&snapshot)?)).await
    }

    pub(crate) async fn index(&self) -> Result<u64, CaError> {
        let store = self.store.clone();
        blocking(move || Ok(store.index()?)).await
    }

    /// Adds a data key and re-seals the CA's secrets with it when the
    /// newest is a rotation period old (see `Records::rotate_data_key_if_due`).
    pub(crate) async fn rotate_data_key_if_due(&self) -> Result<bool, CaError> {
        let store = self.store.clone();
        blocking(move || Ok(store.rotate_data_key_if_due()?)).await
    }

    /// Commits `state`, stamped for `expected + 1`, guarded by `expected`.
    pub(crate) async fn commit(&self, state: &CaState, expected: u64) -> Result<(), CaError> {
        let (store, owned) = (self.store.clone(), state.clone());
        let result = blocking(move || Ok(store.commit_ca(&owned, expected)?)).await;
        let mut last = self
            .last_write_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(index) if index == expected + 1 => {
                *last = None;
                Ok(())
            }
            Ok(index) => Err(CaError::Internal(format!(
                "the store committed at index {index}, expected {}",
                expected + 1
            ))),
            Err(e) => {
                if matches!(e, CaError::Store(_)) {
                    *last = Some(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// `Err` with the last write error while the store cannot write.
    /// Changes with the index of each commit that writes a CA record,
    /// this server's or, with a shared store, another's.
    pub(crate) fn watch_ca(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.watch_ca()
    }

    pub(crate) fn health(&self) -> Result<(), String> {
        match &*self
            .last_write_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}
