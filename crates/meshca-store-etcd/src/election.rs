//! Leader election from a lease, a transaction and a watch (etcd's own
//! election API can hang for seconds while etcd elects its own leader).
//!
//! A candidate grants itself a lease and, in one transaction, puts its
//! name at the leader key under that lease if the key is absent. The
//! winner keeps the lease alive and leads until a keepalive fails to come
//! back before the lease would expire; it steps down at that moment, which
//! is no later than etcd can expire the lease and let another server win.
//! A loser watches the key and tries again when it is deleted (its holder
//! resigned or its lease expired), and at least once per lease period.

use crate::Shared;
use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use meshca_store::Leadership;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The leader key under the store's prefix. Its namespace starts with `_`,
/// which no record key may, so it is never taken for a record.
pub(crate) const LEADER_KEY: &str = "_election/leader";

/// Pause before campaigning again after etcd could not be reached.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Campaigns as `me` for as long as the store's runtime runs, telling
/// `leadership` every change.
pub(crate) async fn campaign(
    shared: Arc<Shared>,
    me: String,
    ttl: Duration,
    leadership: watch::Sender<Leadership>,
) {
    let key = shared.key(LEADER_KEY);
    loop {
        if shared.resigned.load(std::sync::atomic::Ordering::SeqCst) {
            leadership.send_replace(Leadership::default());
            return;
        }
        match try_to_lead(&shared, &key, &me, ttl).await {
            Ok(Attempt::Won {
                lease,
                granted_at,
                revision,
            }) => {
                tracing::info!(leader = %me, "this server is the leader");
                *shared.leading.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease);
                leadership.send_replace(Leadership {
                    leader: Some(me.clone()),
                    is_me: true,
                });
                tokio::select! {
                    () = hold(&shared, lease, ttl, granted_at) => {}
                    () = key_lost(&shared, &key, &me, revision) => {}
                }
                let still_held = shared
                    .leading
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                if shared.resigned.load(std::sync::atomic::Ordering::SeqCst) {
                    // Won just as the server resigned: let this lease go too.
                    if let Some(lease) = still_held {
                        let _ = shared
                            .members
                            .call(|mut c| async move { c.lease_revoke(lease).await })
                            .await;
                    }
                } else if still_held.is_some() {
                    tracing::warn!(
                        "this server lost the leadership (its lease could not be renewed, or \
                         its key is gone)"
                    );
                }
                leadership.send_replace(Leadership::default());
            }
            Ok(Attempt::Lost { holder, revision }) => {
                leadership.send_if_modified(|l| {
                    let now = Leadership {
                        leader: Some(holder.clone()),
                        is_me: false,
                    };
                    let changed = *l != now;
                    *l = now;
                    changed
                });
                // Re-check at least once per lease period, whatever the watch.
                let _ = tokio::time::timeout(ttl, until_deleted(&shared, &key, revision)).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "campaign: etcd did not answer");
                leadership.send_if_modified(|l| {
                    let changed = l.is_me;
                    l.is_me = false;
                    changed
                });
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

enum Attempt {
    /// `revision`: the one that put this server at the leader key.
    Won {
        lease: i64,
        granted_at: Instant,
        revision: i64,
    },
    Lost {
        holder: String,
        revision: i64,
    },
}

/// One attempt: a new lease, and the leader key if nobody holds it.
async fn try_to_lead(
    shared: &Shared,
    key: &str,
    me: &str,
    ttl: Duration,
) -> Result<Attempt, String> {
    let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let granted_at = Instant::now();
    let lease = shared
        .members
        .call(|mut c| async move { c.lease_grant(seconds, None).await })
        .await
        .map_err(|f| f.0)?
        .id();
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            me,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let response = shared
        .members
        .call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        .map_err(|f| f.0)?;
    if response.succeeded() {
        return Ok(Attempt::Won {
            lease,
            granted_at,
            revision: response.header().map_or(0, |h| h.revision()),
        });
    }
    // Not needed: let it go rather than wait for it to expire.
    let _ = shared
        .members
        .call(|mut c| async move { c.lease_revoke(lease).await })
        .await;
    let revision = response.header().map_or(0, |h| h.revision());
    let holder = response
        .op_responses()
        .into_iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        })
        .unwrap_or_default();
    Ok(Attempt::Lost { holder, revision })
}

/// Keeps `lease` alive; returns when it cannot be sure it still holds it:
/// at the moment the lease could expire on etcd's side (`ttl` after the
/// last renewal was sent), or when etcd says it is gone.
async fn hold(shared: &Shared, lease: i64, ttl: Duration, granted_at: Instant) {
    let mut expires = granted_at + ttl;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(expires) => return,
            () = shared.resign_now.notified() => return,
            renewed = renew_after(shared, lease, ttl / 3) => match renewed {
                Ok(Some(sent_at)) => expires = sent_at + ttl,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "lease keepalive failed; trying another member");
                    shared.members.advance();
                }
            },
        }
    }
}

/// Waits `pause`, then renews `lease` once: when the renewal was sent, or
/// `None` when etcd no longer knows the lease.
async fn renew_after(
    shared: &Shared,
    lease: i64,
    pause: Duration,
) -> Result<Option<Instant>, String> {
    tokio::time::sleep(pause).await;
    let sent_at = Instant::now();
    let ttl = shared
        .members
        .call(|mut c| async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            Ok(stream.message().await?.map(|r| r.ttl()))
        })
        .await
        .map_err(|f| f.0)?;
    match ttl {
        Some(ttl) if ttl > 0 => Ok(Some(sent_at)),
        Some(_) => Ok(None),
        None => Err("the keepalive stream closed".into()),
    }
}

/// Returns when the leader key stops naming `me` after `revision` (deleted
/// or overwritten), watching again when the watch breaks.
async fn key_lost(shared: &Shared, key: &str, me: &str, revision: i64) {
    let mut from = revision + 1;
    loop {
        let (_, mut client) = shared.members.current();
        let options = WatchOptions::new().with_start_revision(from);
        if let Ok(mut stream) = client.watch(key, Some(options)).await {
            while let Ok(Some(response)) = stream.message().await {
                if response.compact_revision() > 0 {
                    break;
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    from = kv.mod_revision() + 1;
                    if event.event_type() == EventType::Delete || kv.value() != me.as_bytes() {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Returns when the leader key is deleted after `revision` (or the watch
/// breaks: the caller campaigns again either way).
async fn until_deleted(shared: &Shared, key: &str, revision: i64) {
    let (_, mut client) = shared.members.current();
    let options = WatchOptions::new().with_start_revision(revision + 1);
    let Ok(mut stream) = client.watch(key, Some(options)).await else {
        return;
    };
    while let Ok(Some(response)) = stream.message().await {
        if response.canceled()
            || response
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
        {
            return;
        }
    }
}
