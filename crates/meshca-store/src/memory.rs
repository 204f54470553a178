//! [`MemoryStore`]: records in a map, for `--dev` and for tests. Nothing is
//! durable: everything is gone when the store is dropped.

use crate::{schema, validate_snapshot, Op, Snapshot, Store, StoreError, Txn, Watchers};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use tokio::sync::watch;

/// A [`Store`] in memory. One mutex serialises commits and makes every read
/// consistent; it is never held across anything slow.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    watchers: Watchers,
}

#[derive(Debug, Default)]
struct State {
    /// Every record but the index record, which `index` stands for.
    records: BTreeMap<String, Vec<u8>>,
    index: u64,
}

impl State {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        if key == schema::INDEX {
            return Some(schema::encode_u64(self.index).to_vec());
        }
        self.records.get(key).cloned()
    }
}

impl MemoryStore {
    /// An empty store at index 0.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock cannot leave the map half
        // changed: a commit checks everything before it changes anything.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        schema::validate_key(key)?;
        Ok(self.lock().get(key))
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let state = self.lock();
        let mut found: Vec<(String, Vec<u8>)> = state
            .records
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if schema::INDEX.starts_with(prefix) {
            found.push((
                schema::INDEX.to_string(),
                schema::encode_u64(state.index).to_vec(),
            ));
            found.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(found)
    }

    fn index(&self) -> Result<u64, StoreError> {
        Ok(self.lock().index)
    }

    fn commit(&self, txn: &Txn) -> Result<u64, StoreError> {
        txn.validate()?;
        let mut state = self.lock();
        for check in &txn.checks {
            if !check.holds(state.get(&check.key).as_deref()) {
                return Err(check.conflict(state.index));
            }
        }
        let index = state
            .index
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("the global index is exhausted".into()))?;
        for op in &txn.ops {
            match op {
                Op::Put(key, value) => state.records.insert(key.clone(), value.clone()),
                Op::Delete(key) => state.records.remove(key),
            };
        }
        state.index = index;
        self.watchers.notify(index, txn.ops.iter().map(Op::key));
        Ok(index)
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let state = self.lock();
        Ok(Snapshot {
            index: state.index,
            records: state
                .records
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<u64, StoreError> {
        validate_snapshot(snapshot)?;
        let mut state = self.lock();
        let index = state
            .index
            .max(snapshot.index)
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("the global index is exhausted".into()))?;
        let records: BTreeMap<String, Vec<u8>> = snapshot.records.iter().cloned().collect();
        let changed: BTreeSet<&String> = state
            .records
            .keys()
            .chain(records.keys())
            .filter(|k| state.records.get(*k) != records.get(*k))
            .collect();
        let changed: Vec<String> = changed.into_iter().cloned().collect();
        state.records = records;
        state.index = index;
        self.watchers
            .notify(index, changed.iter().map(String::as_str));
        Ok(index)
    }

    fn watch(&self, prefix: &str) -> watch::Receiver<u64> {
        // The state lock orders this against commits: a commit either
        // finished before (its index is `current`) or notifies after.
        let state = self.lock();
        self.watchers.subscribe(prefix, state.index)
    }

    fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

// The suite needs the `conformance` feature, which this crate's tests turn on
// through its dev-dependency on itself.
#[cfg(all(test, feature = "conformance"))]
mod conformance {
    use super::MemoryStore;
    use crate::Store;
    use std::sync::Arc;

    crate::conformance_tests!(|| (Arc::new(MemoryStore::new()) as Arc<dyn Store>, ()));
}
