//! Who is asking: the request's ACL token (from `X-Consul-Token`,
//! `Authorization: Bearer` or `?token=`, in that order, as Consul reads
//! them) resolved to an [`Authorizer`], and the permission check every
//! guarded handler makes before it does anything.

use crate::error::ApiError;
use crate::routes::AppState;
use crate::tls::MeshIdentity;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use meshca_acl::ResolvedToken;
use meshca_ca::Requester;
use meshca_core::acl::{Authorizer, Permission, Rules};
use meshca_core::ServiceName;
use std::net::SocketAddr;
use std::sync::Arc;

/// The identity a request acts with.
#[derive(Debug, Clone)]
pub enum Caller {
    /// ACLs are off (`--dev`, or `acl { enabled = false }`): everything is
    /// allowed.
    Unrestricted,
    /// No token: only what needs no permission (roots, health).
    Anonymous,
    Token(Arc<ResolvedToken>),
    /// No token, but a client certificate that is a valid mesh leaf for
    /// this service (`verify_and_map`): it may renew that service's leaf
    /// and have that service's CSRs signed, nothing else.
    Mesh(ServiceName, Arc<Authorizer>),
}

impl Caller {
    /// `Ok` when the caller holds `wanted`; otherwise Consul's 403.
    pub fn require(&self, wanted: &Permission) -> Result<(), ApiError> {
        self.check(wanted).map_err(ApiError::PermissionDenied)
    }

    /// An anonymous caller holds no permission at all: refuse it before
    /// doing any work for it.
    pub fn refuse_if_anonymous(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Caller::Anonymous => Err(ApiError::PermissionDenied(format!(
                "anonymous token lacks permission to {what}"
            ))),
            _ => Ok(()),
        }
    }

    /// [`Caller::require`] with the denial as text (after "Permission
    /// denied: "), for checks made inside the engine.
    pub fn check(&self, wanted: &Permission) -> Result<(), String> {
        let (allowed, who) = match self {
            Caller::Unrestricted => return Ok(()),
            Caller::Anonymous => (false, "anonymous token".to_string()),
            Caller::Token(t) => (
                t.authorizer.allows(wanted),
                format!("token with AccessorID '{}'", t.accessor_id),
            ),
            Caller::Mesh(service, authorizer) => (
                authorizer.allows(wanted),
                format!("client certificate of service {:?}", service.as_str()),
            ),
        };
        if allowed {
            return Ok(());
        }
        let on = wanted
            .name
            .as_ref()
            .map(|n| format!(" on {n:?}"))
            .unwrap_or_default();
        Err(format!(
            "{who} lacks permission '{}:{}'{on}",
            wanted.resource, wanted.access
        ))
    }

    /// The caller, its address and the request's ID, as the audit trail
    /// records them.
    pub fn requester(&self, remote: Remote) -> Requester {
        Requester {
            identity: self.audit_name(),
            remote: remote.peer.map(|p| p.text.to_string()),
            request_id: remote.request_id,
        }
    }

    /// Who the caller is for a fair share of the signing CPU: its
    /// credential, or its address when it has none (ACLs off, anonymous).
    pub fn fair_share_name(&self, peer: Option<&Peer>) -> String {
        match (self, peer) {
            (Caller::Token(_) | Caller::Mesh(..), _) | (_, None) => self.audit_name(),
            (Caller::Unrestricted | Caller::Anonymous, Some(p)) => p.host.to_string(),
        }
    }

    /// The caller as the audit trail names it: never a secret.
    pub fn audit_name(&self) -> String {
        match self {
            Caller::Unrestricted => "acl-disabled".into(),
            Caller::Anonymous => "anonymous".into(),
            Caller::Token(t) => format!("accessor:{}", t.accessor_id),
            Caller::Mesh(service, _) => format!("mesh-certificate:{}", service.as_str()),
        }
    }

    /// The AccessorID of the caller's token, when it has one.
    pub fn accessor_id(&self) -> Option<uuid::Uuid> {
        match self {
            Caller::Token(t) => Some(t.accessor_id),
            _ => None,
        }
    }

    /// What a cached agent leaf is shared by: one entry per token, as
    /// Consul caches per service and token.
    pub fn cache_key(&self) -> String {
        self.audit_name()
    }

    /// The token's authorizer, for checks that depend on the request body.
    pub fn authorizer(&self) -> Option<&Authorizer> {
        match self {
            Caller::Token(t) => Some(&t.authorizer),
            Caller::Mesh(_, a) => Some(a),
            _ => None,
        }
    }
}

/// The ID given to one request (a UUID), returned as `X-Request-Id` and
/// written on its audit lines so the two can be matched.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Where a request came from: the client's address (when the listener
/// recorded it) and the request's ID.
#[derive(Debug, Clone, Default)]
pub struct Remote {
    pub peer: Option<Peer>,
    pub request_id: Option<String>,
}

/// A connection's peer, with its address as the audit trail writes it
/// (`host:port`) and its host as fair shares name it: written once per
/// connection by the listener rather than for every request (formatting
/// both took about 3 000 instructions, a twentieth of a cached agent
/// leaf's).
#[derive(Debug, Clone)]
pub struct Peer {
    text: Arc<str>,
    host: Arc<str>,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            text: addr.to_string().into(),
            host: addr.ip().to_string().into(),
        }
    }
}

impl Remote {
    /// The address as the audit trail writes it (`-` when unknown).
    pub fn addr_text(&self) -> &str {
        self.peer.as_ref().map_or("-", |p| &p.text)
    }

    pub fn request_id_text(&self) -> &str {
        self.request_id.as_deref().unwrap_or("-")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Remote {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Remote {
            peer: parts.extensions.get::<Peer>().cloned(),
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
        })
    }
}

/// The token a request carries, if any. An empty value counts as none.
fn token_of(parts: &Parts) -> Option<String> {
    let header = |name: &str| {
        // A value that is not ASCII is still a token (one that matches
        // nothing), not the absence of one.
        parts
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(t) = header("x-consul-token") {
        return Some(t);
    }
    if let Some(auth) = header("authorization") {
        if let Some(t) = auth.strip_prefix("Bearer ").map(str::trim) {
            if !t.is_empty() {
                return Some(t.to_string());
            }
        }
    }
    let query = parts.uri.query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, v)| k == "token" && !v.is_empty())
        .map(|(_, v)| v)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Some(acl) = &app.acl else {
            return Ok(Caller::Unrestricted);
        };
        if let Some(secret) = token_of(parts) {
            return Ok(Caller::Token(acl.resolve(&secret)?));
        }
        // Only the listener inserts this, and only for a certificate that
        // chained to the Connect CA's current roots.
        match parts.extensions.get::<MeshIdentity>() {
            Some(m) => Ok(Caller::Mesh(
                m.service.clone(),
                Arc::new(Authorizer::new([&Rules::mesh_leaf(m.service.as_str())])),
            )),
            None => Ok(Caller::Anonymous),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    #[test]
    fn without_a_credential_the_fair_share_is_the_clients_address() {
        let from = |port| Peer::new(SocketAddr::from(([127, 0, 0, 2], port)));
        for caller in [Caller::Unrestricted, Caller::Anonymous] {
            // Two connections of one client share one name; the port does
            // not make a new client.
            assert_eq!(caller.fair_share_name(Some(&from(4000))), "127.0.0.2");
            assert_eq!(caller.fair_share_name(Some(&from(4001))), "127.0.0.2");
        }
        let v6 = Peer::new(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 4000)));
        assert_eq!(Caller::Anonymous.fair_share_name(Some(&v6)), "::1");
        let remote = Remote {
            peer: Some(v6),
            request_id: None,
        };
        assert_eq!(remote.addr_text(), "[::1]:4000");
        assert_eq!(Remote::default().addr_text(), "-");
        assert_eq!(Caller::Unrestricted.fair_share_name(None), "acl-disabled");
    }

    #[test]
    fn tokens_are_read_from_the_header_then_bearer_then_the_query() {
        let all = Request::get("/x?token=q")
            .header("x-consul-token", "h")
            .header("authorization", "Bearer b")
            .body(())
            .unwrap();
        assert_eq!(token_of(&parts(all)).as_deref(), Some("h"));
        let bearer = Request::get("/x?token=q")
            .header("authorization", "Bearer b")
            .body(())
            .unwrap();
        assert_eq!(token_of(&parts(bearer)).as_deref(), Some("b"));
        let query = Request::get("/x?a=1&token=q%2Dr").body(()).unwrap();
        assert_eq!(token_of(&parts(query)).as_deref(), Some("q-r"));
        let none = Request::get("/x?token=")
            .header("x-consul-token", "")
            .header("authorization", "Basic abc")
            .body(())
            .unwrap();
        assert_eq!(token_of(&parts(none)), None);
    }

    #[test]
    fn denials_name_the_token_and_the_permission_but_no_secret() {
        use meshca_core::acl::Access;
        let err = Caller::Anonymous
            .require(&Permission::service(Access::Write, "web"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Permission denied: anonymous token lacks permission 'service:write' on \"web\""
        );
        assert!(Caller::Unrestricted
            .require(&Permission::operator(Access::Write))
            .is_ok());
    }
}
