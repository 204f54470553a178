//! The names of the store's records, in one place, so that [`crate::Records`],
//! the migrations and every backend agree on the layout.
//!
//! A record key is `<namespace>/<name>`. The namespace is lower-case ASCII
//! letters, digits, `-` and `_` (not starting with `_`); the name is any
//! non-empty text. Backends may map a namespace to a table of their own (the
//! sled backend maps it to a sled tree), which is why it is restricted.

use crate::StoreError;

/// Store-wide metadata.
pub const META: &str = "meta/";
/// The schema version, a big-endian u64 (absent: 0, a new store).
pub const SCHEMA_VERSION: &str = "meta/schema_version";
/// The global index, a big-endian u64, maintained by the backend: it can be
/// read and checked, never written.
pub const INDEX: &str = "meta/index";
/// Schemas 1 and 2: the one data key, sealed under the store key (JSON).
/// Replaced by [`DATA_KEYS`] in migration 3.
pub const DATA_KEY: &str = "meta/data_key";
/// The data key registry: every data key, oldest first, sealed together
/// under the store key (JSON with a key check and one sealed blob).
pub const DATA_KEYS: &str = "meta/data_keys";

/// The datacenter the store's CA issues leaves for (UTF-8 text), recorded
/// at the first start: every leaf's SPIFFE ID names it.
pub const DATACENTER: &str = "meta/datacenter";

/// Every CA record starts with this.
pub const CA: &str = "ca/";
/// Schema 1: the whole CA state as one sealed record. Split by migration 2.
pub const CA_STATE_V1: &str = "ca/state";
/// Cluster ID, the CA's modify index and the roots with their certificates:
/// public, plain JSON.
pub const CA_ROOTS: &str = "ca/roots";
/// The CA configuration with its indexes: sealed, because it may hold a
/// supplied root's private key or a Vault token.
pub const CA_CONFIG: &str = "ca/config";
/// The private keys by handle: sealed.
pub const CA_KEYS: &str = "ca/keys";
/// The provider's public bookkeeping (which key handle signs now): plain JSON.
pub const CA_PROVIDER: &str = "ca/provider";

/// Every ACL record starts with this. ACL records hold no secret (a token's
/// secret is stored as its SHA-256 only), so they are plain JSON.
pub const ACL: &str = "acl/";
/// `acl/token/<AccessorID>`: one token.
pub const ACL_TOKEN: &str = "acl/token/";
/// `acl/policy/<ID>`: one policy.
pub const ACL_POLICY: &str = "acl/policy/";
/// Present once the ACL system was bootstrapped (holds the index it was at).
pub const ACL_BOOTSTRAP: &str = "acl/bootstrap";

/// Every record of the current CA layout, in key order.
pub const CA_RECORDS: [&str; 4] = [CA_CONFIG, CA_KEYS, CA_PROVIDER, CA_ROOTS];

/// Encodes a u64 as the layout stores it: 8 big-endian bytes.
pub fn encode_u64(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

/// Decodes [`encode_u64`]; `None` if the length is wrong.
pub fn decode_u64(raw: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(raw).ok().map(u64::from_be_bytes)
}

/// Splits a record key into its namespace and name, refusing keys a backend
/// cannot hold.
pub fn split_key(key: &str) -> Result<(&str, &str), StoreError> {
    let invalid = |why: &str| StoreError::InvalidRecordKey(format!("{key}: {why}"));
    let (namespace, name) = key
        .split_once('/')
        .ok_or_else(|| invalid("expected <namespace>/<name>"))?;
    if namespace.is_empty() || name.is_empty() {
        return Err(invalid("expected <namespace>/<name>"));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if !namespace.chars().all(allowed) || namespace.starts_with('_') {
        return Err(invalid(
            "the namespace takes lower-case letters, digits, '-' and '_' (not first)",
        ));
    }
    Ok((namespace, name))
}

/// [`split_key`] for callers that only need the verdict.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    split_key(key).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_need_a_namespace_and_a_name() {
        assert_eq!(split_key("ca/keys").unwrap(), ("ca", "keys"));
        assert_eq!(
            split_key("acl/token/abc").unwrap(),
            ("acl", "token/abc"),
            "only the first slash separates"
        );
        for bad in ["", "ca", "/x", "ca/", "CA/x", "_x/y", "a b/c"] {
            assert!(
                matches!(split_key(bad), Err(StoreError::InvalidRecordKey(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_ca_records_are_listed_in_key_order() {
        let mut sorted = CA_RECORDS;
        sorted.sort_unstable();
        assert_eq!(sorted, CA_RECORDS);
        assert!(CA_RECORDS.iter().all(|k| k.starts_with(CA)));
    }

    #[test]
    fn u64_round_trips() {
        assert_eq!(decode_u64(&encode_u64(42)), Some(42));
        assert_eq!(decode_u64(b"xx"), None);
    }
}
