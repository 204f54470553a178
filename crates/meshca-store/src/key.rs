//! The store key: the operator-held secret that seals the store's data keys.
//!
//! The file format: 32 bytes of key ID followed by the key, either raw (a
//! binary file) or base64 of the same bytes (what `meshca keygen` prints).
//! The format allows 16/24/32-byte keys; meshca seals with AES-256-GCM, so it
//! accepts only 32-byte keys and says so for the shorter ones.

use crate::StoreError;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use zeroize::Zeroizing;

/// Length of a store key ID.
pub const KEY_ID_LEN: usize = 32;
/// Length of the AES-256 key this build accepts.
pub const KEY_LEN: usize = 32;
/// File name of the key created in a data dir when none is configured.
pub const KEY_FILE_NAME: &str = "store.key";

/// Standard base64, with or without padding, as operators paste it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The public identifier of a store key, recorded next to what it seals so
/// that a wrong key is recognised before anything is decrypted.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreKeyId([u8; KEY_ID_LEN]);

impl StoreKeyId {
    pub fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }

    /// The full ID as lower-case hex, as stored in the data key record.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`StoreKeyId::to_hex`] output.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut id = [0u8; KEY_ID_LEN];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(Self(id))
    }
}

/// Shows a 16-hex-digit fingerprint: enough to tell keys apart in a message.
impl fmt::Display for StoreKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex()[..16])
    }
}

impl fmt::Debug for StoreKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKeyId({self})")
    }
}

/// A store key: a public ID and a 256-bit AES key, zeroed on drop.
#[derive(Clone)]
pub struct StoreKey {
    id: StoreKeyId,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKey")
            .field("id", &self.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl StoreKey {
    /// A fresh random key and ID from the system's secure generator.
    pub fn generate() -> Result<Self, StoreError> {
        let mut bytes = Zeroizing::new([0u8; KEY_ID_LEN + KEY_LEN]);
        aws_lc_rs::rand::fill(&mut bytes[..])
            .map_err(|_| StoreError::Io("the system random generator failed".into()))?;
        Self::from_bytes(&bytes[..])
    }

    pub fn id(&self) -> &StoreKeyId {
        &self.id
    }

    /// The AES-256 key, for sealing data keys.
    pub(crate) fn key_bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// An HMAC-SHA256 key for `purpose`, derived from this key with HKDF
    /// (salt: the key ID). Backends use it to authenticate files of their
    /// own (a high-water mark) without ever holding the store key itself;
    /// each purpose gets an independent key.
    pub fn derive_mac_key(&self, purpose: &[u8]) -> aws_lc_rs::hmac::Key {
        use aws_lc_rs::{hkdf, hmac};
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, self.id.as_bytes()).extract(&self.key[..]);
        let info = [purpose];
        match prk.expand(&info, hmac::HMAC_SHA256) {
            Ok(okm) => hmac::Key::from(okm),
            // HKDF-SHA256 refuses only outputs longer than 255 blocks; one
            // HMAC key is one block, so this arm is unreachable. It still
            // yields a key bound to the store key rather than a panic.
            Err(_) => hmac::Key::new(hmac::HMAC_SHA256, &self.key[..]),
        }
    }

    /// Parses the raw form: key ID then key. Rejects 16/24-byte keys by name.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() != KEY_ID_LEN + KEY_LEN {
            return Err(StoreError::InvalidKey(length_message(bytes.len())));
        }
        let (id, key) = bytes.split_at(KEY_ID_LEN);
        let mut id_arr = [0u8; KEY_ID_LEN];
        id_arr.copy_from_slice(id);
        let mut key_arr = Zeroizing::new([0u8; KEY_LEN]);
        key_arr.copy_from_slice(key);
        Ok(Self {
            id: StoreKeyId(id_arr),
            key: key_arr,
        })
    }

    /// The base64 form (what `meshca keygen` prints), zeroed on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new(Vec::with_capacity(KEY_ID_LEN + KEY_LEN));
        raw.extend_from_slice(self.id.as_bytes());
        raw.extend_from_slice(&self.key[..]);
        Zeroizing::new(B64.encode(&raw[..]))
    }

    /// Parses the base64 form; surrounding whitespace is ignored.
    pub fn from_base64(text: &str) -> Result<Self, StoreError> {
        let raw = B64
            .decode(text.trim())
            .map(Zeroizing::new)
            .map_err(|e| StoreError::InvalidKey(format!("not valid base64: {e}")))?;
        Self::from_bytes(&raw)
    }

    /// Reads a key file in either format: base64 text, or else raw bytes.
    ///
    /// Raw random bytes are practically never valid base64, so trying base64
    /// first cannot misread a binary key file.
    pub fn load(path: &Path) -> Result<Self, StoreError> {
        let content = std::fs::read(path)
            .map(Zeroizing::new)
            .map_err(|e| io_error("reading store key", path, &e))?;
        let decoded = std::str::from_utf8(&content)
            .ok()
            .and_then(|text| B64.decode(text.trim()).ok())
            .map(Zeroizing::new);
        // Once the text decodes as base64, its length decides; falling back
        // to raw bytes here would misread base64 of a 48-byte key (64 chars).
        let raw = decoded.as_deref().map_or(&content[..], |d| &d[..]);
        Self::from_bytes(raw).map_err(|e| in_file(e, path))
    }

    /// Generates a key and writes it, as base64, to a new file with mode 0600.
    /// Refuses to overwrite an existing file: that would orphan a store.
    pub fn write_new(path: &Path) -> Result<Self, StoreError> {
        let key = Self::generate()?;
        key.write_to_new_file(path)?;
        Ok(key)
    }

    /// Loads `<data_dir>/store.key`, or creates it (with a warning) when absent.
    /// Returns the key and whether it was just created.
    pub fn load_or_create_in(data_dir: &Path) -> Result<(Self, bool), StoreError> {
        let path = data_dir.join(KEY_FILE_NAME);
        if path.exists() {
            return Self::load(&path).map(|key| (key, false));
        }
        crate::fs::create_private_dir_all(data_dir)
            .map_err(|e| io_error("creating data dir", data_dir, &e))?;
        let key = Self::write_new(&path)?;
        tracing::warn!(
            path = %path.display(),
            key_id = %key.id(),
            "created a new store key; back it up and keep it apart from the data: \
             without it the store cannot be read"
        );
        Ok((key, true))
    }

    /// Writes the base64 form to a file that must not exist yet, then syncs
    /// the file and its directory so the key is not lost before the data it seals.
    fn write_to_new_file(&self, path: &Path) -> Result<(), StoreError> {
        let mut file = create_private_file(path)?;
        let mut line = Zeroizing::new(self.to_base64().to_string());
        line.push('\n');
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| crate::fs::sync_parent_dir(path))
            .map_err(|e| io_error("writing store key", path, &e))
    }
}

/// Opens `path` for writing with mode 0600, failing if it already exists.
fn create_private_file(path: &Path) -> Result<std::fs::File, StoreError> {
    crate::fs::create_private_file(path, true).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            StoreError::Io(format!(
                "refusing to overwrite existing store key file {}",
                path.display()
            ))
        } else {
            io_error("creating store key", path, &e)
        }
    })
}

/// Explains a key of the wrong length, naming the AES sizes the format allows.
fn length_message(len: usize) -> String {
    match len.checked_sub(KEY_ID_LEN) {
        Some(16) | Some(24) => format!(
            "a {}-byte (AES-{}) key; meshca needs a 32-byte AES-256 key",
            len - KEY_ID_LEN,
            (len - KEY_ID_LEN) * 8
        ),
        _ => format!(
            "{len} bytes; expected {} (a 32-byte key ID then a 32-byte AES-256 key), raw or base64",
            KEY_ID_LEN + KEY_LEN
        ),
    }
}

/// Adds the file name to a key-format error, so the operator knows which file.
fn in_file(err: StoreError, path: &Path) -> StoreError {
    match err {
        StoreError::InvalidKey(msg) => {
            StoreError::InvalidKey(format!("store key file {}: {msg}", path.display()))
        }
        other => other,
    }
}

fn io_error(what: &str, path: &Path, err: &std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        let key = StoreKey::generate().unwrap();
        let back = StoreKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(back.id(), key.id());
        assert_eq!(back.key_bytes(), key.key_bytes());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = StoreKey::from_bytes(&[0xAB; 64]).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(!shown.to_lowercase().contains(&"ab".repeat(17)), "{shown}");
    }

    #[test]
    fn short_aes_keys_are_rejected_by_name() {
        for key_len in [16, 24] {
            let err = StoreKey::from_bytes(&vec![1; KEY_ID_LEN + key_len]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&format!("AES-{}", key_len * 8)), "{msg}");
            assert!(msg.contains("AES-256"), "{msg}");
        }
        let err = StoreKey::from_bytes(&[1; 10]).unwrap_err();
        assert!(matches!(err, StoreError::InvalidKey(_)));
    }

    #[test]
    fn hex_ids_round_trip() {
        let key = StoreKey::generate().unwrap();
        let hex = key.id().to_hex();
        assert_eq!(StoreKeyId::from_hex(&hex), Some(*key.id()));
        assert_eq!(StoreKeyId::from_hex("zz"), None);
        assert_eq!(StoreKeyId::from_hex(&hex[..62]), None);
    }

    #[test]
    fn derived_mac_keys_depend_on_the_purpose_and_the_key() {
        use aws_lc_rs::hmac;
        let key = StoreKey::from_bytes(&[1u8; 64]).unwrap();
        let tag = |k: &StoreKey, purpose: &[u8]| {
            hmac::sign(&k.derive_mac_key(purpose), b"data")
                .as_ref()
                .to_vec()
        };
        assert_eq!(tag(&key, b"a"), tag(&key, b"a"));
        assert_ne!(tag(&key, b"a"), tag(&key, b"b"));
        let mut other = [1u8; 64];
        other[63] = 2;
        assert_ne!(
            tag(&key, b"a"),
            tag(&StoreKey::from_bytes(&other).unwrap(), b"a")
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_and_its_data_dir_are_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("meshca-data");
        let (key, created) = StoreKey::load_or_create_in(&data_dir).unwrap();
        assert!(created);
        assert_eq!(mode(&data_dir), 0o700);
        assert_eq!(mode(&data_dir.join(KEY_FILE_NAME)), 0o600);

        let (again, created) = StoreKey::load_or_create_in(&data_dir).unwrap();
        assert!(!created);
        assert_eq!(again.id(), key.id());
        assert_eq!(again.to_base64(), key.to_base64());
    }
}
