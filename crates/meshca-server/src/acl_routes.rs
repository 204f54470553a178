//! The `/v1/acl/` endpoints: bootstrap, tokens and policies, in Consul's
//! wire format. A token's SecretID is shown once, in the answer that
//! creates it; afterwards it reads as `<hidden>` (only its hash is kept).

use crate::auth::{Caller, Remote};
use crate::error::ApiError;
use crate::routes::{decode_body, to_json, AppState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use meshca_acl::{Acl, CreatedToken, NewPolicy, NewToken, PolicyRecord, PolicyRef, TokenRecord};
use meshca_core::acl::{Access, Permission};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

/// What a SecretID reads as after creation, as in Consul.
const HIDDEN: &str = "<hidden>";

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PolicyLink {
    #[serde(rename = "ID")]
    id: Uuid,
    name: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ServiceIdentity {
    service_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    datacenters: Vec<String>,
}

/// `ACLToken` as Consul renders it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TokenOut {
    #[serde(rename = "AccessorID")]
    accessor_id: Uuid,
    #[serde(rename = "SecretID")]
    secret_id: String,
    description: String,
    policies: Vec<PolicyLink>,
    service_identities: Vec<ServiceIdentity>,
    local: bool,
    create_time: String,
    create_index: u64,
    modify_index: u64,
}

/// `ACLPolicy` as Consul renders it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PolicyOut {
    #[serde(rename = "ID")]
    id: Uuid,
    name: String,
    description: String,
    rules: String,
    create_index: u64,
    modify_index: u64,
}

impl From<PolicyRecord> for PolicyOut {
    fn from(p: PolicyRecord) -> Self {
        Self {
            id: p.id,
            name: p.name,
            description: p.description,
            rules: p.rules,
            create_index: p.create_index,
            modify_index: p.modify_index,
        }
    }
}

/// A policy named in a token request: `{"ID": …}` or `{"Name": …}`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct PolicyLinkIn {
    #[serde(rename = "ID")]
    id: Option<Uuid>,
    name: Option<String>,
}

/// `PUT /v1/acl/token`'s body. Fields meshca cannot honour are refused
/// rather than ignored.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
struct TokenIn {
    #[serde(rename = "AccessorID")]
    accessor_id: Option<Uuid>,
    #[serde(rename = "SecretID")]
    secret_id: Option<String>,
    description: String,
    policies: Vec<PolicyLinkIn>,
    service_identities: Vec<ServiceIdentity>,
    local: bool,
}

/// `PUT /v1/acl/policy`'s body.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
struct PolicyIn {
    #[serde(rename = "ID")]
    id: Option<Uuid>,
    name: String,
    description: String,
    rules: String,
    datacenters: Vec<String>,
}

fn acl_of(app: &AppState) -> Result<&Arc<Acl>, ApiError> {
    app.acl.as_ref().ok_or(ApiError::AclDisabled)
}

fn token_out(acl: &Acl, t: TokenRecord, secret: Option<&SecretString>) -> TokenOut {
    let policies = t
        .policies
        .iter()
        .filter_map(|id| acl.policy(*id).ok())
        .map(|p| PolicyLink {
            id: p.id,
            name: p.name,
        })
        .collect();
    TokenOut {
        accessor_id: t.accessor_id,
        secret_id: secret.map_or_else(|| HIDDEN.into(), |s| s.expose_secret().to_string()),
        description: t.description,
        policies,
        service_identities: t
            .service_identities
            .into_iter()
            .map(|s| ServiceIdentity {
                service_name: s,
                datacenters: vec![],
            })
            .collect(),
        local: false,
        create_time: t
            .create_time
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        create_index: t.create_index,
        modify_index: t.modify_index,
    }
}

fn created(acl: &Acl, c: CreatedToken) -> Result<Response, ApiError> {
    to_json(&token_out(acl, c.record, Some(&c.secret_id)))
}

/// A path's ID: the hyphenated form only (`8-4-4-4-12` hex digits), as
/// Consul parses it; braces, `urn:uuid:` and bare hex are refused.
fn parse_id(text: &str, what: &str) -> Result<Uuid, ApiError> {
    Some(text)
        .filter(|t| t.len() == uuid::fmt::Hyphenated::LENGTH)
        .and_then(|t| Uuid::try_parse(t).ok())
        .ok_or_else(|| ApiError::BadRequest(format!("{what} must be a UUID")))
}

/// `PUT /v1/acl/bootstrap`: the first management token, once.
pub async fn bootstrap(State(app): State<AppState>, remote: Remote) -> Result<Response, ApiError> {
    let acl = acl_of(&app)?;
    let token = acl.bootstrap(None)?;
    tracing::info!(target: "audit", accessor = %token.record.accessor_id,
        remote = %remote.addr_text(), request_id = remote.request_id_text(), "ACL bootstrapped");
    created(acl, token)
}

/// `PUT /v1/acl/token`.
pub async fn create_token(
    State(app): State<AppState>,
    caller: Caller,
    remote: Remote,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(&Permission::acl(Access::Write))?;
    let acl = acl_of(&app)?;
    let req: TokenIn = decode_body(body)?;
    let _ = req.local; // Meaningful across datacenters only.
    let policies = req
        .policies
        .into_iter()
        .map(|p| match (p.id, p.name) {
            (Some(id), _) => Ok(PolicyRef::Id(id)),
            (None, Some(name)) => Ok(PolicyRef::Name(name)),
            (None, None) => Err(ApiError::BadRequest(
                "a policy link needs an ID or a Name".into(),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if req
        .service_identities
        .iter()
        .any(|s| !s.datacenters.is_empty())
    {
        return Err(ApiError::BadRequest(
            "ServiceIdentities: Datacenters is not supported (meshca serves one datacenter)".into(),
        ));
    }
    let token = acl.create_token(NewToken {
        description: req.description,
        policies,
        service_identities: req
            .service_identities
            .into_iter()
            .map(|s| s.service_name)
            .collect(),
        secret_id: req.secret_id.map(SecretString::from),
        accessor_id: req.accessor_id,
    })?;
    tracing::info!(target: "audit", requester = %caller.audit_name(),
        remote = %remote.addr_text(), request_id = remote.request_id_text(),
        accessor = %token.record.accessor_id, "ACL token created");
    created(acl, token)
}

/// `GET /v1/acl/token/self`: the caller's own token; any valid token may.
pub async fn token_self(State(app): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let acl = acl_of(&app)?;
    let Caller::Token(t) = &caller else {
        return Err(ApiError::AclNotFound);
    };
    to_json(&token_out(acl, acl.token(t.accessor_id)?, None))
}

/// `GET /v1/acl/token/<AccessorID>`.
pub async fn read_token(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(&Permission::acl(Access::Read))?;
    let acl = acl_of(&app)?;
    let t = acl.token(parse_id(&id, "AccessorID")?)?;
    to_json(&token_out(acl, t, None))
}

/// `DELETE /v1/acl/token/<AccessorID>`.
pub async fn delete_token(
    State(app): State<AppState>,
    caller: Caller,
    remote: Remote,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    delete_object(&app, &caller, &remote, &id, AclObject::Token)
}

/// The kinds of ACL object a DELETE removes.
#[derive(Debug, Clone, Copy)]
enum AclObject {
    Token,
    Policy,
}

impl AclObject {
    /// How the path's ID is named in errors.
    fn id_name(self) -> &'static str {
        match self {
            Self::Token => "AccessorID",
            Self::Policy => "Policy ID",
        }
    }
}

/// A DELETE of one ACL object: `acl:write`, the ID parsed, the object
/// removed, and an audit line naming who removed what.
fn delete_object(
    app: &AppState,
    caller: &Caller,
    remote: &Remote,
    id: &str,
    object: AclObject,
) -> Result<Response, ApiError> {
    caller.require(&Permission::acl(Access::Write))?;
    let acl = acl_of(app)?;
    let id = parse_id(id, object.id_name())?;
    match object {
        AclObject::Token if caller.accessor_id() == Some(id) => {
            // Consul's rule: a client must not lock itself out by deleting
            // the token it is using (it may be the only management token).
            return Err(ApiError::BadRequest(
                "Deletion of the request's authorization token is not permitted".into(),
            ));
        }
        AclObject::Token => acl.delete_token(id)?,
        AclObject::Policy => acl.delete_policy(id)?,
    }
    tracing::info!(target: "audit", requester = %caller.audit_name(),
        remote = %remote.addr_text(), request_id = remote.request_id_text(),
        object = ?object, id = %id, "ACL object deleted");
    to_json(&true)
}

/// `GET /v1/acl/tokens`.
pub async fn list_tokens(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&Permission::acl(Access::Read))?;
    let acl = acl_of(&app)?;
    let all: Vec<TokenOut> = acl
        .tokens()
        .into_iter()
        .map(|t| token_out(acl, t, None))
        .collect();
    to_json(&all)
}

/// `PUT /v1/acl/policy` (create) and `PUT /v1/acl/policy/<ID>` (update).
async fn write_policy(
    app: AppState,
    caller: Caller,
    remote: Remote,
    id: Option<Uuid>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(&Permission::acl(Access::Write))?;
    let acl = acl_of(&app)?;
    let req: PolicyIn = decode_body(body)?;
    if !req.datacenters.is_empty() {
        return Err(ApiError::BadRequest(
            "Datacenters is not supported (meshca serves one datacenter)".into(),
        ));
    }
    let id = match (id, req.id) {
        (Some(path), Some(body)) if path != body => {
            return Err(ApiError::BadRequest(
                "Policy ID in the URL and in the body differ".into(),
            ))
        }
        (path, body) => path.or(body),
    };
    let policy = acl.write_policy(
        id,
        NewPolicy {
            name: req.name,
            description: req.description,
            rules: req.rules,
        },
    )?;
    tracing::info!(target: "audit", requester = %caller.audit_name(),
        remote = %remote.addr_text(), request_id = remote.request_id_text(),
        policy = %policy.id, name = %policy.name, "ACL policy written");
    to_json(&PolicyOut::from(policy))
}

pub async fn create_policy(
    State(app): State<AppState>,
    caller: Caller,
    remote: Remote,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    write_policy(app, caller, remote, None, body).await
}

pub async fn update_policy(
    State(app): State<AppState>,
    caller: Caller,
    remote: Remote,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "Policy ID")?;
    write_policy(app, caller, remote, Some(id), body).await
}

/// `GET /v1/acl/policy/<ID>`.
pub async fn read_policy(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(&Permission::acl(Access::Read))?;
    let acl = acl_of(&app)?;
    to_json(&PolicyOut::from(acl.policy(parse_id(&id, "Policy ID")?)?))
}

/// `GET /v1/acl/policy/name/<Name>`.
pub async fn read_policy_by_name(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(&Permission::acl(Access::Read))?;
    let acl = acl_of(&app)?;
    to_json(&PolicyOut::from(acl.policy_by_name(&name)?))
}

/// `DELETE /v1/acl/policy/<ID>`.
pub async fn delete_policy(
    State(app): State<AppState>,
    caller: Caller,
    remote: Remote,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    delete_object(&app, &caller, &remote, &id, AclObject::Policy)
}

/// `GET /v1/acl/policies`.
pub async fn list_policies(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&Permission::acl(Access::Read))?;
    let acl = acl_of(&app)?;
    let all: Vec<PolicyOut> = acl.policies().into_iter().map(PolicyOut::from).collect();
    to_json(&all)
}
