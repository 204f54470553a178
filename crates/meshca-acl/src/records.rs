//! ACL records as the store holds them (plain JSON: no secret is stored).

use meshca_core::acl::Rules;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The ID of the built-in policy that allows everything, as in Consul.
pub const GLOBAL_MANAGEMENT_ID: Uuid = Uuid::from_u128(1);
/// Its name.
pub const GLOBAL_MANAGEMENT_NAME: &str = "global-management";

/// `acl/token/<AccessorID>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub accessor_id: Uuid,
    /// SHA-256 of the SecretID, lower-case hex. The secret itself is never
    /// stored.
    pub secret_sha256: String,
    pub description: String,
    /// Policy IDs. A policy deleted later is skipped when the token is
    /// resolved.
    pub policies: Vec<Uuid>,
    /// Service names this token may act as (Consul's service identities).
    pub service_identities: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub create_time: OffsetDateTime,
    pub create_index: u64,
    pub modify_index: u64,
}

/// `acl/policy/<ID>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// The rules as the operator wrote them (JSON or HCL), validated.
    pub rules: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl PolicyRecord {
    /// The built-in `global-management` policy: never stored, never
    /// changed or deleted.
    pub fn global_management() -> Self {
        Self {
            id: GLOBAL_MANAGEMENT_ID,
            name: GLOBAL_MANAGEMENT_NAME.into(),
            description: "Builtin Policy that grants unlimited access".into(),
            rules: r#"{"operator":"write","acl":"write","mesh":"write","service_prefix":{"":{"policy":"write"}},"node_prefix":{"":{"policy":"write"}}}"#.into(),
            create_index: 0,
            modify_index: 0,
        }
    }

    /// The parsed rules (validated when the policy was written).
    pub fn parsed_rules(&self) -> Result<Rules, meshca_core::acl::RulesError> {
        if self.id == GLOBAL_MANAGEMENT_ID {
            return Ok(Rules::management());
        }
        Rules::parse(&self.rules)
    }
}

/// `acl/bootstrap`: the ACL system was bootstrapped at this index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRecord {
    pub index: u64,
}
