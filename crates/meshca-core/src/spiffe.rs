//! SPIFFE identities meshca issues (SPEC §1) and their strict parser.
//!
//! STUB: signatures fixed, bodies to be completed.

use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// `<cluster-id>.consul`, always lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn for_cluster(cluster_id: &Uuid) -> Self {
        Self(format!("{}.consul", cluster_id.hyphenated()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The CA's own signing identity, `spiffe://<trust-domain>`.
    pub fn ca_uri(&self) -> String {
        format!("spiffe://{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("invalid SPIFFE ID: {0}")]
    Invalid(String),
}

/// One of the four identity kinds of SPEC §1. Fields are validated segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SpiffeId {
    Service {
        trust_domain: TrustDomain,
        namespace: String,
        datacenter: String,
        service: String,
    },
    Agent {
        trust_domain: TrustDomain,
        datacenter: String,
        node: String,
    },
    Server {
        trust_domain: TrustDomain,
        datacenter: String,
    },
    MeshGateway {
        trust_domain: TrustDomain,
        datacenter: String,
    },
}

impl SpiffeId {
    pub fn trust_domain(&self) -> &TrustDomain {
        match self {
            Self::Service { trust_domain, .. }
            | Self::Agent { trust_domain, .. }
            | Self::Server { trust_domain, .. }
            | Self::MeshGateway { trust_domain, .. } => trust_domain,
        }
    }

    pub fn datacenter(&self) -> &str {
        match self {
            Self::Service { datacenter, .. }
            | Self::Agent { datacenter, .. }
            | Self::Server { datacenter, .. }
            | Self::MeshGateway { datacenter, .. } => datacenter,
        }
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Err(SpiffeError::Invalid(s.to_string()))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service {
                trust_domain,
                namespace,
                datacenter,
                service,
            } => write!(
                f,
                "spiffe://{trust_domain}/ns/{namespace}/dc/{datacenter}/svc/{service}"
            ),
            Self::Agent {
                trust_domain,
                datacenter,
                node,
            } => write!(f, "spiffe://{trust_domain}/agent/client/dc/{datacenter}/id/{node}"),
            Self::Server {
                trust_domain,
                datacenter,
            } => write!(f, "spiffe://{trust_domain}/agent/server/dc/{datacenter}"),
            Self::MeshGateway {
                trust_domain,
                datacenter,
            } => write!(f, "spiffe://{trust_domain}/gateway/mesh/dc/{datacenter}"),
        }
    }
}

/// Validates one name used as a path segment (service, node, namespace,
/// datacenter name).
pub fn validate_segment(kind: &str, s: &str) -> Result<(), SpiffeError> {
    let _ = kind;
    Err(SpiffeError::Invalid(s.to_string()))
}
