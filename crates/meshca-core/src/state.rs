//! The CA's durable state: what the store persists and the server publishes.
//!
//! These are domain records, not wire types: the server converts them to
//! Consul's PascalCase JSON (`IndexedCARoots`, `CARoot`) explicitly.

use crate::config::CaConfig;
use crate::duration::GoDuration;
use crate::keyspec::KeySpec;
use crate::secret::SecretBytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// One trusted root and the certificates that chain leaves to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredRoot", into = "StoredRoot")]
pub struct CaRoot {
    /// SHA-1 of the root certificate's DER, lower-case colon-hex.
    pub id: String,
    pub name: String,
    pub serial_number: u64,
    /// Colon-hex SubjectKeyId of the certificate that signs leaves now.
    pub signing_key_id: String,
    /// The cluster ID.
    pub external_trust_domain: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// PEM, ending in a newline.
    pub root_cert: String,
    /// PEMs: the cross-signed certificate (if any) first, the current signing
    /// certificate last.
    pub intermediate_certs: Vec<String>,
    pub active: bool,
    pub rotated_out_at: Option<OffsetDateTime>,
    /// The root's key type and size (`PrivateKeyType` + `PrivateKeyBits`).
    pub key_spec: KeySpec,
    /// The longest `LeafCertTTL` in force while this root was active: a
    /// rotated-out root is kept until leaves that long have expired, even
    /// if the TTL was lowered since. Zero when unknown (stores written
    /// before it was recorded), then the current TTL counts.
    pub max_leaf_cert_ttl: GoDuration,
    pub create_index: u64,
    pub modify_index: u64,
}

/// The stored form of a [`CaRoot`]: the key spec as Consul's type string and
/// bit count, as stores written before the enum hold it.
#[derive(Serialize, Deserialize)]
struct StoredRoot {
    id: String,
    name: String,
    serial_number: u64,
    signing_key_id: String,
    external_trust_domain: String,
    #[serde(with = "time::serde::rfc3339")]
    not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    not_after: OffsetDateTime,
    root_cert: String,
    intermediate_certs: Vec<String>,
    active: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    rotated_out_at: Option<OffsetDateTime>,
    private_key_type: String,
    private_key_bits: u32,
    #[serde(default)]
    max_leaf_cert_ttl: GoDuration,
    create_index: u64,
    modify_index: u64,
}

impl TryFrom<StoredRoot> for CaRoot {
    type Error = crate::keyspec::KeySpecError;

    fn try_from(r: StoredRoot) -> Result<Self, Self::Error> {
        Ok(Self {
            key_spec: KeySpec::from_type_and_bits(&r.private_key_type, r.private_key_bits)?,
            max_leaf_cert_ttl: r.max_leaf_cert_ttl,
            id: r.id,
            name: r.name,
            serial_number: r.serial_number,
            signing_key_id: r.signing_key_id,
            external_trust_domain: r.external_trust_domain,
            not_before: r.not_before,
            not_after: r.not_after,
            root_cert: r.root_cert,
            intermediate_certs: r.intermediate_certs,
            active: r.active,
            rotated_out_at: r.rotated_out_at,
            create_index: r.create_index,
            modify_index: r.modify_index,
        })
    }
}

impl From<CaRoot> for StoredRoot {
    fn from(r: CaRoot) -> Self {
        Self {
            private_key_type: r.key_spec.key_type().to_string(),
            private_key_bits: r.key_spec.bits(),
            max_leaf_cert_ttl: r.max_leaf_cert_ttl,
            id: r.id,
            name: r.name,
            serial_number: r.serial_number,
            signing_key_id: r.signing_key_id,
            external_trust_domain: r.external_trust_domain,
            not_before: r.not_before,
            not_after: r.not_after,
            root_cert: r.root_cert,
            intermediate_certs: r.intermediate_certs,
            active: r.active,
            rotated_out_at: r.rotated_out_at,
            create_index: r.create_index,
            modify_index: r.modify_index,
        }
    }
}

/// The stored configuration and its indexes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredConfig {
    pub config: CaConfig,
    pub create_index: u64,
    pub modify_index: u64,
}

/// Everything the CA needs to come back after a restart, committed as one unit.
///
/// `private_keys` maps a key handle (named in `provider_state`) to PKCS#8 DER.
/// The store seals them (AES-256-GCM) before they reach the disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaState {
    pub cluster_id: Uuid,
    pub config: StoredConfig,
    pub roots: Vec<CaRoot>,
    /// Provider-specific public bookkeeping (e.g. which key handle signs now).
    pub provider_state: BTreeMap<String, String>,
    pub private_keys: BTreeMap<String, SecretBytes>,
    /// The global index at which this state was committed.
    pub modify_index: u64,
    /// `Some(primary)` for a secondary datacenter's CA: its roots are the
    /// primary's and it holds only its own intermediate's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_datacenter: Option<String>,
}

impl CaState {
    pub fn active_root(&self) -> Option<&CaRoot> {
        self.roots.iter().find(|r| r.active)
    }

    /// The trust domain, `<cluster-id>.consul`.
    pub fn trust_domain(&self) -> crate::spiffe::TrustDomain {
        crate::spiffe::TrustDomain::for_cluster(&self.cluster_id)
    }
}

/// A CA as a provider hands it over: the root, the certificate that signs
/// leaves, and what must be persisted to bring the same keys back later.
/// Staged material is inert: it becomes the CA only when the engine commits
/// and publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CaMaterial {
    pub root_pem: String,
    pub signing_pem: String,
    pub key_spec: KeySpec,
    /// Key handle → PKCS#8 DER. Empty for providers that keep keys elsewhere.
    pub private_keys: BTreeMap<String, SecretBytes>,
    /// Public bookkeeping the provider needs to find its keys again.
    pub provider_state: BTreeMap<String, String>,
}
