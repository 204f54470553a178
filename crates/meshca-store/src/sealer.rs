//! [`Sealer`]: the data key, opened or created under the store key, sealing
//! records by their key.

use crate::key::StoreKey;
use crate::seal::{DataKey, DataKeyRecord, SealedRecord};
use crate::StoreError;
use std::fmt;
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

/// Seals and opens record values with the store's data key.
///
/// A sealed value is JSON `{"data_key_id", "sealed"}` where `sealed` is
/// base64 of AES-256-GCM output whose associated data names the record key
/// and the data key's ID: a sealed value copied under another key, or
/// sealed by another data key, fails to open instead of being read as
/// something it is not. Every backend sees only these sealed bytes.
pub struct Sealer {
    data_key: DataKey,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("data_key", &self.data_key)
            .finish()
    }
}

impl Sealer {
    /// A sealer with a fresh random data key created at `now`.
    pub fn generate(now: OffsetDateTime) -> Result<Self, StoreError> {
        Ok(Self {
            data_key: DataKey::generate(now)?,
        })
    }

    /// Opens the data key record (the value of `meta/data_key`) with the
    /// store key. A key other than the one that sealed it is `WrongKey`.
    pub fn from_record(record: &[u8], key: &StoreKey) -> Result<Self, StoreError> {
        let record: DataKeyRecord = serde_json::from_slice(record)
            .map_err(|e| StoreError::Corrupt(format!("the data key record: {e}")))?;
        Ok(Self {
            data_key: DataKey::unseal(&record, key)?,
        })
    }

    /// The data key record to store: the data key sealed under `key`.
    pub fn to_record(&self, key: &StoreKey) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(&self.data_key.seal_with(key)?)
            .map_err(|e| StoreError::Corrupt(format!("encoding the data key record: {e}")))
    }

    pub fn data_key_id(&self) -> Uuid {
        self.data_key.id
    }

    pub fn created_at(&self) -> OffsetDateTime {
        self.data_key.created_at
    }

    /// Seals `plaintext` as the value of `record_key`.
    pub fn seal(&self, record_key: &str, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let record = self.data_key.seal_record(record_key, plaintext)?;
        serde_json::to_vec(&record)
            .map_err(|e| StoreError::Corrupt(format!("encoding sealed {record_key}: {e}")))
    }

    /// Opens a value sealed by [`Sealer::seal`] for the same `record_key`.
    /// Anything else (another key's value, tampered bytes, another data
    /// key) is `Corrupt`, never skipped.
    pub fn open(&self, record_key: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let record: SealedRecord = serde_json::from_slice(sealed).map_err(|e| {
            StoreError::Corrupt(format!("{record_key} is not a sealed record: {e}"))
        })?;
        self.data_key.open_record(record_key, &record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: OffsetDateTime = time::macros::datetime!(2030-01-01 00:00 UTC);

    #[test]
    fn a_value_opens_only_under_its_own_key() {
        let sealer = Sealer::generate(NOW).unwrap();
        let sealed = sealer.seal("ca/keys", b"secret").unwrap();
        assert_eq!(&sealer.open("ca/keys", &sealed).unwrap()[..], b"secret");
        assert!(matches!(
            sealer.open("ca/config", &sealed),
            Err(StoreError::Corrupt(_))
        ));
        let other = Sealer::generate(NOW).unwrap();
        assert!(matches!(
            other.open("ca/keys", &sealed),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            sealer.open("ca/keys", b"not json"),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn the_data_key_record_round_trips_under_its_store_key_only() {
        let key = StoreKey::generate().unwrap();
        let sealer = Sealer::generate(NOW).unwrap();
        let record = sealer.to_record(&key).unwrap();
        let back = Sealer::from_record(&record, &key).unwrap();
        assert_eq!(back.data_key_id(), sealer.data_key_id());
        assert_eq!(back.created_at(), NOW);
        let sealed = sealer.seal("ca/keys", b"x").unwrap();
        assert_eq!(&back.open("ca/keys", &sealed).unwrap()[..], b"x");
        assert!(matches!(
            Sealer::from_record(&record, &StoreKey::generate().unwrap()),
            Err(StoreError::WrongKey(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let shown = format!("{:?}", Sealer::generate(NOW).unwrap());
        assert!(shown.contains("[redacted]"), "{shown}");
    }
}
