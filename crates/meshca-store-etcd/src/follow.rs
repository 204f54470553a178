//! Following the cluster: one etcd watch on the store's prefix tells the
//! store's [`Watchers`] about every commit, this server's and the others',
//! in revision order.

use crate::Shared;
use etcd_client::{EventType, WatchOptions, WatchResponse};
use meshca_store::{schema, Watchers};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Pause before watching again after the watch broke (member down).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

pub(crate) struct Followed {
    /// The index and etcd revision of the last commit told to the
    /// watchers. Held while telling them, so that a new watcher starts at
    /// an index it will hear every change after.
    last: Mutex<Last>,
    watchers: Watchers,
    /// The revision followed up to, for commits waiting to be seen.
    seen: watch::Sender<i64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Last {
    index: u64,
    revision: i64,
}

impl Followed {
    pub(crate) fn new() -> Self {
        Self {
            last: Mutex::new(Last::default()),
            watchers: Watchers::new(),
            seen: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Last> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where following starts: the store as it was read at `revision`.
    pub(crate) fn start_at(&self, index: u64, revision: i64) {
        *self.lock() = Last { index, revision };
        self.seen.send_replace(revision);
    }

    pub(crate) fn subscribe(&self, prefix: &str) -> watch::Receiver<u64> {
        let last = self.lock();
        self.watchers.subscribe(prefix, last.index)
    }

    /// Waits (at most `timeout`) until the commit at `revision` has been
    /// told to the watchers. Past the timeout the commit stands anyway;
    /// its watchers hear of it when the watch is back.
    pub(crate) async fn wait_until_seen(&self, revision: i64, timeout: Duration) {
        let mut seen = self.seen.subscribe();
        let waited = tokio::time::timeout(timeout, seen.wait_for(|r| *r >= revision)).await;
        if waited.is_err() {
            tracing::warn!(revision, "the etcd watch has not delivered a commit yet");
        }
    }

    /// Tells the watchers about one commit: the etcd `revision` that wrote
    /// `keys` (record keys) and the index record's new `index`.
    fn commit_seen(&self, revision: i64, index: Option<u64>, keys: &[String]) {
        let mut last = self.lock();
        if revision <= last.revision {
            return;
        }
        if let Some(index) = index {
            self.watchers.notify(index, keys.iter().map(String::as_str));
            last.index = index;
        }
        last.revision = revision;
        self.seen.send_replace(revision);
    }

    /// The watch restarted after history it needed was compacted away:
    /// every watcher hears of the index now.
    fn resync(&self, index: u64, revision: i64) {
        let mut last = self.lock();
        self.watchers.notify_all(index);
        *last = Last { index, revision };
        self.seen.send_replace(revision);
    }

    fn next_revision(&self) -> i64 {
        self.lock().revision + 1
    }
}

/// The follower task: watches the prefix from the revision after the last
/// one seen, on the current member; when the watch breaks, on the next.
pub(crate) async fn follow(shared: Arc<Shared>) {
    loop {
        let from = shared.followed.next_revision();
        let (endpoint, mut client) = shared.members.current();
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        match client.watch(shared.prefix.as_str(), Some(options)).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(response)) => {
                        if !handle(&shared, &response).await {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(endpoint, error = %e, "the etcd watch broke");
                        break;
                    }
                }
            },
            Err(e) => tracing::debug!(endpoint, error = %e, "could not watch etcd"),
        }
        shared.members.advance();
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Applies one watch response; `false` when the watch must be restarted.
async fn handle(shared: &Shared, response: &WatchResponse) -> bool {
    if response.compact_revision() > 0 {
        // The revisions after the last one seen are gone: read the index
        // now and wake everyone, then watch from there.
        if let Ok(read) = shared.read(schema::INDEX).await {
            shared.followed.resync(read.index.index, read.revision);
        }
        return false;
    }
    if response.canceled() {
        return false;
    }
    // A transaction's events share one revision and arrive together.
    let mut events = response.events().iter().peekable();
    while let Some(first) = events.next() {
        let Some(kv) = first.kv() else { continue };
        let revision = kv.mod_revision();
        let mut group = vec![first];
        while let Some(next) =
            events.next_if(|e| e.kv().map(|k| k.mod_revision()) == Some(revision))
        {
            group.push(next);
        }
        let mut index = None;
        let mut keys = Vec::new();
        for event in group {
            let Some(kv) = event.kv() else { continue };
            match shared.record_key(kv.key()) {
                Some(schema::INDEX) if event.event_type() == EventType::Put => {
                    index = kv.value().get(..8).and_then(schema::decode_u64);
                }
                Some(schema::INDEX) | None => {}
                Some(key) => keys.push(key.to_string()),
            }
        }
        shared.followed.commit_seen(revision, index, &keys);
    }
    true
}
