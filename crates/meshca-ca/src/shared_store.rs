//! A store shared by several servers (etcd): what another server commits
//! to the CA records is published here too, so every server serves the
//! same roots and signs with the active signing key.

use crate::CaEngine;
use std::sync::Arc;
use std::time::Duration;

/// Pause before trying again when this server's own writer holds the CA
/// (it publishes its own commit, or meets the other server's as a
/// conflict and publishes that).
const WRITER_BUSY_PAUSE: Duration = Duration::from_millis(50);
/// Pause before trying again after the store could not be read.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

impl CaEngine {
    /// Follows the CA records in the store: a commit this server did not
    /// publish (another server's) is loaded and published. Ends when the
    /// engine is dropped.
    pub fn spawn_store_follower(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let mut changes = self.store.watch_ca();
        tokio::spawn(async move {
            loop {
                if changes.changed().await.is_err() {
                    return;
                }
                let committed = *changes.borrow_and_update();
                let Some(ca) = weak.upgrade() else { return };
                ca.catch_up_to(committed).await;
            }
        })
    }

    /// Publishes the stored CA until the published index reaches
    /// `committed` (a commit this server saw in the store).
    async fn catch_up_to(&self, committed: u64) {
        while self.published().index < committed {
            let Ok(_writer) = self.writer.begin("FOLLOWING_STORE") else {
                tokio::time::sleep(WRITER_BUSY_PAUSE).await;
                continue;
            };
            match self.publish_stored().await {
                Ok(Some(index)) => {
                    let p = self.published();
                    tracing::info!(index, active_root = %p.active_root_id,
                        signing_key_id = %p.signer.signing_key_id(),
                        "published the CA another server committed");
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "could not load the CA another server committed; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}
