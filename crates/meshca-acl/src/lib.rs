//! meshca's access control: ACL tokens and policies kept as store records
//! (`acl/token/<AccessorID>`, `acl/policy/<ID>`, `acl/bootstrap`), the
//! one-time bootstrap, and [`Acl::resolve`], which turns a request's secret
//! into an [`Authorizer`](meshca_core::acl::Authorizer).
//!
//! Secrets are stored only as SHA-256 hashes, so a SecretID is returned once,
//! when the token is created, and never again. The whole ACL state is small;
//! it is loaded into a [`Table`] that is rebuilt after every ACL write and
//! swapped in atomically, so resolving a token costs one hash and one map
//! lookup. ACL writes touch only `acl/` records: they never re-seal CA keys
//! and never wake a roots watcher.
//!
//! *Architecture Invariant:* no HTTP types; the server maps [`AclError`].

mod records;
mod table;

pub use records::{PolicyRecord, TokenRecord, GLOBAL_MANAGEMENT_ID, GLOBAL_MANAGEMENT_NAME};
pub use table::ResolvedToken;

use arc_swap::ArcSwap;
use meshca_core::acl::Rules;
use meshca_core::{Clock, ServiceName};
use meshca_store::{schema, Store, StoreError, Txn};
use records::BootstrapRecord;
use secrecy::{ExposeSecret, SecretString};
use std::sync::{Arc, Mutex};
use table::{hash_hex, hash_secret, Table};
use uuid::Uuid;

/// Why an ACL operation failed, grouped by how the API answers.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// A secret that matches no token (Consul: 403 `ACL not found`).
    #[error("ACL not found")]
    TokenNotFound,
    /// A token or policy looked up by ID that does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Bootstrap after it was done.
    #[error("ACL bootstrap no longer allowed (reset index: {0})")]
    BootstrapDone(u64),
    /// The request is invalid (400), with Consul's wording where it has one.
    #[error("{0}")]
    Invalid(String),
    /// The store holds ACL records that do not parse.
    #[error("the ACL records are corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the caller asks a new token to be.
#[derive(Debug, Default)]
pub struct NewToken {
    pub description: String,
    /// Policies by ID or by name, as the API accepts them.
    pub policies: Vec<PolicyRef>,
    pub service_identities: Vec<String>,
    /// A SecretID chosen by the caller (a UUID, as Consul requires);
    /// generated when absent.
    pub secret_id: Option<SecretString>,
    /// An AccessorID chosen by the caller; generated when absent.
    pub accessor_id: Option<Uuid>,
}

/// A policy named in a token request.
#[derive(Debug, Clone)]
pub enum PolicyRef {
    Id(Uuid),
    Name(String),
}

/// What a caller asks a new or updated policy to be.
#[derive(Debug, Default)]
pub struct NewPolicy {
    pub name: String,
    pub description: String,
    pub rules: String,
}

/// A token just created: the only time its secret is known.
#[derive(Debug)]
pub struct CreatedToken {
    pub record: TokenRecord,
    pub secret_id: SecretString,
}

/// Attempts at an ACL write when another writer moved the store's index
/// between the read and the commit.
const WRITE_ATTEMPTS: usize = 8;

/// The ACL system over a store.
pub struct Acl {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    table: ArcSwap<Table>,
    /// One ACL writer at a time, so that checks made on the table (a
    /// policy name is free, a policy exists) still hold at commit.
    writer: Mutex<()>,
}

impl std::fmt::Debug for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acl").finish_non_exhaustive()
    }
}

impl Acl {
    /// Loads every ACL record of `store`; `clock` stamps new tokens.
    pub fn open(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Result<Self, AclError> {
        let table = load(&*store)?;
        Ok(Self {
            store,
            clock,
            table: ArcSwap::from_pointee(table),
            writer: Mutex::new(()),
        })
    }

    /// Reads every ACL record again (after the store was restored from a
    /// snapshot) and swaps the table in whole.
    pub fn reload(&self) -> Result<(), AclError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let table = load(&*self.store)?;
        self.table.store(Arc::new(table));
        Ok(())
    }

    /// The token `secret` belongs to.
    pub fn resolve(&self, secret: &str) -> Result<Arc<ResolvedToken>, AclError> {
        self.table
            .load()
            .resolve(&hash_secret(secret))
            .ok_or(AclError::TokenNotFound)
    }

    /// Whether the ACL system was bootstrapped, and at which index.
    pub fn bootstrapped_at(&self) -> Option<u64> {
        self.table.load().bootstrapped_at
    }

    /// `PUT /v1/acl/bootstrap`: the first management token, once. With
    /// `secret`, that secret is used (an `initial_management` token from
    /// the configuration).
    pub fn bootstrap(&self, secret: Option<SecretString>) -> Result<CreatedToken, AclError> {
        let _w = self.lock();
        if let Some(index) = self.table.load().bootstrapped_at {
            return Err(AclError::BootstrapDone(index));
        }
        let request = NewToken {
            description: "Bootstrap Token (Global Management)".into(),
            policies: vec![PolicyRef::Id(GLOBAL_MANAGEMENT_ID)],
            secret_id: secret,
            ..NewToken::default()
        };
        self.write_token(request, true)
    }

    /// Makes sure the configured `initial_management` token exists (Consul
    /// creates it on the first start and whenever it is missing); it also
    /// counts as the bootstrap. Returns whether it was created.
    pub fn ensure_initial_management(&self, secret: &SecretString) -> Result<bool, AclError> {
        if self.resolve(secret.expose_secret()).is_ok() {
            return Ok(false);
        }
        let _w = self.lock();
        let request = NewToken {
            description: "Initial Management Token".into(),
            policies: vec![PolicyRef::Id(GLOBAL_MANAGEMENT_ID)],
            secret_id: Some(secret.clone()),
            ..NewToken::default()
        };
        let bootstrap = self.table.load().bootstrapped_at.is_none();
        self.write_token(request, bootstrap)?;
        Ok(true)
    }

    pub fn create_token(&self, request: NewToken) -> Result<CreatedToken, AclError> {
        let _w = self.lock();
        self.write_token(request, false)
    }

    pub fn token(&self, accessor: Uuid) -> Result<TokenRecord, AclError> {
        self.table
            .load()
            .tokens
            .get(&accessor)
            .cloned()
            .ok_or_else(|| AclError::NotFound(format!("token {accessor}")))
    }

    pub fn tokens(&self) -> Vec<TokenRecord> {
        self.table.load().tokens.values().cloned().collect()
    }

    pub fn delete_token(&self, accessor: Uuid) -> Result<(), AclError> {
        let _w = self.lock();
        self.token(accessor)?;
        let key = format!("{}{accessor}", schema::ACL_TOKEN);
        self.commit(|_| Ok(Txn::new().delete(&key)))?;
        Ok(())
    }

    /// Every policy, the built-in `global-management` first.
    pub fn policies(&self) -> Vec<PolicyRecord> {
        let table = self.table.load();
        let mut all: Vec<PolicyRecord> = table.policies.values().cloned().collect();
        all.sort_by_key(|p| (p.id != GLOBAL_MANAGEMENT_ID, p.name.clone()));
        all
    }

    pub fn policy(&self, id: Uuid) -> Result<PolicyRecord, AclError> {
        self.table
            .load()
            .policies
            .get(&id)
            .cloned()
            .ok_or_else(|| AclError::NotFound(format!("policy {id}")))
    }

    pub fn policy_by_name(&self, name: &str) -> Result<PolicyRecord, AclError> {
        self.table
            .load()
            .policy_by_name(name)
            .cloned()
            .ok_or_else(|| AclError::NotFound(format!("policy {name:?}")))
    }

    /// Creates a policy (`id` None) or replaces one.
    pub fn write_policy(
        &self,
        id: Option<Uuid>,
        request: NewPolicy,
    ) -> Result<PolicyRecord, AclError> {
        validate_policy_name(&request.name)?;
        Rules::parse(&request.rules)
            .map_err(|e| AclError::Invalid(format!("Invalid Policy: {e}")))?;
        let _w = self.lock();
        let table = self.table.load();
        let existing =
            match id {
                Some(id) if id == GLOBAL_MANAGEMENT_ID => return Err(AclError::Invalid(
                    "Changing the rules of the builtin global-management policy is not permitted"
                        .into(),
                )),
                Some(id) => Some(self.policy(id)?),
                None => None,
            };
        if let Some(other) = table.policy_by_name(&request.name) {
            if Some(other.id) != id {
                return Err(AclError::Invalid(format!(
                    "Invalid Policy: A Policy with Name {:?} already exists",
                    request.name
                )));
            }
        }
        let id = id.unwrap_or_else(Uuid::new_v4);
        let mut written = None;
        self.commit(|index| {
            let record = PolicyRecord {
                id,
                name: request.name.clone(),
                description: request.description.clone(),
                rules: request.rules.clone(),
                create_index: existing.as_ref().map_or(index, |p| p.create_index),
                modify_index: index,
            };
            let txn = Txn::new().put(&format!("{}{id}", schema::ACL_POLICY), encode(&record)?);
            written = Some(record);
            Ok(txn)
        })?;
        written.ok_or_else(|| AclError::Corrupt("the policy write produced nothing".into()))
    }

    /// Deletes a policy; tokens that linked it simply lose what it granted.
    pub fn delete_policy(&self, id: Uuid) -> Result<(), AclError> {
        if id == GLOBAL_MANAGEMENT_ID {
            return Err(AclError::Invalid(
                "Deletion of the builtin global-management policy is not permitted".into(),
            ));
        }
        let _w = self.lock();
        self.policy(id)?;
        let key = format!("{}{id}", schema::ACL_POLICY);
        self.commit(|_| Ok(Txn::new().delete(&key)))?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called with the writer lock held.
    fn write_token(&self, request: NewToken, bootstrap: bool) -> Result<CreatedToken, AclError> {
        let table = self.table.load();
        let policies = request
            .policies
            .iter()
            .map(|p| match p {
                PolicyRef::Id(id) => table
                    .policies
                    .get(id)
                    .map(|p| p.id)
                    .ok_or_else(|| AclError::Invalid(format!("cannot find policy {id}"))),
                PolicyRef::Name(name) => table
                    .policy_by_name(name)
                    .map(|p| p.id)
                    .ok_or_else(|| AclError::Invalid(format!("cannot find policy {name:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        for s in &request.service_identities {
            s.parse::<ServiceName>().map_err(|e| {
                AclError::Invalid(format!("Service identity {s:?} has an invalid name: {e}"))
            })?;
        }
        let secret = match request.secret_id {
            Some(s) => {
                Uuid::parse_str(s.expose_secret()).map_err(|_| {
                    AclError::Invalid("Invalid Token: SecretID must be a UUID".into())
                })?;
                s
            }
            None => SecretString::from(Uuid::new_v4().to_string()),
        };
        let hash = hash_secret(secret.expose_secret());
        if table.resolve(&hash).is_some() {
            return Err(AclError::Invalid(
                "Invalid Token: SecretID is already in use".into(),
            ));
        }
        let accessor_id = request.accessor_id.unwrap_or_else(Uuid::new_v4);
        if table.tokens.contains_key(&accessor_id) {
            return Err(AclError::Invalid(
                "Invalid Token: AccessorID is already in use".into(),
            ));
        }
        let mut written = None;
        self.commit(|index| {
            let record = TokenRecord {
                accessor_id,
                secret_sha256: hash_hex(&hash),
                description: request.description.clone(),
                policies: policies.clone(),
                service_identities: request.service_identities.clone(),
                create_time: self.clock.now(),
                create_index: index,
                modify_index: index,
            };
            let key = format!("{}{accessor_id}", schema::ACL_TOKEN);
            let mut txn = Txn::new().check(&key, None).put(&key, encode(&record)?);
            if bootstrap {
                txn = txn
                    .check(schema::ACL_BOOTSTRAP, None)
                    .put(schema::ACL_BOOTSTRAP, encode(&BootstrapRecord { index })?);
            }
            written = Some(record);
            Ok(txn)
        })?;
        let record =
            written.ok_or_else(|| AclError::Corrupt("the token write produced nothing".into()))?;
        Ok(CreatedToken {
            record,
            secret_id: secret,
        })
    }

    /// Commits the transaction `build` makes for the next index, guarded
    /// by the index it read (retrying when a CA write moved it), then
    /// reloads the table.
    fn commit(&self, mut build: impl FnMut(u64) -> Result<Txn, AclError>) -> Result<u64, AclError> {
        let mut last = None;
        for _ in 0..WRITE_ATTEMPTS {
            let current = self.store.index()?;
            let index = current + 1;
            let txn = build(index)?.check_index(current);
            match self.store.commit(&txn) {
                Ok(committed) => {
                    self.table.store(Arc::new(load(&*self.store)?));
                    return Ok(committed);
                }
                Err(e @ StoreError::Conflict { .. }) => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map_or_else(
            || AclError::Corrupt("no write attempted".into()),
            AclError::from,
        ))
    }
}

/// Consul's rule for policy names.
fn validate_policy_name(name: &str) -> Result<(), AclError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(AclError::Invalid(format!(
            "Invalid Policy: invalid Name {name:?}: use 1 to 128 letters, digits, '-' and '_'"
        )))
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, AclError> {
    serde_json::to_vec(value).map_err(|e| AclError::Corrupt(e.to_string()))
}

fn load(store: &dyn Store) -> Result<Table, AclError> {
    let mut tokens = Vec::new();
    let mut policies = Vec::new();
    let mut bootstrapped_at = None;
    for (key, bytes) in store.scan(schema::ACL)? {
        let bad = |e: serde_json::Error| AclError::Corrupt(format!("{key}: {e}"));
        if key.starts_with(schema::ACL_TOKEN) {
            tokens.push(serde_json::from_slice(&bytes).map_err(bad)?);
        } else if key.starts_with(schema::ACL_POLICY) {
            policies.push(serde_json::from_slice(&bytes).map_err(bad)?);
        } else if key == schema::ACL_BOOTSTRAP {
            let b: BootstrapRecord = serde_json::from_slice(&bytes).map_err(bad)?;
            bootstrapped_at = Some(b.index);
        } else {
            return Err(AclError::Corrupt(format!("unknown ACL record {key}")));
        }
    }
    Table::build(tokens, policies, bootstrapped_at)
}

#[cfg(test)]
mod tests;
