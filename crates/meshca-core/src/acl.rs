//! ACL rules and their evaluation, as Consul defines them for the resources
//! a Connect CA guards.
//!
//! A policy's rules come in Consul's JSON form (or the equivalent HCL):
//! `{"operator": "write", "service": {"web": {"policy": "write"}},
//! "service_prefix": {"": {"policy": "read"}}, "mesh": "write"}`. An
//! [`Authorizer`] merges the rules of every policy of a token and answers
//! questions such as "may this token write service `web`?".
//!
//! Evaluation follows Consul: an exact rule beats any prefix rule, the
//! longest matching prefix wins among prefixes, and when two policies give
//! a rule for the same name `deny` beats `write`, which beats `read`.
//! Nothing matches → deny (meshca's ACLs are default-deny). `mesh` falls back
//! to `operator` when a policy says nothing about `mesh`, as in Consul.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The access a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Deny,
}

impl Access {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }

    /// Merging two policies' rules for the same name: deny, then write,
    /// then read.
    fn merge(self, other: Self) -> Self {
        match (self, other) {
            (Self::Deny, _) | (_, Self::Deny) => Self::Deny,
            (Self::Write, _) | (_, Self::Write) => Self::Write,
            _ => Self::Read,
        }
    }

    fn allows(self, wanted: Access) -> bool {
        matches!(
            (self, wanted),
            (Self::Write, Self::Read | Self::Write) | (Self::Read, Self::Read)
        )
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Deny => "deny",
        })
    }
}

/// Why a policy's rules were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ACL rules: {0}")]
pub struct RulesError(pub String);

/// Exact and prefix rules for one kind of named resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Named {
    exact: BTreeMap<String, Access>,
    prefix: BTreeMap<String, Access>,
}

impl Named {
    /// Exact first; otherwise the longest prefix of `name` that has a rule.
    fn lookup(&self, name: &str) -> Option<Access> {
        if let Some(a) = self.exact.get(name) {
            return Some(*a);
        }
        self.prefix
            .iter()
            .filter(|(p, _)| name.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, a)| *a)
    }

    fn merge(&mut self, other: &Named) {
        merge_map(&mut self.exact, &other.exact);
        merge_map(&mut self.prefix, &other.prefix);
    }
}

fn merge_map(into: &mut BTreeMap<String, Access>, from: &BTreeMap<String, Access>) {
    for (name, access) in from {
        into.entry(name.clone())
            .and_modify(|a| *a = a.merge(*access))
            .or_insert(*access);
    }
}

fn merge_opt(into: &mut Option<Access>, from: Option<Access>) {
    *into = match (*into, from) {
        (Some(a), Some(b)) => Some(a.merge(b)),
        (a, b) => a.or(b),
    };
}

/// The rules of one policy, parsed and validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    operator: Option<Access>,
    acl: Option<Access>,
    mesh: Option<Access>,
    service: Named,
    node: Named,
}

impl Rules {
    /// Parses Consul's JSON rule form, or its HCL form when the text does
    /// not start with `{`. Unknown resources and policies are refused by
    /// name, so a rule meshca would not enforce is never accepted silently.
    pub fn parse(text: &str) -> Result<Self, RulesError> {
        let value: Value = if text.trim().is_empty() {
            Value::Object(Map::new())
        } else if text.trim_start().starts_with(['{', '[']) {
            serde_json::from_str(text).map_err(|e| RulesError(format!("not valid JSON: {e}")))?
        } else {
            hcl::from_str(text).map_err(|e| RulesError(format!("not valid HCL: {e}")))?
        };
        let Value::Object(map) = value else {
            return Err(RulesError("the rules must be an object".into()));
        };
        let mut rules = Rules::default();
        for (resource, v) in &map {
            match resource.as_str() {
                "operator" => rules.operator = Some(plain_access(resource, v)?),
                "acl" => rules.acl = Some(plain_access(resource, v)?),
                "mesh" => rules.mesh = Some(plain_access(resource, v)?),
                "service" => rules.service.exact = named_access(resource, v)?,
                "service_prefix" => rules.service.prefix = named_access(resource, v)?,
                "node" => rules.node.exact = named_access(resource, v)?,
                "node_prefix" => rules.node.prefix = named_access(resource, v)?,
                other => {
                    return Err(RulesError(format!(
                        "unsupported resource {other:?} (meshca knows operator, acl, mesh, \
                         service, service_prefix, node, node_prefix)"
                    )))
                }
            }
        }
        Ok(rules)
    }

    /// Everything: the rules of the built-in `global-management` policy.
    pub fn management() -> Self {
        let all = |a| BTreeMap::from([(String::new(), a)]);
        Rules {
            operator: Some(Access::Write),
            acl: Some(Access::Write),
            mesh: Some(Access::Write),
            service: Named {
                exact: BTreeMap::new(),
                prefix: all(Access::Write),
            },
            node: Named {
                exact: BTreeMap::new(),
                prefix: all(Access::Write),
            },
        }
    }

    /// A service identity, as Consul templates it: write on the service and
    /// its sidecar proxy, read on every service and node (for discovery).
    pub fn service_identity(service: &str) -> Self {
        let mut rules = Rules::default();
        for name in [service.to_string(), format!("{service}-sidecar-proxy")] {
            rules.service.exact.insert(name, Access::Write);
        }
        rules.service.prefix.insert(String::new(), Access::Read);
        rules.node.prefix.insert(String::new(), Access::Read);
        rules
    }
}

impl Rules {
    /// What a client certificate that is a mesh leaf for `service` may do
    /// (`verify_and_map`): write on exactly that service — renew its own
    /// leaf or have its own CSR signed — and nothing else; no reads, and
    /// never operator access.
    pub fn mesh_leaf(service: &str) -> Self {
        let mut rules = Rules::default();
        rules
            .service
            .exact
            .insert(service.to_string(), Access::Write);
        rules
    }
}

fn plain_access(resource: &str, v: &Value) -> Result<Access, RulesError> {
    v.as_str().and_then(Access::parse).ok_or_else(|| {
        RulesError(format!(
            "{resource}: expected \"read\", \"write\" or \"deny\", got {v}"
        ))
    })
}

/// `{"<name>": {"policy": "<access>"}, …}`.
fn named_access(resource: &str, v: &Value) -> Result<BTreeMap<String, Access>, RulesError> {
    let Value::Object(names) = v else {
        return Err(RulesError(format!(
            "{resource}: expected {{\"<name>\": {{\"policy\": \"read|write|deny\"}}}}"
        )));
    };
    let mut out = BTreeMap::new();
    for (name, rule) in names {
        let fields = rule.as_object().ok_or_else(|| {
            RulesError(format!("{resource} {name:?}: expected {{\"policy\": …}}"))
        })?;
        if let Some(k) = fields.keys().find(|k| *k != "policy") {
            return Err(RulesError(format!(
                "{resource} {name:?}: unsupported key {k:?} (only \"policy\")"
            )));
        }
        let access = fields
            .get("policy")
            .ok_or_else(|| RulesError(format!("{resource} {name:?}: \"policy\" is missing")))?;
        out.insert(
            name.clone(),
            plain_access(&format!("{resource} {name:?}"), access)?,
        );
    }
    Ok(out)
}

/// What a permission check is about: `operator:write`, `service:write on
/// "web"`. Used in the 403 message, as Consul words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub resource: &'static str,
    pub access: Access,
    pub name: Option<String>,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.resource, self.access)?;
        if let Some(name) = &self.name {
            write!(f, " on {name:?}")?;
        }
        Ok(())
    }
}

impl Permission {
    pub fn operator(access: Access) -> Self {
        Self {
            resource: "operator",
            access,
            name: None,
        }
    }
    pub fn acl(access: Access) -> Self {
        Self {
            resource: "acl",
            access,
            name: None,
        }
    }
    pub fn mesh(access: Access) -> Self {
        Self {
            resource: "mesh",
            access,
            name: None,
        }
    }
    pub fn service(access: Access, name: &str) -> Self {
        Self {
            resource: "service",
            access,
            name: Some(name.to_string()),
        }
    }
    pub fn node(access: Access, name: &str) -> Self {
        Self {
            resource: "node",
            access,
            name: Some(name.to_string()),
        }
    }
}

/// What a caller needs to be issued a certificate for `id`: write on the
/// service, the node or the mesh; a server identity only with operator
/// write (a server certificate is as good as the CA's own servers').
pub fn permission_to_sign(id: &crate::SpiffeId) -> Permission {
    use crate::SpiffeId::*;
    match id {
        Service { service, .. } => Permission::service(Access::Write, service.as_str()),
        Agent { node, .. } => Permission::node(Access::Write, node.as_str()),
        MeshGateway { .. } => Permission::mesh(Access::Write),
        Server { .. } => Permission::operator(Access::Write),
    }
}

/// The merged rules of every policy (and service identity) of one token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorizer {
    rules: Rules,
}

impl Authorizer {
    /// Merges `rules`; with none, the authorizer denies everything.
    pub fn new<'a>(rules: impl IntoIterator<Item = &'a Rules>) -> Self {
        let mut merged = Rules::default();
        for r in rules {
            merge_opt(&mut merged.operator, r.operator);
            merge_opt(&mut merged.acl, r.acl);
            merge_opt(&mut merged.mesh, r.mesh);
            merged.service.merge(&r.service);
            merged.node.merge(&r.node);
        }
        Self { rules: merged }
    }

    /// Whether the token holds `wanted`.
    pub fn allows(&self, wanted: &Permission) -> bool {
        let r = &self.rules;
        let granted = match (wanted.resource, wanted.name.as_deref()) {
            ("operator", None) => r.operator,
            ("acl", None) => r.acl,
            ("mesh", None) => r.mesh.or(r.operator),
            ("service", Some(name)) => r.service.lookup(name),
            ("node", Some(name)) => r.node.lookup(name),
            _ => None,
        };
        granted.is_some_and(|g| g.allows(wanted.access))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Access::*;

    fn auth(rules: &[&str]) -> Authorizer {
        let parsed: Vec<Rules> = rules.iter().map(|r| Rules::parse(r).unwrap()).collect();
        Authorizer::new(&parsed)
    }

    #[test]
    fn nothing_is_allowed_without_a_rule() {
        let a = auth(&[]);
        for p in [
            Permission::operator(Read),
            Permission::acl(Read),
            Permission::mesh(Write),
            Permission::service(Read, "web"),
            Permission::node(Write, "n1"),
        ] {
            assert!(!a.allows(&p), "{p}");
        }
    }

    #[test]
    fn write_implies_read_and_read_is_not_write() {
        let a = auth(&[r#"{"operator":"read","service":{"web":{"policy":"write"}}}"#]);
        assert!(a.allows(&Permission::operator(Read)));
        assert!(!a.allows(&Permission::operator(Write)));
        assert!(a.allows(&Permission::service(Read, "web")));
        assert!(a.allows(&Permission::service(Write, "web")));
        assert!(!a.allows(&Permission::service(Write, "web2")));
    }

    #[test]
    fn exact_beats_prefix_and_the_longest_prefix_wins() {
        let a = auth(&[r#"{
            "service_prefix": {"": {"policy": "read"}, "api-": {"policy": "write"},
                               "api-internal-": {"policy": "deny"}},
            "service": {"api-internal-public": {"policy": "write"}}
        }"#]);
        assert!(a.allows(&Permission::service(Read, "db")));
        assert!(!a.allows(&Permission::service(Write, "db")));
        assert!(a.allows(&Permission::service(Write, "api-x")));
        assert!(!a.allows(&Permission::service(Read, "api-internal-x")));
        assert!(a.allows(&Permission::service(Write, "api-internal-public")));
    }

    #[test]
    fn across_policies_deny_beats_write_beats_read() {
        let a = auth(&[
            r#"{"service":{"web":{"policy":"write"}},"operator":"read","node":{"n":{"policy":"read"}}}"#,
            r#"{"service":{"web":{"policy":"deny"}},"operator":"write","node":{"n":{"policy":"write"}}}"#,
        ]);
        assert!(!a.allows(&Permission::service(Read, "web")));
        assert!(a.allows(&Permission::operator(Write)));
        assert!(a.allows(&Permission::node(Write, "n")));
        // An exact deny in one policy also beats a prefix write in another.
        let b = auth(&[
            r#"{"service_prefix":{"":{"policy":"write"}}}"#,
            r#"{"service":{"db":{"policy":"deny"}}}"#,
        ]);
        assert!(!b.allows(&Permission::service(Read, "db")));
        assert!(b.allows(&Permission::service(Write, "web")));
    }

    #[test]
    fn mesh_falls_back_to_operator_unless_set() {
        assert!(auth(&[r#"{"operator":"write"}"#]).allows(&Permission::mesh(Write)));
        assert!(!auth(&[r#"{"operator":"write","mesh":"read"}"#]).allows(&Permission::mesh(Write)));
        assert!(auth(&[r#"{"mesh":"write"}"#]).allows(&Permission::mesh(Write)));
        assert!(!auth(&[r#"{"mesh":"write"}"#]).allows(&Permission::operator(Read)));
    }

    #[test]
    fn hcl_rules_mean_the_same_as_json() {
        let hcl = r#"
            operator = "read"
            service "web" { policy = "write" }
            service "db" { policy = "read" }
            node_prefix "" { policy = "read" }
        "#;
        let json = r#"{"operator":"read","service":{"web":{"policy":"write"},"db":{"policy":"read"}},
                       "node_prefix":{"":{"policy":"read"}}}"#;
        assert_eq!(Rules::parse(hcl).unwrap(), Rules::parse(json).unwrap());
    }

    #[test]
    fn unknown_resources_and_values_are_refused_by_name() {
        for (text, needle) in [
            (r#"{"keyring":"write"}"#, "keyring"),
            (r#"{"operator":"admin"}"#, "operator"),
            (r#"{"service":{"web":"write"}}"#, "web"),
            (
                r#"{"service":{"web":{"policy":"write","intentions":"read"}}}"#,
                "intentions",
            ),
            (r#"{"service":{"web":{}}}"#, "policy"),
            (r#"["operator"]"#, "object"),
            ("{", "JSON"),
        ] {
            let err = Rules::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn management_allows_everything_and_a_service_identity_only_its_service() {
        let m = Authorizer::new([&Rules::management()]);
        assert!(m.allows(&Permission::operator(Write)));
        assert!(m.allows(&Permission::acl(Write)));
        assert!(m.allows(&Permission::service(Write, "anything")));
        let s = Authorizer::new([&Rules::service_identity("web")]);
        assert!(s.allows(&Permission::service(Write, "web")));
        assert!(s.allows(&Permission::service(Write, "web-sidecar-proxy")));
        assert!(s.allows(&Permission::service(Read, "db")));
        assert!(!s.allows(&Permission::service(Write, "db")));
        assert!(!s.allows(&Permission::operator(Read)));
        assert!(!s.allows(&Permission::mesh(Write)));
    }

    #[test]
    fn signing_needs_write_on_what_the_spiffe_id_names() {
        let td = "11111111-2222-3333-4444-555555555555.consul";
        let id = |path: &str| {
            format!("spiffe://{td}{path}")
                .parse::<crate::SpiffeId>()
                .unwrap()
        };
        let web =
            auth(&[r#"{"service":{"web":{"policy":"write"}},"node":{"n1":{"policy":"write"}}}"#]);
        let cases = [
            ("/ns/default/dc/dc1/svc/web", true),
            ("/ns/default/dc/dc1/svc/db", false),
            ("/agent/client/dc/dc1/id/n1", true),
            ("/agent/client/dc/dc1/id/n2", false),
            ("/gateway/mesh/dc/dc1", false),
            ("/agent/server/dc/dc1", false),
        ];
        for (path, allowed) in cases {
            assert_eq!(
                web.allows(&permission_to_sign(&id(path))),
                allowed,
                "{path}"
            );
        }
        let mesh = auth(&[r#"{"mesh":"write"}"#]);
        assert!(mesh.allows(&permission_to_sign(&id("/gateway/mesh/dc/dc1"))));
        assert!(!mesh.allows(&permission_to_sign(&id("/agent/server/dc/dc1"))));
        let op = auth(&[r#"{"operator":"write"}"#]);
        assert!(op.allows(&permission_to_sign(&id("/agent/server/dc/dc1"))));
    }

    #[test]
    fn a_mesh_leaf_may_write_its_service_and_nothing_else() {
        let m = Authorizer::new([&Rules::mesh_leaf("web")]);
        assert!(m.allows(&Permission::service(Write, "web")));
        for p in [
            Permission::service(Write, "web-sidecar-proxy"),
            Permission::service(Read, "db"),
            Permission::operator(Read),
            Permission::mesh(Write),
            Permission::acl(Read),
            Permission::node(Write, "web"),
        ] {
            assert!(!m.allows(&p), "{p}");
        }
    }

    #[test]
    fn permissions_read_like_consuls() {
        assert_eq!(Permission::operator(Write).to_string(), "operator:write");
        assert_eq!(
            Permission::service(Write, "web").to_string(),
            "service:write on \"web\""
        );
    }
}
