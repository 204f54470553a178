//! [`EtcdStore`]: meshca's records in an etcd cluster, for deployments where
//! several meshca servers share one CA.
//!
//! Every record `<namespace>/<name>` lives at `<prefix><namespace>/<name>`;
//! the global index lives at `<prefix>meta/index` as 8 big-endian bytes
//! followed by the 16-byte ID of the commit that wrote it. A commit is one
//! etcd transaction guarded by the index record's revision as it was read:
//! every write bumps the index, so an unchanged index means nothing changed,
//! and two servers can never both commit on the same state.
//!
//! A request that timed out may still be applied later. Retrying the same
//! transaction is safe (the guard admits it at most once) and the commit ID
//! in the index record tells afterwards whether it was ours.
//!
//! Watches are one etcd watch on the whole prefix, followed by a task of the
//! store's own runtime; a commit returns once that task has seen it, so its
//! watchers have been told by then, and changes other servers commit reach
//! them the same way.
//!
//! Sealing happens above the backend: values holding private keys arrive
//! here sealed, as they reach sled.

mod election;
mod follow;
mod members;

use etcd_client::{Compare, CompareOp, GetOptions, Txn as EtcdTxn, TxnOp, TxnOpResponse};
use follow::Followed;
use members::{Failed, Members};
use meshca_store::{schema, validate_snapshot, Leadership, Op, Snapshot, Store, StoreError, Txn};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How many times a commit reads and tries again when another server's
/// commit got in between (its own checks still holding).
const MAX_ATTEMPTS: usize = 16;

/// Where the store is and how long one request may take.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `http://host:port` of each member, or `https://host:port` with
    /// [`EtcdOptions::tls`].
    pub endpoints: Vec<String>,
    /// Every key this store reads or writes starts with it (say
    /// `/meshca/dc1/`); a missing final `/` is added.
    pub prefix: String,
    /// One request to one member; then the next member is tried.
    pub request_timeout: Duration,
    /// TLS to the members: exactly when the endpoints are `https://`.
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd, in PEM: the CA that signed the members' certificates (the
/// only one trusted) and, for members that ask for client certificates
/// (`--client-cert-auth`), this server's certificate and key.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub client: Option<ClientIdentity>,
}

/// A client certificate (with its chain) and its private key, in PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Never the key: options are logged when opening fails.
impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

/// A [`Store`] in etcd. Synchronous like every backend: the calls block on
/// the store's own runtime.
pub struct EtcdStore {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    write_error: Mutex<Option<StoreError>>,
}

/// What the store's calls and its follower task share.
pub(crate) struct Shared {
    members: Members,
    prefix: String,
    followed: Followed,
    timeout: Duration,
    /// The lease this server leads under, while it does.
    leading: Mutex<Option<i64>>,
    /// Set on shutdown: no more campaigns.
    resigned: std::sync::atomic::AtomicBool,
    /// Wakes the leader's lease holding when it resigns.
    resign_now: tokio::sync::Notify,
}

/// The index record as read: the index, the ID of the commit that wrote
/// it, and its etcd revision (0: absent, an empty store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexRecord {
    index: u64,
    commit_id: Option<[u8; 16]>,
    mod_revision: i64,
}

impl IndexRecord {
    const ABSENT: Self = Self {
        index: 0,
        commit_id: None,
        mod_revision: 0,
    };

    fn decode(value: &[u8], mod_revision: i64) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt("the index record in etcd is malformed".into());
        let (index, id) = value.split_at_checked(8).ok_or_else(corrupt)?;
        Ok(Self {
            index: schema::decode_u64(index).ok_or_else(corrupt)?,
            commit_id: Some(<[u8; 16]>::try_from(id).map_err(|_| corrupt())?),
            mod_revision,
        })
    }

    fn encode(index: u64, commit_id: &[u8; 16]) -> Vec<u8> {
        let mut value = schema::encode_u64(index).to_vec();
        value.extend_from_slice(commit_id);
        value
    }

    /// The transaction guard "the index record is still this one".
    fn unchanged(&self, key: &str) -> Compare {
        if self.mod_revision == 0 {
            Compare::create_revision(key, CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key, CompareOp::Equal, self.mod_revision)
        }
    }
}

/// Records under one prefix and the index, read at one etcd revision.
struct Read {
    index: IndexRecord,
    /// Every record but the index record, by record key.
    records: BTreeMap<String, Vec<u8>>,
    revision: i64,
}

impl EtcdStore {
    /// Connects to the cluster, reads the index and starts following
    /// changes. Fails when no member answers within the timeout.
    pub fn open(options: EtcdOptions) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("meshca-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("starting the etcd client's runtime: {e}")))?;
        let mut prefix = options.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let shared = wait_on(&runtime, async move {
            let members =
                Members::connect(&options.endpoints, options.request_timeout, options.tls)
                    .await
                    .map_err(unavailable)?;
            let shared = Arc::new(Shared {
                members,
                prefix,
                followed: Followed::new(),
                timeout: options.request_timeout,
                leading: Mutex::new(None),
                resigned: std::sync::atomic::AtomicBool::new(false),
                resign_now: tokio::sync::Notify::new(),
            });
            let read = shared.read(schema::INDEX).await?;
            shared.followed.start_at(read.index.index, read.revision);
            Ok::<_, StoreError>(shared)
        })
        .and_then(|opened| opened);
        let shared = match shared {
            Ok(shared) => shared,
            Err(e) => {
                // Dropping a runtime blocks, refused on another runtime's thread.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        runtime.spawn(follow::follow(shared.clone()));
        Ok(Self {
            runtime: Some(runtime),
            shared,
            write_error: Mutex::new(None),
        })
    }

    /// Runs `work` on the store's runtime and waits for it. Works from any
    /// thread, including one of another runtime (which it blocks).
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(Arc<Shared>) -> std::pin::Pin<Box<dyn Future<Output = T> + Send>>,
    ) -> Result<T, StoreError> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| StoreError::Io("the etcd store is closed".into()))?;
        wait_on(runtime, work(self.shared.clone()))
    }

    /// Campaigns for the leadership of the servers sharing this store, as
    /// `me` (this server's API address, which the others report), with a
    /// lease of `ttl`. The receiver tells who leads, from now until the
    /// store is dropped; the lease then expires on its own.
    pub fn campaign(&self, me: String, ttl: Duration) -> watch::Receiver<Leadership> {
        let (tx, rx) = watch::channel(Leadership::default());
        if let Some(runtime) = &self.runtime {
            runtime.spawn(election::campaign(self.shared.clone(), me, ttl, tx));
        }
        rx
    }

    /// Gives up the leadership at once (on shutdown), so that another
    /// server need not wait for the lease to expire. Nothing when this
    /// server does not lead.
    pub fn resign(&self) {
        // The lease first: once told, the campaign would take it itself.
        let lease = self
            .shared
            .leading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.shared
            .resigned
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.resign_now.notify_one();
        if let (Some(lease), Some(runtime)) = (lease, &self.runtime) {
            let shared = self.shared.clone();
            let revoked = wait_on(runtime, async move {
                shared
                    .members
                    .call(|mut c| async move { c.lease_revoke(lease).await })
                    .await
            });
            if let Ok(Ok(_)) = revoked {
                tracing::info!("resigned the leadership");
            }
        }
    }

    /// Remembers the outcome of a write for [`Store::health`]. A write
    /// that could not even read what it checks failed as a write.
    fn written<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let result = result.map_err(|e| match e {
            StoreError::Io(m) => StoreError::WriteFailed(m),
            other => other,
        });
        let mut last = self.write_error.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => *last = None,
            Err(e @ StoreError::WriteFailed(_)) => *last = Some(e.clone()),
            Err(_) => {}
        }
        result
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is refused inside another
        // runtime (where the server drops its store).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Whether a refused commit was refused for its leader fence: it was sent
/// under `ours` (this server leading) and the leader key is held under
/// another lease, or by none.
fn fence_broken(ours: Option<i64>, key_lease: Option<i64>) -> bool {
    ours.is_some_and(|ours| key_lease != Some(ours))
}

/// The lease the leader key is held under, from the `or_else` read of a
/// refused commit.
fn leader_lease(response: &etcd_client::TxnResponse) -> Option<i64> {
    response.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()),
        _ => None,
    })
}

/// Runs `fut` on `runtime` and waits for it on this thread. Not
/// `block_on`, which is refused on a thread of another runtime (the server
/// opens its store from one).
fn wait_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| StoreError::Io("the etcd client's runtime stopped".into()))
}

fn unavailable(f: Failed) -> StoreError {
    StoreError::Io(f.0)
}

fn write_failed(f: Failed) -> StoreError {
    StoreError::WriteFailed(f.0)
}

impl Shared {
    fn key(&self, record: &str) -> String {
        format!("{}{record}", self.prefix)
    }

    fn index_key(&self) -> String {
        self.key(schema::INDEX)
    }

    /// The record key of an etcd key under the prefix; `None` for keys
    /// that are not records (the election's).
    fn record_key<'a>(&self, etcd_key: &'a [u8]) -> Option<&'a str> {
        let key = std::str::from_utf8(etcd_key)
            .ok()?
            .strip_prefix(self.prefix.as_str())?;
        schema::validate_key(key).ok().map(|()| key)
    }

    /// The index record and the records under `prefix`, at one revision.
    async fn read(&self, prefix: &str) -> Result<Read, StoreError> {
        let index_key = self.index_key();
        let range = self.key(prefix);
        let response = self
            .members
            .call(|mut c| {
                let txn = EtcdTxn::new().and_then([
                    TxnOp::get(index_key.as_str(), None),
                    TxnOp::get(range.as_str(), Some(GetOptions::new().with_prefix())),
                ]);
                async move { c.txn(txn).await }
            })
            .await
            .map_err(unavailable)?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut gets = response.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (Some(index), Some(range)) = (gets.next(), gets.next()) else {
            return Err(StoreError::Io(
                "etcd answered a read without its ranges".into(),
            ));
        };
        let index = match index.kvs().first() {
            Some(kv) => IndexRecord::decode(kv.value(), kv.mod_revision())?,
            None => IndexRecord::ABSENT,
        };
        let mut records = BTreeMap::new();
        for kv in range.kvs() {
            match self.record_key(kv.key()) {
                Some(schema::INDEX) | None => {}
                Some(key) => {
                    records.insert(key.to_string(), kv.value().to_vec());
                }
            }
        }
        Ok(Read {
            index,
            records,
            revision,
        })
    }

    /// Applies `ops` if the index record is still `guard`, writing the
    /// index `index` with a new commit ID. `Ok(Some((index, revision)))`
    /// when it was applied, `Ok(None)` when another commit got in first.
    async fn apply(
        &self,
        guard: &IndexRecord,
        index: u64,
        mut ops: Vec<TxnOp>,
    ) -> Result<Option<(u64, i64)>, StoreError> {
        let commit_id = *uuid::Uuid::new_v4().as_bytes();
        let index_key = self.index_key();
        ops.push(TxnOp::put(
            index_key.as_str(),
            IndexRecord::encode(index, &commit_id),
            None,
        ));
        // A leader's writes are fenced by its lease: once the lease ended
        // (the server froze past it, say) and another server leads, they
        // fail instead of racing the new leader.
        let lease = *self.leading.lock().unwrap_or_else(|p| p.into_inner());
        let leader_key = self.key(election::LEADER_KEY);
        let mut when = vec![guard.unchanged(&index_key)];
        if let Some(lease) = lease {
            when.push(Compare::lease(leader_key.as_str(), CompareOp::Equal, lease));
        }
        let txn = EtcdTxn::new()
            .when(when)
            .and_then(ops)
            .or_else([TxnOp::get(leader_key.as_str(), None)]);
        // The same guarded transaction, repeated on another member when one
        // does not answer: at most one attempt is applied.
        let response = self
            .members
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await;
        let unanswered = match response {
            Ok(r) if r.succeeded() => {
                return Ok(Some((index, r.header().map_or(0, |h| h.revision()))));
            }
            Ok(r) => {
                if fence_broken(lease, leader_lease(&r)) {
                    return Err(StoreError::WriteFailed(
                        "this server no longer leads (its lease ended and the leader key is \
                         gone or another server's): the change was not made"
                            .into(),
                    ));
                }
                None
            }
            Err(f) => Some(f),
        };
        // Refused, or not answered (then it may still have been applied):
        // the index record says which.
        let now = match self.read(schema::INDEX).await {
            Ok(now) => now.index,
            Err(_) => {
                return Err(write_failed(
                    unanswered.unwrap_or(Failed("etcd stopped answering".into())),
                ))
            }
        };
        if now.commit_id == Some(commit_id) {
            return Ok(Some((index, now.mod_revision)));
        }
        match unanswered {
            Some(f) if now.mod_revision == guard.mod_revision => Err(write_failed(f)),
            _ => Ok(None),
        }
    }

    /// `index` + 1, refused at the end of the range.
    fn next_index(index: u64) -> Result<u64, StoreError> {
        index
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("the global index is exhausted".into()))
    }

    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        self.write(|read| {
            check(&txn, read)?;
            let ops = txn
                .ops
                .iter()
                .map(|op| match op {
                    Op::Put(key, value) => TxnOp::put(self.key(key), value.clone(), None),
                    Op::Delete(key) => TxnOp::delete(self.key(key), None),
                })
                .collect();
            Ok((Self::next_index(read.index.index)?, ops))
        })
        .await
    }

    async fn restore(&self, snapshot: Snapshot) -> Result<u64, StoreError> {
        let wanted: BTreeMap<&str, &Vec<u8>> = snapshot
            .records
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        self.write(|read| {
            let mut ops = Vec::new();
            for key in read.records.keys() {
                if !wanted.contains_key(key.as_str()) {
                    ops.push(TxnOp::delete(self.key(key), None));
                }
            }
            for (key, value) in &wanted {
                if read.records.get(*key) != Some(*value) {
                    ops.push(TxnOp::put(self.key(key), (*value).clone(), None));
                }
            }
            // The index never goes back: above both the store's and the
            // snapshot's.
            Ok((Self::next_index(read.index.index.max(snapshot.index))?, ops))
        })
        .await
    }

    /// Reads the store, asks `plan` for the new index and the changes,
    /// and applies them guarded by what was read; again from a fresh read
    /// when another server's commit got in first. Returns once the commit
    /// was followed (its watchers told).
    async fn write(
        &self,
        plan: impl Fn(&Read) -> Result<(u64, Vec<TxnOp>), StoreError>,
    ) -> Result<u64, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            // What a commit checks may be anywhere: read everything under
            // the prefix (a CA's records are few).
            let read = self.read("").await?;
            let (index, ops) = plan(&read)?;
            if let Some((index, revision)) = self.apply(&read.index, index, ops).await? {
                self.followed.wait_until_seen(revision, self.timeout).await;
                return Ok(index);
            }
        }
        Err(StoreError::WriteFailed(format!(
            "other servers' commits got in first {MAX_ATTEMPTS} times in a row"
        )))
    }
}

/// Fails with a conflict if a check of `txn` does not hold in `read`.
fn check(txn: &Txn, read: &Read) -> Result<(), StoreError> {
    for check in &txn.checks {
        let actual = if check.key == schema::INDEX {
            Some(schema::encode_u64(read.index.index).to_vec())
        } else {
            read.records.get(&check.key).cloned()
        };
        if !check.holds(actual.as_deref()) {
            return Err(check.conflict(read.index.index));
        }
    }
    Ok(())
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        schema::validate_key(key)?;
        let key = key.to_string();
        self.run(|s| {
            Box::pin(async move {
                let read = s.read(&key).await?;
                if key == schema::INDEX {
                    return Ok(Some(schema::encode_u64(read.index.index).to_vec()));
                }
                Ok(read.records.get(&key).cloned())
            })
        })?
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_string();
        self.run(|s| {
            Box::pin(async move {
                let read = s.read(&prefix).await?;
                let mut found: Vec<(String, Vec<u8>)> = read
                    .records
                    .into_iter()
                    .filter(|(k, _)| k.starts_with(prefix.as_str()))
                    .collect();
                if schema::INDEX.starts_with(prefix.as_str()) {
                    found.push((
                        schema::INDEX.to_string(),
                        schema::encode_u64(read.index.index).to_vec(),
                    ));
                    found.sort_by(|a, b| a.0.cmp(&b.0));
                }
                Ok(found)
            })
        })?
    }

    fn index(&self) -> Result<u64, StoreError> {
        self.run(|s| Box::pin(async move { s.read(schema::INDEX).await.map(|r| r.index.index) }))?
    }

    fn commit(&self, txn: &Txn) -> Result<u64, StoreError> {
        txn.validate()?;
        let txn = txn.clone();
        let result = self.run(|s| Box::pin(async move { s.commit(txn).await }))?;
        self.written(result)
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let read = s.read("").await?;
                Ok(Snapshot {
                    index: read.index.index,
                    records: read.records.into_iter().collect(),
                })
            })
        })?
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<u64, StoreError> {
        validate_snapshot(snapshot)?;
        let snapshot = snapshot.clone();
        let result = self.run(|s| Box::pin(async move { s.restore(snapshot).await }))?;
        self.written(result)
    }

    fn watch(&self, prefix: &str) -> watch::Receiver<u64> {
        self.shared.followed.subscribe(prefix)
    }

    fn health(&self) -> Result<(), StoreError> {
        match &*self.write_error.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leaders_commit_meets_the_fence_and_only_when_its_key_moved() {
        // A follower's commit carries no fence.
        assert!(!fence_broken(None, Some(7)));
        assert!(!fence_broken(None, None));
        // A leader's commit refused while its key is still its own was
        // refused for the index (another commit got in first).
        assert!(!fence_broken(Some(7), Some(7)));
        // Its key expired, or another server holds it: fenced.
        assert!(fence_broken(Some(7), None));
        assert!(fence_broken(Some(7), Some(8)));
        assert!(fence_broken(Some(7), Some(0)));
    }

    #[test]
    fn the_index_record_round_trips_and_refuses_garbage() {
        let id = [7u8; 16];
        let value = IndexRecord::encode(42, &id);
        let read = IndexRecord::decode(&value, 9).unwrap();
        assert_eq!(read.index, 42);
        assert_eq!(read.commit_id, Some(id));
        assert_eq!(read.mod_revision, 9);
        for bad in [&value[..8], &value[..20], b"".as_slice()] {
            assert!(matches!(
                IndexRecord::decode(bad, 1),
                Err(StoreError::Corrupt(_))
            ));
        }
    }
}
