//! The CA's key type and size (`PrivateKeyType` + `PrivateKeyBits`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A key type and size meshca can generate and accept. Only the combinations
/// listed here exist: an EC P-521 or RSA-1024 key cannot be expressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeySpec {
    #[default]
    EcP256,
    EcP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySpecError {
    #[error("PrivateKeyType must be \"ec\" or \"rsa\", got {0:?}")]
    UnknownType(String),
    #[error("PrivateKeyBits for ec keys must be 256 or 384, got {0}")]
    BadEcBits(u32),
    #[error("PrivateKeyBits for rsa keys must be 2048, 3072 or 4096, got {0}")]
    BadRsaBits(u32),
}

impl KeySpec {
    pub const ALL: [KeySpec; 5] = [
        KeySpec::EcP256,
        KeySpec::EcP384,
        KeySpec::Rsa2048,
        KeySpec::Rsa3072,
        KeySpec::Rsa4096,
    ];

    /// Builds a spec from Consul's `PrivateKeyType`/`PrivateKeyBits` pair.
    /// A bits value of 0 means the type's default (256 for ec, 2048 for rsa).
    pub fn from_type_and_bits(key_type: &str, bits: u32) -> Result<Self, KeySpecError> {
        match (key_type, bits) {
            ("ec", 0 | 256) => Ok(Self::EcP256),
            ("ec", 384) => Ok(Self::EcP384),
            ("ec", b) => Err(KeySpecError::BadEcBits(b)),
            ("rsa", 0 | 2048) => Ok(Self::Rsa2048),
            ("rsa", 3072) => Ok(Self::Rsa3072),
            ("rsa", 4096) => Ok(Self::Rsa4096),
            ("rsa", b) => Err(KeySpecError::BadRsaBits(b)),
            (t, _) => Err(KeySpecError::UnknownType(t.to_string())),
        }
    }

    /// Consul's `PrivateKeyType` string.
    pub fn key_type(&self) -> &'static str {
        match self {
            Self::EcP256 | Self::EcP384 => "ec",
            _ => "rsa",
        }
    }

    pub fn bits(&self) -> u32 {
        match self {
            Self::EcP256 => 256,
            Self::EcP384 => 384,
            Self::Rsa2048 => 2048,
            Self::Rsa3072 => 3072,
            Self::Rsa4096 => 4096,
        }
    }

    pub fn is_rsa(&self) -> bool {
        self.key_type() == "rsa"
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.key_type(), self.bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_spec() {
        for spec in KeySpec::ALL {
            assert_eq!(
                KeySpec::from_type_and_bits(spec.key_type(), spec.bits()),
                Ok(spec)
            );
        }
    }

    #[test]
    fn zero_bits_means_the_type_default() {
        assert_eq!(KeySpec::from_type_and_bits("ec", 0), Ok(KeySpec::EcP256));
        assert_eq!(KeySpec::from_type_and_bits("rsa", 0), Ok(KeySpec::Rsa2048));
    }

    #[test]
    fn rejects_unsupported_combinations() {
        assert_eq!(
            KeySpec::from_type_and_bits("ec", 521),
            Err(KeySpecError::BadEcBits(521))
        );
        assert_eq!(
            KeySpec::from_type_and_bits("ec", 224),
            Err(KeySpecError::BadEcBits(224))
        );
        assert_eq!(
            KeySpec::from_type_and_bits("rsa", 1024),
            Err(KeySpecError::BadRsaBits(1024))
        );
        assert!(matches!(
            KeySpec::from_type_and_bits("ed25519", 256),
            Err(KeySpecError::UnknownType(_))
        ));
    }
}
