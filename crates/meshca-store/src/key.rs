//! The store key: the operator-held secret that seals the store's data keys.
//!
//! The file format (CockroachDB's): 32 bytes of key ID followed by a 16-,
//! 24- or 32-byte AES key, either raw (a binary file, what `meshca keygen
//! --out` writes) or base64 of the same bytes (what `meshca keygen` prints).
//! The store key seals only the data key registry, with AES-GCM of its own
//! size; the data keys that seal records are always AES-256-GCM. A key file
//! that group or others can read is refused, as ssh refuses such a private
//! key.

use crate::StoreError;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use zeroize::Zeroizing;

/// Length of a store key ID.
pub const KEY_ID_LEN: usize = 32;
/// Length of the key `meshca keygen` makes (AES-256) and of every data key.
pub const KEY_LEN: usize = 32;
/// The AES key lengths a store key file may hold: AES-128, -192 and -256.
pub const KEY_LENS: [usize; 3] = [16, 24, 32];
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

/// A store key: a public ID and a 128-, 192- or 256-bit AES key, zeroed on
/// drop.
#[derive(Clone)]
pub struct StoreKey {
    id: StoreKeyId,
    key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKey")
            .field("id", &self.id)
            .field("bits", &(self.key.len() * 8))
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

    /// The AES key (16, 24 or 32 bytes), for sealing the data key registry.
    pub(crate) fn key_bytes(&self) -> &[u8] {
        &self.key
    }

    /// The AES key size in bits: 128, 192 or 256.
    pub fn bits(&self) -> usize {
        self.key.len() * 8
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

    /// Parses the raw form: key ID then a 16-, 24- or 32-byte key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        let key_len = bytes.len().saturating_sub(KEY_ID_LEN);
        if bytes.len() <= KEY_ID_LEN || !KEY_LENS.contains(&key_len) {
            return Err(StoreError::InvalidKey(length_message(bytes.len())));
        }
        let (id, key) = bytes.split_at(KEY_ID_LEN);
        let mut id_arr = [0u8; KEY_ID_LEN];
        id_arr.copy_from_slice(id);
        Ok(Self {
            id: StoreKeyId(id_arr),
            key: Zeroizing::new(key.to_vec()),
        })
    }

    /// The raw form (key ID then key), zeroed on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut raw = Zeroizing::new(Vec::with_capacity(KEY_ID_LEN + self.key.len()));
        raw.extend_from_slice(self.id.as_bytes());
        raw.extend_from_slice(&self.key[..]);
        raw
    }

    /// The base64 form (what `meshca keygen` prints), zeroed on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(&self.to_bytes()[..]))
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
    /// Refuses a file that group or others may read (or write), naming
    /// its mode, before reading it.
    ///
    /// Raw random bytes are practically never valid base64, so trying base64
    /// first cannot misread a binary key file.
    pub fn load(path: &Path) -> Result<Self, StoreError> {
        check_private(path)?;
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
        let mut line = Zeroizing::new(key.to_base64().to_string());
        line.push('\n');
        write_new_file(path, line.as_bytes())?;
        Ok(key)
    }

    /// Generates a key and writes it in the binary layout (key ID then
    /// key) to a new file with mode 0600, refusing to overwrite one.
    pub fn write_new_raw(path: &Path) -> Result<Self, StoreError> {
        let key = Self::generate()?;
        write_new_file(path, &key.to_bytes())?;
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
}

/// Writes `content` to a file that must not exist yet, then syncs the file
/// and its directory so the key is not lost before the data it seals.
fn write_new_file(path: &Path, content: &[u8]) -> Result<(), StoreError> {
    let mut file = create_private_file(path)?;
    file.write_all(content)
        .and_then(|()| file.sync_all())
        .and_then(|()| crate::fs::sync_parent_dir(path))
        .map_err(|e| io_error("writing store key", path, &e))
}

/// Refuses a key file whose mode lets group or others read or write it,
/// as ssh does for a private key: such a key may already be copied.
#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|e| io_error("reading store key", path, &e))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreError::InvalidKey(format!(
            "permissions {mode:04o} for {} are too open: a store key file must be \
             accessible by its owner only (chmod 600 {})",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), StoreError> {
    Ok(())
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

/// Explains a key of the wrong length, naming the sizes that work.
fn length_message(len: usize) -> String {
    format!(
        "{len} bytes; expected a 32-byte key ID then a 16-, 24- or 32-byte AES key \
         (48, 56 or 64 bytes), raw or base64"
    )
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
    fn aes_128_192_and_256_keys_are_accepted_and_other_sizes_named() {
        for key_len in KEY_LENS {
            let key = StoreKey::from_bytes(&vec![1; KEY_ID_LEN + key_len]).unwrap();
            assert_eq!(key.bits(), key_len * 8);
            assert_eq!(&key.to_bytes()[..], &vec![1; KEY_ID_LEN + key_len][..]);
        }
        for len in [
            0,
            10,
            KEY_ID_LEN,
            KEY_ID_LEN + 8,
            KEY_ID_LEN + 31,
            KEY_ID_LEN + 33,
        ] {
            let err = StoreKey::from_bytes(&vec![1; len]).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, StoreError::InvalidKey(_)), "{len}");
            assert!(msg.contains("16-, 24- or 32-byte"), "{msg}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_readable_by_others_is_refused_naming_its_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k");
        let key = StoreKey::write_new_raw(&path).unwrap();
        assert_eq!(StoreKey::load(&path).unwrap().id(), key.id());
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let msg = StoreKey::load(&path).unwrap_err().to_string();
            assert!(
                msg.contains(&format!(
                    "permissions {mode:04o} for {} are too open",
                    path.display()
                )),
                "{msg}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(StoreKey::load(&path).unwrap().id(), key.id());
    }

    #[cfg(unix)]
    #[test]
    fn keygen_files_are_raw_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k");
        let key = StoreKey::write_new_raw(&path).unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert_eq!(raw.len(), KEY_ID_LEN + KEY_LEN);
        assert_eq!(&raw[..], &key.to_bytes()[..]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = StoreKey::write_new_raw(&path).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), raw, "the file is unchanged");
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
