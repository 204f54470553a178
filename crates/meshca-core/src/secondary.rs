//! A secondary datacenter's CA as pure transitions. A secondary has no root
//! of its own: it trusts the primary datacenter's roots, and signs leaves
//! with its own intermediate, which the primary's active root signed. Its
//! state is the primary's bundle with that intermediate appended to the
//! active root's chain:
//!
//! `IntermediateCerts = [the primary's chain (cross-signed first)…, ours]`
//!
//! so a leaf ships with every certificate a peer needs, including the
//! cross-signature that lets peers which still trust only the old root
//! accept it.

use crate::config::CaConfig;
use crate::csr::key_spec_of;
use crate::rotation::{first_cert_der, PlanError, ROOT_NAME};
use crate::serial::Serial;
use crate::spiffe::TrustDomain;
use crate::state::{CaMaterial, CaRoot, CaState, StoredConfig};
use crate::x509::{cert_facts, cert_id, colon_hex};
use time::OffsetDateTime;
use uuid::Uuid;

/// One of the primary's roots, as its roots endpoint publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryRoot {
    pub id: String,
    pub root_cert: String,
    /// The primary's chain for this root: cross-signed certificate first.
    pub intermediate_certs: Vec<String>,
    pub active: bool,
}

/// The primary's trust bundle at its `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryRoots {
    pub index: u64,
    pub trust_domain: TrustDomain,
    pub active_root_id: String,
    pub roots: Vec<PrimaryRoot>,
}

impl PrimaryRoots {
    pub fn active(&self) -> Option<&PrimaryRoot> {
        self.roots.iter().find(|r| r.active)
    }

    /// The one active root, which must be the one `ActiveRootID` names.
    pub fn checked_active(&self) -> Result<&PrimaryRoot, PlanError> {
        let mut active = self.roots.iter().filter(|r| r.active);
        match (active.next(), active.next()) {
            (Some(r), None) if r.id == self.active_root_id => Ok(r),
            (Some(_), None) => Err(plan(format!(
                "the primary's active root is not its ActiveRootID {}",
                self.active_root_id
            ))),
            (None, _) => Err(plan("the primary publishes no active root")),
            (Some(_), Some(_)) => Err(plan("the primary publishes two active roots")),
        }
    }

    /// The cluster ID behind the primary's trust domain (`<cluster-id>.consul`).
    pub fn cluster_id(&self) -> Result<Uuid, PlanError> {
        let td = self.trust_domain.as_str();
        td.strip_suffix(".consul")
            .and_then(|id| Uuid::parse_str(id).ok())
            .filter(|id| TrustDomain::for_cluster(id) == self.trust_domain)
            .ok_or_else(|| {
                plan(format!(
                    "the primary's trust domain {td} is not <cluster-id>.consul"
                ))
            })
    }
}

fn plan(msg: impl Into<String>) -> PlanError {
    PlanError(msg.into())
}

/// The certificate this datacenter signs leaves with: the last of the
/// active root's chain.
pub fn own_intermediate(state: &CaState) -> Option<&str> {
    state
        .active_root()
        .and_then(|r| r.intermediate_certs.last())
        .map(String::as_str)
}

/// Whether our intermediate must be replaced to follow `primary`: its active
/// root is another one than ours (a rotation in the primary).
pub fn needs_new_intermediate(state: &CaState, primary: &PrimaryRoots) -> bool {
    state.active_root().map(|r| &r.id) != Some(&primary.active_root_id)
}

/// Whether `state` already shows `primary`'s bundle: the same roots, the
/// same active one, and the same primary chains (ours aside).
pub fn shows_bundle(state: &CaState, primary: &PrimaryRoots) -> bool {
    let ours = state.roots.iter().map(|r| {
        let chain = if r.active {
            &r.intermediate_certs[..r.intermediate_certs.len().saturating_sub(1)]
        } else {
            &r.intermediate_certs[..]
        };
        (&r.id, r.active, chain)
    });
    let theirs = primary
        .roots
        .iter()
        .map(|r| (&r.id, r.active, &r.intermediate_certs[..]));
    ours.eq(theirs)
}

/// The secondary's state following `primary`: its roots, with `own` (a new
/// intermediate, signed by the primary's active root) or else the
/// intermediate `prev` signs with, appended to the active root's chain.
/// Records that did not change keep their indexes; the rest get `index`.
pub struct Follow<'a> {
    pub prev: Option<&'a CaState>,
    pub primary: &'a PrimaryRoots,
    pub primary_datacenter: &'a str,
    pub config: CaConfig,
    pub own: Option<&'a CaMaterial>,
    pub now: OffsetDateTime,
    pub index: u64,
}

impl Follow<'_> {
    pub fn state(self) -> Result<CaState, PlanError> {
        let cluster_id = self.primary.cluster_id()?;
        self.primary.checked_active()?;
        let prev = self.prev;
        if prev.is_some_and(|p| p.cluster_id != cluster_id) {
            return Err(plan(format!(
                "the primary's trust domain changed to {}: a secondary follows one trust domain",
                self.primary.trust_domain
            )));
        }
        let (signing_pem, private_keys, provider_state) = match (self.own, prev) {
            (Some(m), _) => (
                m.signing_pem.clone(),
                m.private_keys.clone(),
                m.provider_state.clone(),
            ),
            (None, Some(p)) => (
                own_intermediate(p)
                    .ok_or_else(|| plan("the secondary has no intermediate"))?
                    .to_string(),
                p.private_keys.clone(),
                p.provider_state.clone(),
            ),
            (None, None) => return Err(plan("a new secondary needs an intermediate")),
        };
        let roots = self
            .primary
            .roots
            .iter()
            .map(|r| self.root(r, &signing_pem, &cluster_id))
            .collect::<Result<Vec<_>, _>>()?;
        let config = match prev.map(|p| &p.config) {
            Some(c) if c.config == self.config => c.clone(),
            other => StoredConfig {
                config: self.config,
                create_index: other.map_or(self.index, |c| c.create_index),
                modify_index: self.index,
            },
        };
        Ok(CaState {
            cluster_id,
            config,
            roots,
            provider_state,
            private_keys,
            modify_index: self.index,
            primary_datacenter: Some(self.primary_datacenter.to_string()),
        })
    }

    fn root(
        &self,
        r: &PrimaryRoot,
        signing_pem: &str,
        cluster_id: &Uuid,
    ) -> Result<CaRoot, PlanError> {
        let der = first_cert_der(&r.root_cert)?;
        if cert_id(&der) != r.id {
            return Err(plan(format!(
                "the primary's root {} does not match its certificate",
                r.id
            )));
        }
        let facts = cert_facts(&der).map_err(plan)?;
        let key_spec =
            key_spec_of(&facts.spki_der).map_err(|e| plan(format!("root {}: {e}", r.id)))?;
        let serial = Serial::from_bytes(&facts.serial).map_err(|e| plan(e.to_string()))?;
        let mut chain = r.intermediate_certs.clone();
        if r.active {
            chain.push(signing_pem.to_string());
        }
        let signing_skid = match chain.last() {
            Some(pem) => {
                cert_facts(&first_cert_der(pem)?)
                    .map_err(plan)?
                    .subject_key_id
            }
            None => facts.subject_key_id.clone(),
        };
        let old = self
            .prev
            .and_then(|p| p.roots.iter().find(|o| o.id == r.id));
        let mut max_leaf = old.map(|o| o.max_leaf_cert_ttl).unwrap_or_default();
        if r.active && self.config.leaf_cert_ttl() > max_leaf {
            max_leaf = self.config.leaf_cert_ttl();
        }
        let mut root = CaRoot {
            id: r.id.clone(),
            name: ROOT_NAME.to_string(),
            serial_number: serial.low_u64(),
            signing_key_id: colon_hex(&signing_skid.unwrap_or_default()),
            external_trust_domain: cluster_id.to_string(),
            not_before: facts.not_before,
            not_after: facts.not_after,
            root_cert: r.root_cert.clone(),
            intermediate_certs: chain,
            active: r.active,
            rotated_out_at: match r.active {
                true => None,
                false => old.and_then(|o| o.rotated_out_at).or(Some(self.now)),
            },
            key_spec,
            max_leaf_cert_ttl: max_leaf,
            create_index: old.map_or(self.index, |o| o.create_index),
            modify_index: self.index,
        };
        if let Some(old) = old.filter(|o| same_but_index(o, &root)) {
            root.modify_index = old.modify_index;
        }
        Ok(root)
    }
}

fn same_but_index(a: &CaRoot, b: &CaRoot) -> bool {
    CaRoot {
        modify_index: b.modify_index,
        ..a.clone()
    } == *b
}

#[cfg(test)]
mod tests;
