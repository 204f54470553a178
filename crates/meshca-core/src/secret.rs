//! Secret material (private keys, tokens) that must never reach a log line.

use secrecy::{ExposeSecret as _, SecretSlice};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq as _;

/// Bytes held in a `secrecy` box: zeroed on drop, printed as `[redacted]`,
/// compared in constant time.
///
/// Serialisation is deliberately allowed (the store seals these before they
/// touch the disk), in the same form as a plain byte vector.
#[derive(Clone)]
pub struct SecretBytes(SecretSlice<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(SecretSlice::from(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// The content as UTF-8 text, for PEM-encoded secrets.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(self.expose()).ok()
    }
}

/// Constant time in the content (the lengths are not secret).
impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.expose().ct_eq(other.expose()).into()
    }
}

impl Eq for SecretBytes {}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.expose().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let s = SecretBytes::new(b"-----BEGIN PRIVATE KEY-----".to_vec());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(s.expose_str(), Some("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn serialises_as_the_byte_vector_it_replaced() {
        let s = SecretBytes::new(vec![0, 1, 255]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "[0,1,255]");
        let back: SecretBytes = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_ne!(back, SecretBytes::new(vec![0, 1, 254]));
        assert_ne!(back, SecretBytes::new(vec![0, 1]));
    }
}
