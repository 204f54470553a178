//! The names of the store's sled trees and keys: one place, so the store and
//! every migration agree on the layout.

/// Store-wide metadata: schema version, global index, sealed data key.
pub const META_TREE: &str = "meta";
/// The CA state.
pub const CA_TREE: &str = "ca";

/// `meta`: the schema version, a big-endian u64.
pub const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";
/// `meta`: the global index, a big-endian u64 (0 before the first commit).
pub const INDEX_KEY: &[u8] = b"index";
/// `meta`: the active data key, sealed under the store key (JSON record).
pub const DATA_KEY_KEY: &[u8] = b"data_key";
/// `ca`: the CA state, sealed under the data key (JSON record).
pub const CA_STATE_KEY: &[u8] = b"state";

/// Decodes a big-endian u64 as the layout stores it; `None` if the length is wrong.
pub fn decode_u64(raw: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(raw).ok().map(u64::from_be_bytes)
}
