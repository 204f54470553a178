//! Certificate serial numbers: whoever signs decides them (a provider may
//! assign its own, as Vault does), and everything downstream — the audit
//! trail, `IssuedCert.SerialNumber`, `CARoot.SerialNumber` — reads this type.

use std::fmt;

/// A certificate serial number: the unsigned big-endian bytes of a positive
/// DER INTEGER, without leading zero bytes. Built only from a parsed
/// certificate or from bytes that pass [`Serial::from_bytes`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    #[error("a serial number must not be zero or empty")]
    Zero,
    #[error("a serial number must not be longer than 20 bytes, got {0}")]
    TooLong(usize),
}

/// RFC 5280 §4.1.2.2: conforming CAs use serials of at most 20 octets.
const MAX_LEN: usize = 20;

impl Serial {
    /// The serial with these big-endian bytes (leading zeros are dropped).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SerialError> {
        let first = bytes
            .iter()
            .position(|b| *b != 0)
            .ok_or(SerialError::Zero)?;
        let trimmed = &bytes[first..];
        if trimmed.len() > MAX_LEN {
            return Err(SerialError::TooLong(trimmed.len()));
        }
        Ok(Self(trimmed.to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The low 64 bits, for Consul's numeric `CARoot.SerialNumber`. Root
    /// serials meshca writes fit; foreign ones are truncated.
    pub fn low_u64(&self) -> u64 {
        self.0
            .iter()
            .rev()
            .take(8)
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    }
}

/// Lower-case colon-hex (`3a:0f:…`), as Consul prints serials.
impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::x509::colon_hex(&self.0))
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zeros_are_dropped_and_zero_is_refused() {
        let s = Serial::from_bytes(&[0, 0, 0x3a, 0x0f]).unwrap();
        assert_eq!(s.as_bytes(), [0x3a, 0x0f]);
        assert_eq!(s.to_string(), "3a:0f");
        assert_eq!(s.low_u64(), 0x3a0f);
        assert_eq!(Serial::from_bytes(&[0, 0]), Err(SerialError::Zero));
        assert_eq!(Serial::from_bytes(&[]), Err(SerialError::Zero));
        assert_eq!(Serial::from_bytes(&[1; 21]), Err(SerialError::TooLong(21)));
    }

    #[test]
    fn low_u64_keeps_the_last_eight_bytes() {
        let s = Serial::from_bytes(&[0xff, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(s.low_u64(), 0x0102_0304_0506_0708);
    }
}
