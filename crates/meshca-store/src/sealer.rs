//! [`Sealer`]: the data keys, opened from (or created for) the data key
//! registry under the store key, sealing records by their key.

use crate::key::{StoreKey, StoreKeyId};
use crate::seal::{DataKey, DataKeyRecord, RegistryRecord, SealedRecord};
use crate::StoreError;
use std::fmt;
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

/// Seals and opens record values with the store's data keys.
///
/// A sealed value is JSON `{"data_key_id", "sealed"}` where `sealed` is
/// base64 of AES-256-GCM output whose associated data names the record key
/// and the data key's ID: a sealed value copied under another key, or
/// sealed by another data key, fails to open instead of being read as
/// something it is not. Every backend sees only these sealed bytes.
///
/// A sealer holds every data key of the registry, oldest first: new values
/// are sealed with the newest, and a value opens with the key it names, so
/// data sealed before a rotation stays readable.
#[derive(Clone)]
pub struct Sealer {
    /// Never empty; oldest first.
    keys: Vec<DataKey>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("data_keys", &self.keys)
            .finish()
    }
}

impl Sealer {
    /// A sealer with one fresh random data key created at `now`.
    pub fn generate(now: OffsetDateTime) -> Result<Self, StoreError> {
        Ok(Self {
            keys: vec![DataKey::generate(now)?],
        })
    }

    /// Opens the one data key of the layout before the registry (the value
    /// of `meta/data_key`, schemas 1 and 2) with the store key. A key other
    /// than the one that sealed it is `WrongKey`.
    pub fn from_record(record: &[u8], key: &StoreKey) -> Result<Self, StoreError> {
        let record: DataKeyRecord = serde_json::from_slice(record)
            .map_err(|e| StoreError::Corrupt(format!("the data key record: {e}")))?;
        Ok(Self {
            keys: vec![DataKey::unseal(&record, key)?],
        })
    }

    /// The `meta/data_key` record of schemas 1 and 2: the newest data key
    /// sealed under `key`. Only tests write it, to build stores as older
    /// versions of meshca left them.
    pub fn to_record(&self, key: &StoreKey) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(&self.newest().seal_with(key)?)
            .map_err(|e| StoreError::Corrupt(format!("encoding the data key record: {e}")))
    }

    /// Opens the data key registry (the value of `meta/data_keys`) with the
    /// store key: `WrongKey` for another key, `Corrupt` for a registry that
    /// does not authenticate under the right one.
    pub fn from_registry(record: &[u8], key: &StoreKey) -> Result<Self, StoreError> {
        let keys = parse_registry(record)?.open(key)?;
        Ok(Self { keys })
    }

    /// The data key registry to store: every data key, sealed under `key`.
    pub fn to_registry(&self, key: &StoreKey) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(&RegistryRecord::seal(&self.keys, key)?)
            .map_err(|e| StoreError::Corrupt(format!("encoding the data key registry: {e}")))
    }

    /// The ID of the store key that sealed a registry record, read without
    /// any key (to choose between an old and a new store key).
    pub fn registry_store_key_id(record: &[u8]) -> Result<StoreKeyId, StoreError> {
        parse_registry(record)?.store_key_id()
    }

    /// This sealer with a fresh data key, created at `now`, added as the
    /// newest: it seals from then on, the older ones still open.
    pub fn with_new_key(&self, now: OffsetDateTime) -> Result<Self, StoreError> {
        let mut keys = self.keys.clone();
        keys.push(DataKey::generate(now)?);
        Ok(Self { keys })
    }

    /// Whether the newest data key is at least `period` old at `now`.
    pub fn rotation_due(&self, now: OffsetDateTime, period: time::Duration) -> bool {
        now - self.created_at() >= period
    }

    /// The newest data key's ID: the one new values are sealed with.
    pub fn data_key_id(&self) -> Uuid {
        self.newest().id
    }

    /// When the newest data key was created.
    pub fn created_at(&self) -> OffsetDateTime {
        self.newest().created_at
    }

    /// Every data key's ID, oldest first.
    pub fn data_key_ids(&self) -> Vec<Uuid> {
        self.keys.iter().map(|k| k.id).collect()
    }

    fn newest(&self) -> &DataKey {
        // `keys` is never empty: every constructor puts one key in it.
        &self.keys[self.keys.len() - 1]
    }

    /// Seals `plaintext` as the value of `record_key`, with the newest data key.
    pub fn seal(&self, record_key: &str, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let record = self.newest().seal_record(record_key, plaintext)?;
        serde_json::to_vec(&record)
            .map_err(|e| StoreError::Corrupt(format!("encoding sealed {record_key}: {e}")))
    }

    /// Opens a value sealed by [`Sealer::seal`] for the same `record_key`,
    /// with the data key it names. Anything else (another key's value,
    /// tampered bytes, a data key not in the registry) is `Corrupt`, never
    /// skipped.
    pub fn open(&self, record_key: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let record: SealedRecord = serde_json::from_slice(sealed).map_err(|e| {
            StoreError::Corrupt(format!("{record_key} is not a sealed record: {e}"))
        })?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == record.data_key_id)
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "{record_key} is sealed with data key {}, which the registry does not hold",
                    record.data_key_id
                ))
            })?;
        key.open_record(record_key, &record)
    }
}

fn parse_registry(record: &[u8]) -> Result<RegistryRecord, StoreError> {
    serde_json::from_slice(record).map_err(|e| {
        StoreError::Corrupt(format!(
            "the data key registry (meta/data_keys) does not parse: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

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
        // The value names the right data key, but its bytes were altered.
        let mut value: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        let mut blob = base64::engine::general_purpose::STANDARD
            .decode(value["sealed"].as_str().unwrap())
            .unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 0x80;
        value["sealed"] = base64::engine::general_purpose::STANDARD
            .encode(&blob)
            .into();
        let err = sealer
            .open("ca/keys", &serde_json::to_vec(&value).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("failed authentication"), "{err}");
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

    #[test]
    fn a_rotated_sealer_seals_with_the_newest_key_and_opens_the_older() {
        let first = Sealer::generate(NOW).unwrap();
        let old_value = first.seal("ca/keys", b"old").unwrap();
        let later = NOW + time::Duration::days(8);
        assert!(first.rotation_due(later, time::Duration::days(7)));
        assert!(!first.rotation_due(NOW + time::Duration::days(6), time::Duration::days(7)));
        let second = first.with_new_key(later).unwrap();
        assert_ne!(second.data_key_id(), first.data_key_id());
        assert_eq!(second.created_at(), later);
        assert_eq!(
            second.data_key_ids(),
            vec![first.data_key_id(), second.data_key_id()]
        );
        let new_value = second.seal("ca/keys", b"new").unwrap();
        let named: serde_json::Value = serde_json::from_slice(&new_value).unwrap();
        assert_eq!(named["data_key_id"], second.data_key_id().to_string());
        assert_eq!(&second.open("ca/keys", &old_value).unwrap()[..], b"old");
        assert_eq!(&second.open("ca/keys", &new_value).unwrap()[..], b"new");
        let err = first.open("ca/keys", &new_value).unwrap_err();
        assert!(err.to_string().contains("registry does not hold"), "{err}");
    }

    #[test]
    fn the_registry_round_trips_every_key_under_its_store_key_only() {
        let key = StoreKey::generate().unwrap();
        let sealer = Sealer::generate(NOW)
            .unwrap()
            .with_new_key(NOW + time::Duration::nanoseconds(1_234_567_891))
            .unwrap();
        let record = sealer.to_registry(&key).unwrap();
        assert_eq!(Sealer::registry_store_key_id(&record).unwrap(), *key.id());
        let back = Sealer::from_registry(&record, &key).unwrap();
        assert_eq!(back.data_key_ids(), sealer.data_key_ids());
        assert_eq!(back.created_at(), sealer.created_at());
        let sealed = sealer.seal("ca/keys", b"x").unwrap();
        assert_eq!(&back.open("ca/keys", &sealed).unwrap()[..], b"x");
        let err = Sealer::from_registry(&record, &StoreKey::generate().unwrap()).unwrap_err();
        assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
        // The same ID with other key bytes: a wrong key file, not corruption.
        let mut forged = key.id().as_bytes().to_vec();
        forged.extend_from_slice(&[5u8; 32]);
        let err =
            Sealer::from_registry(&record, &StoreKey::from_bytes(&forged).unwrap()).unwrap_err();
        assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
    }

    #[test]
    fn every_store_key_size_seals_the_registry() {
        for len in crate::KEY_LENS {
            let mut raw = vec![3u8; crate::KEY_ID_LEN];
            raw.extend(std::iter::repeat_n(4u8, len));
            let key = StoreKey::from_bytes(&raw).unwrap();
            let sealer = Sealer::generate(NOW).unwrap();
            let back = Sealer::from_registry(&sealer.to_registry(&key).unwrap(), &key).unwrap();
            assert_eq!(back.data_key_ids(), sealer.data_key_ids(), "{len}");
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_in_the_sealed_registry_is_refused() {
        let key = StoreKey::generate().unwrap();
        let record = Sealer::generate(NOW).unwrap().to_registry(&key).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&record).unwrap();
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(json["sealed"].as_str().unwrap())
            .unwrap();
        for at in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[at] ^= 0x01;
            let mut tampered = json.clone();
            tampered["sealed"] = base64::engine::general_purpose::STANDARD
                .encode(&bad)
                .into();
            let err =
                Sealer::from_registry(&serde_json::to_vec(&tampered).unwrap(), &key).unwrap_err();
            assert!(
                matches!(&err, StoreError::Corrupt(m) if m.contains("altered or damaged")),
                "byte {at}: {err:?}"
            );
        }
    }
}
