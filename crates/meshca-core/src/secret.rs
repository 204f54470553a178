//! Secret material (private keys, tokens) that must never reach a log line.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes that are zeroed on drop and print as `[redacted]`.
///
/// Serialisation is deliberately allowed (the store seals these before they
/// touch the disk); `Debug` never shows the content.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop, Serialize, Deserialize)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The content as UTF-8 text, for PEM-encoded secrets.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
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
}
