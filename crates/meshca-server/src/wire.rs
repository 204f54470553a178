//! Wire types: Consul's PascalCase JSON bodies, converted explicitly from
//! the domain records of `meshca-core`.

use meshca_core::state::CaRoot;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IndexedCaRoots {
    #[serde(rename = "ActiveRootID")]
    pub active_root_id: String,
    pub trust_domain: String,
    pub roots: Vec<CaRootWire>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaRootWire {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub serial_number: u64,
    #[serde(rename = "SigningKeyID")]
    pub signing_key_id: String,
    pub external_trust_domain: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub root_cert: String,
    pub intermediate_certs: Option<Vec<String>>,
    pub active: bool,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub rotated_out_at: Option<OffsetDateTime>,
    pub private_key_type: String,
    pub private_key_bits: u32,
    pub create_index: u64,
    pub modify_index: u64,
}

impl From<&CaRoot> for CaRootWire {
    fn from(r: &CaRoot) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            serial_number: r.serial_number,
            signing_key_id: r.signing_key_id.clone(),
            external_trust_domain: r.external_trust_domain.clone(),
            not_before: r.not_before,
            not_after: r.not_after,
            root_cert: r.root_cert.clone(),
            intermediate_certs: (!r.intermediate_certs.is_empty())
                .then(|| r.intermediate_certs.clone()),
            active: r.active,
            rotated_out_at: r.rotated_out_at,
            private_key_type: r.key_spec.key_type().to_string(),
            private_key_bits: r.key_spec.bits(),
            create_index: r.create_index,
            modify_index: r.modify_index,
        }
    }
}

/// `IssuedCert`: a signed leaf. `PrivateKeyPEM` only on the agent leaf endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IssuedCert {
    pub serial_number: String,
    #[serde(rename = "CertPEM")]
    pub cert_pem: String,
    #[serde(
        rename = "PrivateKeyPEM",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub private_key_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub service: Option<String>,
    #[serde(
        rename = "ServiceURI",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub service_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub agent: Option<String>,
    #[serde(rename = "AgentURI", skip_serializing_if = "Option::is_none", default)]
    pub agent_uri: Option<String>,
    #[serde(rename = "ServerURI", skip_serializing_if = "Option::is_none", default)]
    pub server_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kind: Option<String>,
    #[serde(rename = "KindURI", skip_serializing_if = "Option::is_none", default)]
    pub kind_uri: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub valid_after: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub valid_before: OffsetDateTime,
    pub create_index: u64,
    pub modify_index: u64,
}

/// `CAConfiguration` as `GET /v1/connect/ca/configuration` returns it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaConfiguration {
    #[serde(rename = "ClusterID")]
    pub cluster_id: String,
    pub provider: String,
    pub config: Map<String, Value>,
    pub state: Option<Map<String, Value>>,
    pub force_without_cross_signing: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

/// Body of `PUT /v1/connect/ca/configuration`. Unknown top-level fields are
/// tolerated (Consul clients send `ClusterID`, indexes) but typed fields must
/// have the right type.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaConfigurationUpdate {
    #[serde(default)]
    pub provider: String,
    #[serde(default)]
    pub config: Map<String, Value>,
    #[serde(default)]
    pub state: Option<Map<String, Value>>,
    #[serde(default)]
    pub force_without_cross_signing: bool,
}

/// Body of `POST /v1/connect/ca/sign`.
#[derive(Debug, Clone, Deserialize)]
pub struct SignRequest {
    #[serde(rename = "CSR")]
    pub csr: String,
}

/// Answer of `POST /v1/connect/ca/sign-intermediate`.
#[derive(Debug, Clone, Serialize)]
pub struct SignedIntermediate {
    #[serde(rename = "CertPEM")]
    pub cert_pem: String,
}

impl From<CaConfigurationUpdate> for meshca_ca::ConfigChange {
    fn from(u: CaConfigurationUpdate) -> Self {
        Self {
            provider: u.provider,
            config: u.config,
            state: u.state,
            force_without_cross_signing: u.force_without_cross_signing,
        }
    }
}

impl From<&meshca_ca::Published> for IndexedCaRoots {
    fn from(p: &meshca_ca::Published) -> Self {
        Self {
            active_root_id: p.active_root_id.clone(),
            trust_domain: p.trust_domain.to_string(),
            roots: p.roots.iter().map(CaRootWire::from).collect(),
        }
    }
}

/// `GET /v1/connect/ca/configuration`: secrets redacted.
impl From<&meshca_ca::Published> for CaConfiguration {
    fn from(p: &meshca_ca::Published) -> Self {
        Self {
            cluster_id: p.cluster_id.to_string(),
            provider: p.config.provider().as_str().to_string(),
            config: p.config.to_wire(true),
            state: None,
            force_without_cross_signing: false,
            create_index: p.config_create_index,
            modify_index: p.index,
        }
    }
}

/// The one place a generated private key leaves its secret wrapper: the
/// agent leaf endpoint's `PrivateKeyPEM`.
impl From<&meshca_ca::IssuedLeaf> for IssuedCert {
    fn from(leaf: &meshca_ca::IssuedLeaf) -> Self {
        use meshca_core::SpiffeId;
        use secrecy::ExposeSecret as _;
        let id = leaf.spiffe_id.uri();
        let mut out = IssuedCert {
            serial_number: leaf.serial.to_string(),
            cert_pem: leaf.cert_pem.clone(),
            private_key_pem: leaf
                .private_key_pem
                .as_ref()
                .map(|k| k.expose_secret().to_string()),
            service: None,
            service_uri: None,
            agent: None,
            agent_uri: None,
            server_uri: None,
            kind: None,
            kind_uri: None,
            valid_after: leaf.valid_after,
            valid_before: leaf.valid_before,
            create_index: leaf.index,
            modify_index: leaf.index,
        };
        match &leaf.spiffe_id {
            SpiffeId::Service { service, .. } => {
                out.service = Some(service.to_string());
                out.service_uri = Some(id);
            }
            SpiffeId::Agent { node, .. } => {
                out.agent = Some(node.to_string());
                out.agent_uri = Some(id);
            }
            SpiffeId::Server { .. } => out.server_uri = Some(id),
            SpiffeId::MeshGateway { .. } => {
                out.kind = Some("mesh-gateway".into());
                out.kind_uri = Some(id);
            }
        }
        out
    }
}

/// A secondary datacenter's contact with its primary, in `GET /v1/health`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrimaryHealth {
    pub datacenter: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_contact: Option<OffsetDateTime>,
    pub error: Option<String>,
    pub failures: u64,
    /// Until when leaves can still be signed without the primary.
    #[serde(with = "time::serde::rfc3339")]
    pub signing_cert_not_after: OffsetDateTime,
}

impl PrimaryHealth {
    pub fn new(link: meshca_ca::LinkStatus, signing_cert_not_after: OffsetDateTime) -> Self {
        Self {
            datacenter: link.primary_datacenter,
            last_contact: link.last_contact,
            error: link.error,
            failures: link.failures,
            signing_cert_not_after,
        }
    }
}
