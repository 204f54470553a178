//! The in-memory view of every ACL record: what a request's secret
//! resolves to, built once per ACL change (not per request).

use crate::records::{PolicyRecord, TokenRecord};
use crate::AclError;
use meshca_core::acl::{Authorizer, Rules};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// A token resolved to what it may do.
#[derive(Debug)]
pub struct ResolvedToken {
    pub accessor_id: Uuid,
    pub authorizer: Authorizer,
    secret_sha256: [u8; 32],
}

/// Every token and policy, and the tokens by the hash of their secret.
#[derive(Debug, Default)]
pub struct Table {
    pub(crate) tokens: BTreeMap<Uuid, TokenRecord>,
    pub(crate) policies: BTreeMap<Uuid, PolicyRecord>,
    pub(crate) bootstrapped_at: Option<u64>,
    by_secret: HashMap<[u8; 32], Arc<ResolvedToken>>,
}

impl Table {
    pub(crate) fn build(
        tokens: Vec<TokenRecord>,
        stored_policies: Vec<PolicyRecord>,
        bootstrapped_at: Option<u64>,
    ) -> Result<Self, AclError> {
        let mut policies: BTreeMap<Uuid, PolicyRecord> =
            stored_policies.into_iter().map(|p| (p.id, p)).collect();
        let builtin = PolicyRecord::global_management();
        policies.insert(builtin.id, builtin);
        let mut rules: HashMap<Uuid, Rules> = HashMap::new();
        for p in policies.values() {
            let parsed = p.parsed_rules().map_err(|e| {
                AclError::Corrupt(format!("stored policy {} ({}): {e}", p.id, p.name))
            })?;
            rules.insert(p.id, parsed);
        }
        let mut by_secret = HashMap::new();
        for t in &tokens {
            let hash = parse_hash(&t.secret_sha256).ok_or_else(|| {
                AclError::Corrupt(format!("token {}: malformed secret hash", t.accessor_id))
            })?;
            let identities: Vec<Rules> = t
                .service_identities
                .iter()
                .map(|s| Rules::service_identity(s))
                .collect();
            let all = t
                .policies
                .iter()
                .filter_map(|id| rules.get(id))
                .chain(identities.iter());
            let resolved = ResolvedToken {
                accessor_id: t.accessor_id,
                authorizer: Authorizer::new(all),
                secret_sha256: hash,
            };
            by_secret.insert(hash, Arc::new(resolved));
        }
        Ok(Self {
            tokens: tokens.into_iter().map(|t| (t.accessor_id, t)).collect(),
            policies,
            bootstrapped_at,
            by_secret,
        })
    }

    /// The token whose secret hashes to `hash`. The map is keyed by the
    /// hash, so the time a lookup takes says nothing useful about any
    /// secret; the final comparison is constant-time all the same.
    pub(crate) fn resolve(&self, hash: &[u8; 32]) -> Option<Arc<ResolvedToken>> {
        let found = self.by_secret.get(hash)?;
        bool::from(found.secret_sha256.ct_eq(hash)).then(|| found.clone())
    }

    pub(crate) fn policy_by_name(&self, name: &str) -> Option<&PolicyRecord> {
        self.policies.values().find(|p| p.name == name)
    }
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// SHA-256 of a secret, as the table and the records key it.
pub(crate) fn hash_secret(secret: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub(crate) fn hash_hex(hash: &[u8; 32]) -> String {
    hex::encode(hash)
}
