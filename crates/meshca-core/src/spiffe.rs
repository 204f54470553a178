//! SPIFFE identities meshca issues and their strict parser.
//!
//! The parser accepts exactly four shapes and nothing else:
//!
//! - `spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>`
//! - `spiffe://<td>/agent/client/dc/<dc>/id/<node>`
//! - `spiffe://<td>/agent/server/dc/<dc>`
//! - `spiffe://<td>/gateway/mesh/dc/<dc>`
//!
//! It is deliberately stricter than RFC 3986: no percent-encoding, no port,
//! userinfo, query or fragment, no upper case anywhere, no empty, `.` or `..`
//! segments. Because nothing is ever decoded or normalised, every accepted ID
//! is already in canonical form and [`fmt::Display`] reproduces the input byte
//! for byte.

use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// The URI scheme of every SPIFFE ID, including the `://` separator.
const SCHEME_PREFIX: &str = "spiffe://";
/// Longest accepted SPIFFE ID, in bytes (the SPIFFE standard's limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest accepted path segment, in bytes.
pub const MAX_SEGMENT_LEN: usize = 255;
/// Longest accepted trust domain, in bytes (the SPIFFE standard's limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// `<cluster-id>.consul`, always lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String")]
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

/// Strict parse of a bare trust domain (no scheme): 1..=255 bytes of
/// `[a-z0-9.-]`, made of non-empty dot-separated labels.
impl FromStr for TrustDomain {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(invalid("the trust domain is empty"));
        }
        if s.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(invalid(format!(
                "the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes"
            )));
        }
        if let Some(c) = s.chars().find(|c| !is_trust_domain_char(*c)) {
            return Err(invalid(format!(
                "the trust domain {} {}",
                quote(s),
                describe_bad_char(c, "[a-z0-9.-]")
            )));
        }
        if s.split('.').any(str::is_empty) {
            return Err(invalid(format!(
                "the trust domain {} has an empty label",
                quote(s)
            )));
        }
        Ok(Self(s.to_string()))
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = SpiffeError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("invalid SPIFFE ID: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> SpiffeError {
    SpiffeError::Invalid(msg.into())
}

/// One path segment of a SPIFFE ID (namespace, datacenter, node name),
/// validated by [`validate_segment`]. The field is private, so a value of
/// this type is always a valid segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Segment(String);

impl Segment {
    /// Validates `s` as a segment; error messages name `kind` (e.g. "node name").
    pub fn parse(kind: &str, s: &str) -> Result<Self, SpiffeError> {
        validate_segment(kind, s)?;
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Segment {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Segment {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A service name, as it appears in `/v1/agent/connect/ca/leaf/<service>`
/// and in a service's SPIFFE ID. Built only by parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(Segment);

impl ServiceName {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl FromStr for ServiceName {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Segment::parse("service name", s).map(Self)
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for ServiceName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ServiceName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One of the four identity kinds meshca issues. Every field is a validated
/// type, so a `SpiffeId` cannot hold an invalid name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SpiffeId {
    Service {
        trust_domain: TrustDomain,
        namespace: Segment,
        datacenter: Segment,
        service: ServiceName,
    },
    Agent {
        trust_domain: TrustDomain,
        datacenter: Segment,
        node: Segment,
    },
    Server {
        trust_domain: TrustDomain,
        datacenter: Segment,
    },
    MeshGateway {
        trust_domain: TrustDomain,
        datacenter: Segment,
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
            | Self::MeshGateway { datacenter, .. } => datacenter.as_str(),
        }
    }

    /// A service identity, `spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>`,
    /// with every segment validated.
    pub fn service(
        trust_domain: &TrustDomain,
        namespace: &str,
        datacenter: &str,
        service: &str,
    ) -> Result<SpiffeId, SpiffeError> {
        Ok(Self::Service {
            trust_domain: trust_domain.clone(),
            namespace: Segment::parse("namespace", namespace)?,
            datacenter: Segment::parse("datacenter", datacenter)?,
            service: service.parse()?,
        })
    }

    /// A client agent identity, `spiffe://<td>/agent/client/dc/<dc>/id/<node>`.
    pub fn agent(
        trust_domain: &TrustDomain,
        datacenter: &str,
        node: &str,
    ) -> Result<SpiffeId, SpiffeError> {
        Ok(Self::Agent {
            trust_domain: trust_domain.clone(),
            datacenter: Segment::parse("datacenter", datacenter)?,
            node: Segment::parse("node name", node)?,
        })
    }

    /// A server identity, `spiffe://<td>/agent/server/dc/<dc>`.
    pub fn server(trust_domain: &TrustDomain, datacenter: &str) -> Result<SpiffeId, SpiffeError> {
        Ok(Self::Server {
            trust_domain: trust_domain.clone(),
            datacenter: Segment::parse("datacenter", datacenter)?,
        })
    }

    /// A mesh gateway identity, `spiffe://<td>/gateway/mesh/dc/<dc>`.
    pub fn mesh_gateway(
        trust_domain: &TrustDomain,
        datacenter: &str,
    ) -> Result<SpiffeId, SpiffeError> {
        Ok(Self::MeshGateway {
            trust_domain: trust_domain.clone(),
            datacenter: Segment::parse("datacenter", datacenter)?,
        })
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(invalid(format!("longer than {MAX_SPIFFE_ID_LEN} bytes")));
        }
        if s.is_empty() {
            return Err(invalid("empty string"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("contains whitespace or control characters"));
        }
        if !s.is_ascii() {
            return Err(invalid("contains non-ASCII characters"));
        }
        let Some(rest) = s.strip_prefix(SCHEME_PREFIX) else {
            let lower = s.to_ascii_lowercase();
            if lower.starts_with(SCHEME_PREFIX) {
                return Err(invalid("the scheme must be lower-case \"spiffe\""));
            }
            return Err(invalid(format!(
                "{} does not start with \"spiffe://\"",
                quote(s)
            )));
        };
        // Characters that would need URI semantics we refuse to implement.
        if s.contains('%') {
            return Err(invalid("percent-encoding is not allowed"));
        }
        if s.contains('?') {
            return Err(invalid("a query is not allowed"));
        }
        if s.contains('#') {
            return Err(invalid("a fragment is not allowed"));
        }
        if s.contains('@') {
            return Err(invalid("userinfo is not allowed"));
        }

        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains(':') && !authority.starts_with('[') {
            return Err(invalid("a port is not allowed"));
        }
        let trust_domain: TrustDomain = authority.parse()?;

        let Some(path) = path.strip_prefix('/') else {
            return Err(invalid(format!(
                "{} has no path: it names a trust domain, not a workload",
                quote(s)
            )));
        };
        let segments: Vec<&str> = path.split('/').collect();
        for seg in &segments {
            validate_segment("path segment", seg)?;
        }

        // Every segment passed `validate_segment` above.
        let owned = |v: &str| Segment(v.to_string());
        match segments.as_slice() {
            ["ns", ns, "dc", dc, "svc", svc] => Ok(Self::Service {
                trust_domain,
                namespace: owned(ns),
                datacenter: owned(dc),
                service: ServiceName(owned(svc)),
            }),
            ["agent", "client", "dc", dc, "id", node] => Ok(Self::Agent {
                trust_domain,
                datacenter: owned(dc),
                node: owned(node),
            }),
            ["agent", "server", "dc", dc] => Ok(Self::Server {
                trust_domain,
                datacenter: owned(dc),
            }),
            ["gateway", "mesh", "dc", dc] => Ok(Self::MeshGateway {
                trust_domain,
                datacenter: owned(dc),
            }),
            _ => Err(invalid(format!(
                "unsupported path {}: expected /ns/<ns>/dc/<dc>/svc/<service>, \
                 /agent/client/dc/<dc>/id/<node>, /agent/server/dc/<dc> \
                 or /gateway/mesh/dc/<dc>",
                quote(path)
            ))),
        }
    }
}

impl SpiffeId {
    /// The URI, written once into a string of its exact length (an issued
    /// certificate's URI goes into its SAN, the answer, the journal and the
    /// audit line: formatting it through `Display` each time cost a few
    /// growing buffers each, about 1 200 instructions).
    pub fn uri(&self) -> String {
        let pieces = self.uri_pieces();
        let mut uri = String::with_capacity(pieces.iter().map(|p| p.len()).sum());
        pieces.iter().for_each(|p| uri.push_str(p));
        uri
    }

    /// Whether `uri` is this ID's URI, compared without writing it out.
    pub fn is_uri(&self, uri: &str) -> bool {
        let mut rest = uri;
        for piece in self.uri_pieces() {
            match rest.strip_prefix(piece) {
                Some(after) => rest = after,
                None => return false,
            }
        }
        rest.is_empty()
    }

    /// The URI in the pieces that make it, in order (unused ones empty).
    fn uri_pieces(&self) -> [&str; 8] {
        match self {
            Self::Service {
                trust_domain,
                namespace,
                datacenter,
                service,
            } => [
                "spiffe://",
                trust_domain.as_str(),
                "/ns/",
                namespace.as_str(),
                "/dc/",
                datacenter.as_str(),
                "/svc/",
                service.as_str(),
            ],
            Self::Agent {
                trust_domain,
                datacenter,
                node,
            } => [
                "spiffe://",
                trust_domain.as_str(),
                "/agent/client/dc/",
                datacenter.as_str(),
                "/id/",
                node.as_str(),
                "",
                "",
            ],
            Self::Server {
                trust_domain,
                datacenter,
            } => [
                "spiffe://",
                trust_domain.as_str(),
                "/agent/server/dc/",
                datacenter.as_str(),
                "",
                "",
                "",
                "",
            ],
            Self::MeshGateway {
                trust_domain,
                datacenter,
            } => [
                "spiffe://",
                trust_domain.as_str(),
                "/gateway/mesh/dc/",
                datacenter.as_str(),
                "",
                "",
                "",
                "",
            ],
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.uri_pieces().iter().try_for_each(|p| f.write_str(p))
    }
}

/// Validates one name used as a path segment (service, node, namespace,
/// datacenter name): 1..=255 bytes of `[a-z0-9._-]`, not `.` or `..`.
/// Error messages name `kind` (e.g. "service name").
pub fn validate_segment(kind: &str, s: &str) -> Result<(), SpiffeError> {
    if s.is_empty() {
        return Err(invalid(format!("{kind} is empty")));
    }
    if s.len() > MAX_SEGMENT_LEN {
        return Err(invalid(format!(
            "{kind} is longer than {MAX_SEGMENT_LEN} bytes"
        )));
    }
    if s == "." || s == ".." {
        return Err(invalid(format!("{kind} must not be {}", quote(s))));
    }
    if let Some(c) = s.chars().find(|c| !is_segment_char(*c)) {
        return Err(invalid(format!(
            "{kind} {} {}",
            quote(s),
            describe_bad_char(c, "[a-z0-9._-]")
        )));
    }
    Ok(())
}

fn is_segment_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-')
}

fn is_trust_domain_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '-')
}

/// Why `c` is not allowed, worded for the most common mistakes.
fn describe_bad_char(c: char, allowed: &str) -> String {
    if c.is_ascii_uppercase() {
        "must be lower case".to_string()
    } else if c == '%' {
        "must not be percent-encoded".to_string()
    } else if c.is_whitespace() || c.is_control() {
        "must not contain whitespace or control characters".to_string()
    } else {
        format!("contains {c:?}; only {allowed} is allowed")
    }
}

/// Quotes untrusted text for an error message: escaped, and shortened so a
/// hostile input cannot blow up logs or response bodies.
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() > MAX {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    #[derive(Debug)]
    enum Expect {
        /// Parses, and Display gives the input back.
        Ok,
        /// Fails with a message containing this text.
        Err(&'static str),
    }

    fn check(input: &str, expect: Expect) {
        let got = input.parse::<SpiffeId>();
        match (&got, &expect) {
            (Ok(id), Expect::Ok) => {
                assert_eq!(id.to_string(), input, "round trip of {input:?}");
                assert_eq!(id.uri(), input, "uri of {input:?}");
                assert_eq!(id.uri().len(), id.uri().capacity(), "{input:?}");
                assert!(id.is_uri(input), "{input:?}");
                assert_eq!(id.to_string().parse::<SpiffeId>().as_ref(), Ok(id));
                // One byte more, less or changed is another URI.
                assert!(!id.is_uri(&format!("{input}x")), "{input:?}");
                assert!(!id.is_uri(&input[..input.len() - 1]), "{input:?}");
                assert!(
                    !id.is_uri(&input.replacen("spiffe", "spiffy", 1)),
                    "{input:?}"
                );
            }
            (Err(e), Expect::Err(needle)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(needle),
                    "{input:?}: error {msg:?} does not mention {needle:?}"
                );
                assert!(msg.starts_with("invalid SPIFFE ID: "), "{msg}");
            }
            _ => panic!("{input:?}: expected {expect:?}, got {got:?}"),
        }
    }

    fn id(path: &str) -> String {
        format!("spiffe://{TD}{path}")
    }

    #[test]
    fn good_ids_parse_and_round_trip() {
        let good = [
            id("/ns/default/dc/dc1/svc/web"),
            id("/ns/default/dc/dc1/svc/web-api_v2.internal"),
            id("/ns/team-a/dc/us-east-1/svc/db"),
            id("/agent/client/dc/dc1/id/node-1"),
            id("/agent/server/dc/dc1"),
            id("/gateway/mesh/dc/dc2"),
            "spiffe://example.org/ns/default/dc/dc1/svc/web".to_string(),
            "spiffe://a/agent/server/dc/x".to_string(),
            "spiffe://a-b.c-d/gateway/mesh/dc/0".to_string(),
            // Segment names that look like keywords are just names.
            id("/ns/ns/dc/dc/svc/svc"),
            id("/agent/client/dc/dc1/id/..."),
            id("/ns/default/dc/dc1/svc/.hidden"),
            id(&format!("/ns/default/dc/dc1/svc/{}", "a".repeat(255))),
        ];
        for s in &good {
            check(s, Expect::Ok);
        }
    }

    #[test]
    fn service_names_parse_like_segments() {
        assert_eq!(
            "web".parse::<ServiceName>().map(|s| s.to_string()),
            Ok("web".into())
        );
        for bad in ["", "Web", "a/b", "..", "we b"] {
            let err = bad.parse::<ServiceName>().expect_err(bad).to_string();
            assert!(err.contains("service name"), "{bad:?}: {err}");
        }
        assert!(Segment::parse("node name", "n1").is_ok());
        assert!(Segment::parse("node name", "N1").is_err());
    }

    #[test]
    fn parsed_fields() {
        let s = id("/ns/prod/dc/dc7/svc/web");
        assert_eq!(
            s.parse::<SpiffeId>(),
            SpiffeId::service(&TD.parse().expect("td"), "prod", "dc7", "web")
        );
        assert!(
            matches!(s.parse::<SpiffeId>(), Ok(SpiffeId::Service { service, .. }) if service == "web")
        );
        let a: SpiffeId = id("/agent/client/dc/dc1/id/n1").parse().expect("agent");
        assert!(matches!(&a, SpiffeId::Agent { node, .. } if node == "n1"));
        assert_eq!(a.datacenter(), "dc1");
        assert_eq!(a.trust_domain().as_str(), TD);
        let srv: SpiffeId = id("/agent/server/dc/dc3").parse().expect("server");
        assert!(matches!(srv, SpiffeId::Server { .. }));
        assert_eq!(srv.datacenter(), "dc3");
        let gw: SpiffeId = id("/gateway/mesh/dc/dc4").parse().expect("gw");
        assert!(matches!(gw, SpiffeId::MeshGateway { .. }));
    }

    #[test]
    fn bad_ids_are_rejected_with_clear_messages() {
        let long_seg = "a".repeat(256);
        let long_id = id(&format!("/ns/default/dc/dc1/svc/{}", "a/".repeat(1100)));
        let bad: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            ("web".into(), "does not start with"),
            ("/ns/default/dc/dc1/svc/web".into(), "does not start with"),
            (
                format!("https://{TD}/ns/default/dc/dc1/svc/web"),
                "does not start with",
            ),
            (
                format!("spiffe:/{TD}/ns/default/dc/dc1/svc/web"),
                "does not start with",
            ),
            (
                format!("spiffe:{TD}/ns/default/dc/dc1/svc/web"),
                "does not start with",
            ),
            (
                format!("SPIFFE://{TD}/ns/default/dc/dc1/svc/web"),
                "lower-case",
            ),
            (
                format!("Spiffe://{TD}/ns/default/dc/dc1/svc/web"),
                "lower-case",
            ),
            (format!(" {}", id("/agent/server/dc/dc1")), "whitespace"),
            (format!("{} ", id("/agent/server/dc/dc1")), "whitespace"),
            (id("/ns/default/dc/dc1/svc/we b"), "whitespace"),
            (id("/ns/default/dc/dc1/svc/web\n"), "whitespace"),
            (id("/ns/default/dc/dc1/svc/web\0"), "control"),
            (id("/ns/default/dc/dc1/svc/w\u{7f}b"), "control"),
            (id("/ns/default/dc/dc1/svc/wéb"), "non-ASCII"),
            (id("/ns/default/dc/dc1/svc/web\u{200b}"), "non-ASCII"),
            // Trust domain.
            (
                "spiffe://OTHER.consul/ns/default/dc/dc1/svc/web".into(),
                "lower case",
            ),
            (
                "spiffe://Example.org/agent/server/dc/dc1".into(),
                "lower case",
            ),
            (
                "spiffe:///ns/default/dc/dc1/svc/web".into(),
                "trust domain is empty",
            ),
            ("spiffe://".into(), "trust domain is empty"),
            ("spiffe://a_b/agent/server/dc/dc1".into(), "only [a-z0-9.-]"),
            ("spiffe://.consul/agent/server/dc/dc1".into(), "empty label"),
            ("spiffe://consul./agent/server/dc/dc1".into(), "empty label"),
            ("spiffe://a..b/agent/server/dc/dc1".into(), "empty label"),
            ("spiffe://../agent/server/dc/dc1".into(), "empty label"),
            (
                format!("spiffe://{}/agent/server/dc/dc1", "a".repeat(256)),
                "longer than 255",
            ),
            (
                format!("spiffe://{TD}:8080/ns/default/dc/dc1/svc/web"),
                "port",
            ),
            (format!("spiffe://{TD}:/ns/default/dc/dc1/svc/web"), "port"),
            (
                format!("spiffe://user@{TD}/ns/default/dc/dc1/svc/web"),
                "userinfo",
            ),
            (
                format!("spiffe://user:pw@{TD}/ns/default/dc/dc1/svc/web"),
                "userinfo",
            ),
            (
                "spiffe://[::1]/agent/server/dc/dc1".into(),
                "only [a-z0-9.-]",
            ),
            // Path structure.
            (format!("spiffe://{TD}"), "has no path"),
            (format!("spiffe://{TD}/"), "path segment is empty"),
            (id("/ns/default/dc/dc1/svc/web/"), "path segment is empty"),
            (id("//ns/default/dc/dc1/svc/web"), "path segment is empty"),
            (id("/ns/default//dc/dc1/svc/web"), "path segment is empty"),
            (
                id("/ns/default/dc/dc1/svc/../../agent/server"),
                "must not be \"..\"",
            ),
            (id("/ns/default/dc/dc1/svc/.."), "must not be \"..\""),
            (id("/ns/default/dc/./svc/web"), "must not be \".\""),
            (id("/ns/default/dc/dc1/svc/%2e%2e"), "percent-encoding"),
            (id("/ns/default/dc/dc1/svc/w%65b"), "percent-encoding"),
            (id("/ns/default/dc/dc1/svc/web?x=1"), "query"),
            (id("/ns/default/dc/dc1/svc/web?"), "query"),
            (id("/ns/default/dc/dc1/svc/web#frag"), "fragment"),
            (id("/ns/default/dc/dc1/svc/Web"), "must be lower case"),
            (id("/NS/default/dc/dc1/svc/web"), "must be lower case"),
            (id("/ns/default/dc/DC1/svc/web"), "must be lower case"),
            (id("/ns/default/dc/dc1/svc/web:80"), "only [a-z0-9._-]"),
            (id("/ns/default/dc/dc1/svc/web;x"), "only [a-z0-9._-]"),
            (id("/ns/default/dc/dc1/svc/web+x"), "only [a-z0-9._-]"),
            (id("/ns/default/dc/dc1/svc/web\\x"), "only [a-z0-9._-]"),
            (id("/ns/default/dc/dc1/svc/*"), "only [a-z0-9._-]"),
            (
                id(&format!("/ns/default/dc/dc1/svc/{long_seg}")),
                "longer than 255",
            ),
            (long_id, "longer than 2048"),
            // Unknown shapes.
            (id("/ns/default/dc/dc1/svc"), "unsupported path"),
            (id("/ns/default/dc/dc1/svc/web/extra"), "unsupported path"),
            (id("/ns/default/dc/dc1"), "unsupported path"),
            (id("/dc/dc1/svc/web"), "unsupported path"),
            (
                id("/ap/default/ns/default/dc/dc1/svc/web"),
                "unsupported path",
            ),
            (id("/agent/client/dc/dc1"), "unsupported path"),
            (id("/agent/client/dc/dc1/id"), "unsupported path"),
            (id("/agent/server/dc/dc1/id/x"), "unsupported path"),
            (id("/agent/server"), "unsupported path"),
            (id("/gateway/mesh/dc"), "unsupported path"),
            (id("/gateway/terminating/dc/dc1"), "unsupported path"),
            (id("/svc/web"), "unsupported path"),
            (id("/x"), "unsupported path"),
        ];
        for (input, needle) in bad {
            check(&input, Expect::Err(needle));
        }
    }

    #[test]
    fn over_long_input_is_not_echoed() {
        let s = format!("spiffe://{}", "A".repeat(10_000));
        let err = s.parse::<SpiffeId>().expect_err("too long").to_string();
        assert!(err.len() < 200, "{err}");
        let s = id(&format!("/ns/default/dc/dc1/svc/{}", "B".repeat(200)));
        let err = s.parse::<SpiffeId>().expect_err("upper").to_string();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn segments() {
        let table: &[(&str, Option<&str>)] = &[
            ("web", None),
            ("web-1", None),
            ("web_1", None),
            ("web.v1", None),
            ("0", None),
            ("-", None),
            ("...", None),
            ("", Some("service name is empty")),
            (".", Some("service name must not be \".\"")),
            ("..", Some("service name must not be \"..\"")),
            ("Web", Some("service name \"Web\" must be lower case")),
            ("web%2f", Some("must not be percent-encoded")),
            ("we b", Some("whitespace")),
            ("web\t", Some("whitespace")),
            ("a/b", Some("contains '/'")),
            ("a?b", Some("contains '?'")),
            ("a#b", Some("contains '#'")),
            ("a@b", Some("contains '@'")),
            ("a:b", Some("contains ':'")),
            ("wéb", Some("contains 'é'")),
        ];
        for (input, want) in table {
            let got = validate_segment("service name", input);
            match (want, got) {
                (None, Ok(())) => {}
                (Some(needle), Err(e)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(needle), "{input:?}: {msg:?} lacks {needle:?}");
                }
                (want, got) => panic!("{input:?}: want {want:?}, got {got:?}"),
            }
        }
        assert!(validate_segment("datacenter", &"a".repeat(255)).is_ok());
        let e = validate_segment("datacenter", &"a".repeat(256)).expect_err("long");
        assert!(e
            .to_string()
            .contains("datacenter is longer than 255 bytes"));
    }

    #[test]
    fn trust_domains() {
        let td = TrustDomain::for_cluster(&Uuid::nil());
        assert_eq!(td.as_str(), "00000000-0000-0000-0000-000000000000.consul");
        assert_eq!(
            td.ca_uri(),
            "spiffe://00000000-0000-0000-0000-000000000000.consul"
        );
        assert_eq!(td.as_str().parse::<TrustDomain>(), Ok(td.clone()));
        for good in ["a", "example.org", "a-b.c", "1.2.3.4", TD] {
            assert_eq!(
                good.parse::<TrustDomain>().map(|t| t.to_string()),
                Ok(good.into())
            );
        }
        for bad in [
            "",
            "A.consul",
            "a_b",
            "a b",
            "a:1",
            "a/b",
            ".a",
            "a.",
            "a..b",
            "spiffe://a",
            "é",
        ] {
            assert!(bad.parse::<TrustDomain>().is_err(), "{bad:?} accepted");
        }
        assert!("a".repeat(256).parse::<TrustDomain>().is_err());
        // The CA's own URI is a trust domain, not an identity we issue.
        assert!(td.ca_uri().parse::<SpiffeId>().is_err());
    }

    #[test]
    fn trust_domain_serde_validates() {
        let td = TrustDomain::for_cluster(&Uuid::nil());
        let json = serde_json::to_string(&td).expect("ser");
        assert_eq!(json, "\"00000000-0000-0000-0000-000000000000.consul\"");
        assert_eq!(serde_json::from_str::<TrustDomain>(&json).expect("de"), td);
        assert!(serde_json::from_str::<TrustDomain>("\"Bad.Consul\"").is_err());
        assert!(serde_json::from_str::<TrustDomain>("\"\"").is_err());
    }

    #[test]
    fn constructors_validate() {
        let td: TrustDomain = TD.parse().expect("td");
        let s = SpiffeId::service(&td, "default", "dc1", "web").expect("service");
        assert_eq!(s.to_string(), id("/ns/default/dc/dc1/svc/web"));
        let e = SpiffeId::service(&td, "default", "dc1", "../x").expect_err("bad svc");
        assert!(e.to_string().contains("service name"), "{e}");
        let e = SpiffeId::service(&td, "default", "DC1", "web").expect_err("bad dc");
        assert!(e.to_string().contains("datacenter"), "{e}");
        let e = SpiffeId::service(&td, "", "dc1", "web").expect_err("bad ns");
        assert!(e.to_string().contains("namespace"), "{e}");

        let a = SpiffeId::agent(&td, "dc1", "node-1").expect("agent");
        assert_eq!(a.to_string(), id("/agent/client/dc/dc1/id/node-1"));
        assert!(SpiffeId::agent(&td, "dc1", "no/de").is_err());
        let srv = SpiffeId::server(&td, "dc1").expect("server");
        assert_eq!(srv.to_string(), id("/agent/server/dc/dc1"));
        assert!(SpiffeId::server(&td, "").is_err());
        let gw = SpiffeId::mesh_gateway(&td, "dc1").expect("gw");
        assert_eq!(gw.to_string(), id("/gateway/mesh/dc/dc1"));
        assert!(SpiffeId::mesh_gateway(&td, "d c").is_err());
        for built in [s, a, srv, gw] {
            assert_eq!(built.to_string().parse::<SpiffeId>(), Ok(built));
        }
    }
}
