//! [`Records`]: the CA state as records, the only store API the CA engine uses.
//!
//! | key | content | at rest |
//! |---|---|---|
//! | `ca/roots` | cluster ID, the CA's modify index, the roots and their certificates | plain JSON |
//! | `ca/config` | the CA configuration and its indexes (may hold a supplied root key or a Vault token) | sealed |
//! | `ca/keys` | the private keys by handle | sealed |
//! | `ca/provider` | the provider's public bookkeeping | plain JSON |
//!
//! Only records that can hold a secret are sealed, so the public ones stay
//! readable to an operator inspecting a store. A CA change rewrites all
//! four in one transaction, so they always belong to the same commit.
//!
//! With a rotation period, a commit that seals while the newest data key is
//! that old first adds a new data key: the data key registry
//! (`meta/data_keys`) and the records sealed with the new key are written
//! in the same transaction, so a crash leaves both or neither.

use crate::{schema, Op, Sealer, Snapshot, Store, StoreError, StoreKey, Txn};
use meshca_core::secret::SecretBytes;
use meshca_core::state::{CaRoot, CaState, StoredConfig};
use meshca_core::Clock;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The public head of the CA: `ca/roots`.
#[derive(Serialize, Deserialize)]
struct RootsRecord {
    cluster_id: Uuid,
    /// The global index of the commit that wrote the CA records.
    modify_index: u64,
    roots: Vec<CaRoot>,
    /// Set for a secondary datacenter's CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    primary_datacenter: Option<String>,
}

/// The typed CA layer over a [`Store`] and a [`Sealer`].
pub struct Records {
    store: Arc<dyn Store>,
    /// Replaced only after a commit that added a data key succeeded.
    sealer: RwLock<Arc<Sealer>>,
    rotation: Option<Rotation>,
}

/// What a [`Records`] needs to add data keys: the store key that seals the
/// registry, the period, and the clock.
struct Rotation {
    store_key: StoreKey,
    period: time::Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("sealer", &self.sealer())
            .field("rotation_period", &self.rotation.as_ref().map(|r| r.period))
            .finish_non_exhaustive()
    }
}

impl Records {
    /// Records over `store`, sealing with `sealer`, never adding data keys.
    /// The store must be at the current schema: `meshca_migrations::open`
    /// builds this for callers.
    pub fn new(store: Arc<dyn Store>, sealer: Sealer) -> Self {
        Self {
            store,
            sealer: RwLock::new(Arc::new(sealer)),
            rotation: None,
        }
    }

    /// Records that add a data key at the first commit that seals once the
    /// newest is `period` old (by `clock`); `store_key` seals the registry.
    pub fn with_rotation(
        store: Arc<dyn Store>,
        sealer: Sealer,
        store_key: StoreKey,
        period: time::Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            rotation: Some(Rotation {
                store_key,
                period,
                clock,
            }),
            ..Self::new(store, sealer)
        }
    }

    /// The data keys in use now.
    pub fn sealer(&self) -> Arc<Sealer> {
        self.sealer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The CA state, or `None` before the CA is initialised. A sealed record
    /// that fails to open, a record that does not parse, or a CA with some
    /// records missing is an error: the CA is never assembled from less than
    /// all of it.
    pub fn load_ca(&self) -> Result<Option<CaState>, StoreError> {
        Self::load_ca_from(&*self.store, &self.sealer())
    }

    /// [`Records::load_ca`] from any store and sealer, for migrations and
    /// data key changes that rewrite the CA records.
    pub fn load_ca_from(store: &dyn Store, sealer: &Sealer) -> Result<Option<CaState>, StoreError> {
        let found: BTreeMap<String, Vec<u8>> = store.scan(schema::CA)?.into_iter().collect();
        if found.is_empty() {
            return Ok(None);
        }
        if found.contains_key(schema::CA_STATE_V1) {
            return Err(StoreError::Corrupt(format!(
                "{} is a schema-1 record; the store was not migrated",
                schema::CA_STATE_V1
            )));
        }
        let record = |key: &str| {
            found.get(key).ok_or_else(|| {
                StoreError::Corrupt(format!("{key} is missing while other CA records exist"))
            })
        };
        let roots: RootsRecord = parse(schema::CA_ROOTS, record(schema::CA_ROOTS)?)?;
        let provider_state: BTreeMap<String, String> =
            parse(schema::CA_PROVIDER, record(schema::CA_PROVIDER)?)?;
        let config: StoredConfig = parse(
            schema::CA_CONFIG,
            &sealer.open(schema::CA_CONFIG, record(schema::CA_CONFIG)?)?,
        )?;
        let private_keys: BTreeMap<String, SecretBytes> = parse(
            schema::CA_KEYS,
            &sealer.open(schema::CA_KEYS, record(schema::CA_KEYS)?)?,
        )?;
        Ok(Some(CaState {
            cluster_id: roots.cluster_id,
            config,
            roots: roots.roots,
            provider_state,
            private_keys,
            modify_index: roots.modify_index,
            primary_datacenter: roots.primary_datacenter,
        }))
    }

    /// Writes `ca/roots`, `ca/config`, `ca/keys` and `ca/provider` in one
    /// transaction, guarded by the CA being at `expected`: the CA's modify
    /// index as the caller read it (for a new CA, the global index it read
    /// while no CA existed). The records are stamped with `expected + 1`,
    /// which is returned and becomes `state.modify_index`. The guard is on
    /// the CA's own head record, not on the global index, so ACL writes in
    /// between (they move the global index) do not conflict with a CA
    /// change; CA indexes still only grow. A CA that changed since (or was
    /// created meanwhile) is `Conflict` and writes nothing. When a data key
    /// is due, the new registry is part of the same transaction, guarded by
    /// the registry it replaces.
    pub fn commit_ca(&self, state: &CaState, expected: u64) -> Result<u64, StoreError> {
        let index = expected
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("the global index is exhausted".into()))?;
        let head = self.store.get(schema::CA_ROOTS)?;
        let conflict = |actual| StoreError::Conflict { expected, actual };
        match &head {
            Some(bytes) => {
                let stored: RootsRecord = parse(schema::CA_ROOTS, bytes)?;
                if stored.modify_index != expected {
                    return Err(conflict(stored.modify_index));
                }
            }
            // A new CA: nothing may have been committed since the caller
            // read the index it stamps from.
            None if self.store.index()? > expected => return Err(conflict(self.store.index()?)),
            None => {}
        }
        let (sealer, registry) = self.sealer_for_next_seal()?;
        let mut ops = Self::ca_ops(&sealer, state, index)?;
        let rotated = registry.is_some();
        let mut checks = vec![];
        if rotated {
            let current = self.store.get(schema::DATA_KEYS)?;
            checks.push(crate::Check {
                key: schema::DATA_KEYS.into(),
                expected: current,
            });
        }
        ops.extend(registry);
        let txn = Txn { checks, ops }.check(schema::CA_ROOTS, head.as_deref());
        self.store.commit(&txn)?;
        if rotated {
            tracing::info!(
                data_key_id = %sealer.data_key_id(),
                "new data key: the previous one reached the data key rotation period"
            );
            *self.sealer.write().unwrap_or_else(|p| p.into_inner()) = sealer;
        }
        Ok(index)
    }

    /// Adds a data key once the newest is a rotation period old, even when
    /// the CA does not change: the sealed CA records are re-sealed with it
    /// in the same transaction as the new registry. `ca/roots` is not
    /// written, so the CA's modify index stays and no roots watcher sees a
    /// change. Guarded by every record it read; a concurrent CA commit makes
    /// it `Conflict` (that commit rotated the key itself, or the next tick
    /// will). Returns whether a data key was added.
    pub fn rotate_data_key_if_due(&self) -> Result<bool, StoreError> {
        let (next, Some(registry)) = self.sealer_for_next_seal()? else {
            return Ok(false);
        };
        let current = self.sealer();
        let mut txn = Txn::new().check(
            schema::DATA_KEYS,
            self.store.get(schema::DATA_KEYS)?.as_deref(),
        );
        txn.ops.push(registry);
        for key in [schema::CA_CONFIG, schema::CA_KEYS] {
            let stored = self.store.get(key)?;
            txn = txn.check(key, stored.as_deref());
            if let Some(sealed) = stored {
                let plaintext = current.open(key, &sealed)?;
                txn = txn.put(key, next.seal(key, &plaintext)?);
            }
        }
        self.store.commit(&txn)?;
        tracing::info!(
            data_key_id = %next.data_key_id(),
            "new data key: the previous one reached the data key rotation period"
        );
        *self.sealer.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(true)
    }

    /// The sealer for a commit about to seal, and the registry put when it
    /// holds a new data key (the newest was due for rotation).
    fn sealer_for_next_seal(&self) -> Result<(Arc<Sealer>, Option<Op>), StoreError> {
        let sealer = self.sealer();
        let Some(rotation) = &self.rotation else {
            return Ok((sealer, None));
        };
        let now = rotation.clock.now();
        if !sealer.rotation_due(now, rotation.period) {
            return Ok((sealer, None));
        }
        let next = sealer.with_new_key(now)?;
        let registry = Op::Put(
            schema::DATA_KEYS.into(),
            next.to_registry(&rotation.store_key)?,
        );
        Ok((Arc::new(next), Some(registry)))
    }

    /// The puts that store `state` as the CA records, stamped with `index`
    /// (the index of the commit that will carry them). For
    /// [`Records::commit_ca`] and for migrations that write the CA within a
    /// larger transaction.
    pub fn ca_ops(sealer: &Sealer, state: &CaState, index: u64) -> Result<Vec<Op>, StoreError> {
        let roots = RootsRecord {
            cluster_id: state.cluster_id,
            modify_index: index,
            roots: state.roots.clone(),
            primary_datacenter: state.primary_datacenter.clone(),
        };
        let config = Zeroizing::new(encode(schema::CA_CONFIG, &state.config)?);
        let keys = Zeroizing::new(encode(schema::CA_KEYS, &state.private_keys)?);
        Ok(vec![
            Op::Put(
                schema::CA_CONFIG.into(),
                sealer.seal(schema::CA_CONFIG, &config)?,
            ),
            Op::Put(schema::CA_KEYS.into(), sealer.seal(schema::CA_KEYS, &keys)?),
            Op::Put(
                schema::CA_PROVIDER.into(),
                encode(schema::CA_PROVIDER, &state.provider_state)?,
            ),
            Op::Put(schema::CA_ROOTS.into(), encode(schema::CA_ROOTS, &roots)?),
        ])
    }

    /// The global index.
    pub fn index(&self) -> Result<u64, StoreError> {
        self.store.index()
    }

    /// Changes with the index of each commit that writes a CA record.
    pub fn watch_ca(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.watch(schema::CA)
    }

    /// `Ok` while the store's writes succeed; the last write error otherwise.
    pub fn health(&self) -> Result<(), StoreError> {
        self.store.health()
    }

    /// A consistent copy of the whole store (sealed records stay sealed).
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.store.snapshot()
    }

    /// What `snapshot` holds, opened as this store would open it after a
    /// restore — its data keys under this store key — without writing
    /// anything: a snapshot of another store (another store key), or with
    /// records that do not open, is an error here, before any restore.
    pub fn open_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotContents, StoreError> {
        let copy = crate::MemoryStore::new();
        copy.restore(snapshot)?;
        let sealer = match (&self.rotation, copy.get(schema::DATA_KEYS)?) {
            (Some(rotation), Some(registry)) => {
                Arc::new(Sealer::from_registry(&registry, &rotation.store_key)?)
            }
            _ => self.sealer(),
        };
        Ok(SnapshotContents {
            schema_version: schema_version_of(&copy)?,
            datacenter: datacenter_of(&copy)?,
            ca: Self::load_ca_from(&copy, &sealer)?,
        })
    }

    /// The store's schema version (0 for a new store).
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        schema_version_of(&*self.store)
    }

    /// Replaces the whole store with `snapshot`; returns the new index.
    /// The snapshot's data key registry must open under this store key
    /// (when these records know it) and then replaces the data keys in use.
    /// The restored CA's head is stamped with the new index, so that CA
    /// indexes (`X-Consul-Index`) keep growing across a restore.
    pub fn restore(&self, snapshot: &Snapshot) -> Result<u64, StoreError> {
        let next = std::cmp::max(self.store.index()?, snapshot.index) + 1;
        let restamped = with_ca_head_at(snapshot, next)?;
        let snapshot = &restamped;
        let registry = snapshot
            .records
            .iter()
            .find(|(k, _)| k == schema::DATA_KEYS)
            .map(|(_, v)| v);
        let restored = match (&self.rotation, registry) {
            (Some(rotation), Some(record)) => {
                Some(Sealer::from_registry(record, &rotation.store_key)?)
            }
            _ => None,
        };
        let index = self.store.restore(snapshot)?;
        if let Some(sealer) = restored {
            *self.sealer.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(sealer);
        }
        Ok(index)
    }

    /// The datacenter recorded in the store, recording `datacenter` first
    /// when none is (a new store, or one from before it was recorded). The
    /// caller refuses to serve a different one: a CA never changes the
    /// datacenter its leaves name.
    ///
    /// Servers starting at once on an empty shared store race to record
    /// theirs: the loser reads the winner's and is judged by it.
    pub fn record_datacenter(&self, datacenter: &str) -> Result<String, StoreError> {
        if let Some(recorded) = self.recorded_datacenter()? {
            return Ok(recorded);
        }
        let txn = Txn::new()
            .check(schema::DATACENTER, None)
            .put(schema::DATACENTER, datacenter.as_bytes().to_vec());
        match self.store.commit(&txn) {
            Ok(_) => Ok(datacenter.to_string()),
            Err(conflict @ StoreError::Conflict { .. }) => {
                self.recorded_datacenter()?.ok_or(conflict)
            }
            Err(e) => Err(e),
        }
    }

    fn recorded_datacenter(&self) -> Result<Option<String>, StoreError> {
        let Some(raw) = self.store.get(schema::DATACENTER)? else {
            return Ok(None);
        };
        String::from_utf8(raw)
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("{} is not UTF-8 text", schema::DATACENTER)))
    }

    /// The raw store, for migrations and diagnostics.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

/// What a snapshot holds, as [`Records::open_snapshot`] found it.
#[derive(Debug, Clone)]
pub struct SnapshotContents {
    pub schema_version: u64,
    /// The datacenter its CA issues for (absent in stores from before it
    /// was recorded).
    pub datacenter: Option<String>,
    pub ca: Option<CaState>,
}

fn schema_version_of(store: &dyn Store) -> Result<u64, StoreError> {
    match store.get(schema::SCHEMA_VERSION)? {
        None => Ok(0),
        Some(raw) => schema::decode_u64(&raw).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{} is not a version number",
                schema::SCHEMA_VERSION
            ))
        }),
    }
}

fn datacenter_of(store: &dyn Store) -> Result<Option<String>, StoreError> {
    store
        .get(schema::DATACENTER)?
        .map(|raw| {
            String::from_utf8(raw).map_err(|_| {
                StoreError::Corrupt(format!("{} is not UTF-8 text", schema::DATACENTER))
            })
        })
        .transpose()
}

/// `snapshot` with its CA head record (`ca/roots`) stamped with `index`.
fn with_ca_head_at(snapshot: &Snapshot, index: u64) -> Result<Snapshot, StoreError> {
    let mut out = snapshot.clone();
    for (key, value) in out
        .records
        .iter_mut()
        .filter(|(k, _)| k == schema::CA_ROOTS)
    {
        let mut head: RootsRecord = parse(key, value)?;
        head.modify_index = index;
        *value = encode(key, &head)?;
    }
    Ok(out)
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(format!("encoding {key}: {e}")))
}

fn parse<'a, T: Deserialize<'a>>(key: &str, bytes: &'a [u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))
}
