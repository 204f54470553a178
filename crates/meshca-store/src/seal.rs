//! Sealing at rest: AES-256-GCM under a data key, data keys under the store key.
//!
//! The primitives and the data key stay inside this crate ([`crate::Sealer`]
//! is their public face); [`KeyCheck`] is public so that a backend can tell
//! a wrong store key before it opens its database.
//!
//! Two layers, so that changing the store key only re-seals the small data
//! key records, and a data key can rotate without the operator's involvement.
//! Every seal draws a fresh random 96-bit nonce, and its associated data names
//! the record it belongs to, so a sealed blob moved to another record fails
//! to open instead of being read as that record.

use crate::key::{StoreKey, StoreKeyId, KEY_LEN};
use crate::StoreError;
use aws_lc_rs::aead::{
    Aad, Algorithm, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_192_GCM, AES_256_GCM,
    NONCE_LEN,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

/// First byte of every sealed blob: the layout `[format][nonce][ciphertext+tag]`
/// with the algorithm the format names. A future algorithm gets a new number
/// instead of a guess. Data keys are AES-256; a store key may be any of the
/// three sizes, and seals the data key registry with its own.
const FORMAT_AES_256_GCM: u8 = 1;
const FORMAT_AES_128_GCM: u8 = 2;
const FORMAT_AES_192_GCM: u8 = 3;

/// The AES-GCM variant for a key of `len` bytes, and its format byte.
fn algorithm(len: usize) -> Option<(&'static Algorithm, u8)> {
    match len {
        16 => Some((&AES_128_GCM, FORMAT_AES_128_GCM)),
        24 => Some((&AES_192_GCM, FORMAT_AES_192_GCM)),
        32 => Some((&AES_256_GCM, FORMAT_AES_256_GCM)),
        _ => None,
    }
}

/// Why a sealed blob did not open. The caller decides what that means:
/// a wrong store key, or corrupt data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenFailed;

/// Encrypts `plaintext` under `key` (16, 24 or 32 bytes: AES-128/192/256-GCM),
/// binding `aad`, with a fresh random 96-bit nonce.
pub(crate) fn seal(key: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
    let failed = |_| StoreError::Io("AES-GCM sealing failed".into());
    let (alg, format) = algorithm(key.len())
        .ok_or_else(|| StoreError::InvalidKey(format!("{}-byte AES key", key.len())))?;
    let key = LessSafeKey::new(UnboundKey::new(alg, key).map_err(failed)?);
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(failed)?;
    // Room for the tag up front: growing the buffer would leave a freed,
    // unzeroed copy of the plaintext behind.
    let mut in_out = Zeroizing::new(Vec::with_capacity(plaintext.len() + alg.tag_len()));
    in_out.extend_from_slice(plaintext);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut *in_out,
    )
    .map_err(failed)?;
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
    sealed.push(format);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&in_out);
    Ok(sealed)
}

/// Decrypts and authenticates a blob from [`seal`] made with the same `aad`
/// and a key of the same size.
pub(crate) fn open(
    key: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenFailed> {
    let (&format, rest) = sealed.split_first().ok_or(OpenFailed)?;
    let (alg, expected) = algorithm(key.len()).ok_or(OpenFailed)?;
    if format != expected || rest.len() < NONCE_LEN {
        return Err(OpenFailed);
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenFailed)?;
    let key = LessSafeKey::new(UnboundKey::new(alg, key).map_err(|_| OpenFailed)?);
    let mut in_out = Zeroizing::new(ciphertext.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut in_out[..])
        .map_err(|_| OpenFailed)?
        .len();
    in_out.truncate(len);
    Ok(in_out)
}

/// A key that seals records; itself stored sealed under the store key.
///
/// It has an ID (recorded in every blob it seals, so that after a rotation
/// the right key is picked) and a creation time (to decide when to rotate).
#[derive(Clone)]
pub(crate) struct DataKey {
    pub(crate) id: Uuid,
    pub(crate) created_at: OffsetDateTime,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The on-disk form of a [`DataKey`], kept in `meta`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DataKeyRecord {
    pub(crate) id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    /// Hex ID of the store key that sealed this data key.
    pub(crate) store_key_id: String,
    /// Base64 of the sealed key bytes.
    pub(crate) sealed_key: String,
}

impl DataKey {
    /// A fresh random data key created at `now`.
    pub(crate) fn generate(now: OffsetDateTime) -> Result<Self, StoreError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(&mut key[..])
            .map_err(|_| StoreError::Io("the system random generator failed".into()))?;
        Ok(Self {
            id: Uuid::new_v4(),
            created_at: now,
            key,
        })
    }

    /// Seals this key under `store_key` for storage.
    pub(crate) fn seal_with(&self, store_key: &StoreKey) -> Result<DataKeyRecord, StoreError> {
        let sealed = seal(store_key.key_bytes(), &data_key_aad(self.id), &self.key[..])?;
        Ok(DataKeyRecord {
            id: self.id,
            created_at: self.created_at,
            store_key_id: store_key.id().to_hex(),
            sealed_key: B64.encode(sealed),
        })
    }

    /// Unseals a stored record with `store_key`, refusing a key with another
    /// ID before trying to decrypt, so the message can say which key is expected.
    pub(crate) fn unseal(record: &DataKeyRecord, store_key: &StoreKey) -> Result<Self, StoreError> {
        let sealed_by = StoreKeyId::from_hex(&record.store_key_id).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "data key {} names no valid store key ID",
                record.id
            ))
        })?;
        if &sealed_by != store_key.id() {
            return Err(StoreError::WrongKey(format!(
                "the data is sealed with store key {sealed_by}, but the key given is {}; \
                 start with the store key this data directory was created with",
                store_key.id()
            )));
        }
        let sealed = B64
            .decode(&record.sealed_key)
            .map_err(|e| StoreError::Corrupt(format!("data key {}: {e}", record.id)))?;
        let bytes =
            open(store_key.key_bytes(), &data_key_aad(record.id), &sealed).map_err(|_| {
                StoreError::WrongKey(format!(
                    "store key {} has the expected ID but does not unseal data key {}; \
                 the key file is damaged or not the original",
                    store_key.id(),
                    record.id
                ))
            })?;
        Self::from_parts(record, &bytes)
    }

    fn from_parts(record: &DataKeyRecord, bytes: &[u8]) -> Result<Self, StoreError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(StoreError::Corrupt(format!(
                "data key {} has the wrong length",
                record.id
            )));
        }
        key.copy_from_slice(bytes);
        Ok(Self {
            id: record.id,
            created_at: record.created_at,
            key,
        })
    }

    /// Seals a record's bytes, binding the record's name and this key's ID.
    pub(crate) fn seal_record(
        &self,
        name: &str,
        plaintext: &[u8],
    ) -> Result<SealedRecord, StoreError> {
        let sealed = seal(&self.key[..], &record_aad(name, self.id), plaintext)?;
        Ok(SealedRecord {
            data_key_id: self.id,
            sealed: B64.encode(sealed),
        })
    }

    /// Opens a record sealed by [`DataKey::seal_record`] under the same name.
    pub(crate) fn open_record(
        &self,
        name: &str,
        record: &SealedRecord,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        if record.data_key_id != self.id {
            return Err(StoreError::Corrupt(format!(
                "{name} is sealed with unknown data key {}",
                record.data_key_id
            )));
        }
        let sealed = B64
            .decode(&record.sealed)
            .map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))?;
        open(&self.key[..], &record_aad(name, self.id), &sealed)
            .map_err(|_| StoreError::Corrupt(format!("{name} failed authentication")))
    }
}

/// The data key registry as stored (`meta/data_keys`): every data key, all
/// sealed together under the store key as one blob, so that the set (which
/// keys, in which order, created when) cannot be altered piecemeal and
/// changing the store key re-seals one record.
///
/// `check` is a [`KeyCheck`] of the store key, sealed apart from the keys:
/// a key with the right ID but other bytes fails the check (a wrong key
/// file), while a key that passes the check but does not open `sealed`
/// means the registry itself was altered or damaged.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RegistryRecord {
    version: u32,
    check: KeyCheck,
    /// Base64 of the sealed entries (see [`encode_entries`]).
    sealed: String,
}

const REGISTRY_VERSION: u32 = 1;
const REGISTRY_AAD: &[u8] = b"meshca/meta/data_keys";
/// One entry: 16 bytes of ID, 8 bytes of Unix seconds and 4 of nanoseconds
/// (big-endian), then the 32-byte key.
const ENTRY_LEN: usize = 16 + 8 + 4 + KEY_LEN;

impl RegistryRecord {
    /// The registry of `keys` (oldest first), sealed under `store_key`.
    pub(crate) fn seal(keys: &[DataKey], store_key: &StoreKey) -> Result<Self, StoreError> {
        let plain = encode_entries(keys);
        Ok(Self {
            version: REGISTRY_VERSION,
            check: KeyCheck::new(store_key)?,
            sealed: B64.encode(seal(store_key.key_bytes(), REGISTRY_AAD, &plain)?),
        })
    }

    /// The ID of the store key that sealed this registry, read without a key.
    pub(crate) fn store_key_id(&self) -> Result<StoreKeyId, StoreError> {
        self.check.store_key_id()
    }

    /// The data keys, oldest first. A store key other than the one that
    /// sealed the registry is `WrongKey` (naming both IDs); the right key
    /// with a registry that does not open is `Corrupt`.
    pub(crate) fn open(&self, store_key: &StoreKey) -> Result<Vec<DataKey>, StoreError> {
        if self.version != REGISTRY_VERSION {
            return Err(StoreError::Corrupt(format!(
                "the data key registry has unknown version {}",
                self.version
            )));
        }
        self.check.verify(store_key, "the data key registry")?;
        let sealed = B64
            .decode(&self.sealed)
            .map_err(|e| StoreError::Corrupt(format!("the data key registry: {e}")))?;
        let plain = open(store_key.key_bytes(), REGISTRY_AAD, &sealed).map_err(|_| {
            StoreError::Corrupt(
                "the data key registry (meta/data_keys) failed authentication under the right \
                 store key: it was altered or damaged; restore the data directory from a \
                 snapshot or backup"
                    .into(),
            )
        })?;
        decode_entries(&plain)
    }
}

/// The registry's plaintext: fixed-size entries, so that the buffer never
/// grows (a grown buffer would leave an unzeroed copy of keys behind).
fn encode_entries(keys: &[DataKey]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(keys.len() * ENTRY_LEN));
    for key in keys {
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&key.created_at.unix_timestamp().to_be_bytes());
        out.extend_from_slice(&key.created_at.nanosecond().to_be_bytes());
        out.extend_from_slice(&key.key[..]);
    }
    out
}

fn decode_entries(plain: &[u8]) -> Result<Vec<DataKey>, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("the data key registry: {why}"));
    if plain.is_empty() || !plain.len().is_multiple_of(ENTRY_LEN) {
        return Err(corrupt("its length is not a whole number of data keys"));
    }
    let mut keys: Vec<DataKey> = Vec::with_capacity(plain.len() / ENTRY_LEN);
    for entry in plain.chunks_exact(ENTRY_LEN) {
        let (id, rest) = entry.split_at(16);
        let (secs, rest) = rest.split_at(8);
        let (nanos, key_bytes) = rest.split_at(4);
        let id = Uuid::from_slice(id).map_err(|_| corrupt("an invalid ID"))?;
        let secs = i64::from_be_bytes(secs.try_into().map_err(|_| corrupt("a short entry"))?);
        let nanos = u32::from_be_bytes(nanos.try_into().map_err(|_| corrupt("a short entry"))?);
        let created_at = OffsetDateTime::from_unix_timestamp(secs)
            .ok()
            .and_then(|t| t.replace_nanosecond(nanos).ok())
            .ok_or_else(|| corrupt("an invalid creation time"))?;
        if keys.iter().any(|k| k.id == id) {
            return Err(corrupt(&format!("data key {id} appears twice")));
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(key_bytes);
        keys.push(DataKey {
            id,
            created_at,
            key,
        });
    }
    Ok(keys)
}

/// A verifier of a store key, kept by a backend beside its database: the
/// key's public ID and a fixed text sealed under the key. It holds no copy
/// of any key, and lets a backend refuse a wrong key before it opens (and
/// possibly writes) its database. The data key record stays the
/// authoritative check once the database is open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyCheck {
    store_key_id: String,
    sealed: String,
}

const CHECK_AAD: &[u8] = b"meshca/key-check";
const CHECK_TEXT: &[u8] = b"meshca store key check, version 1";

impl KeyCheck {
    /// A verifier of `key`.
    pub fn new(key: &StoreKey) -> Result<Self, StoreError> {
        Ok(Self {
            store_key_id: key.id().to_hex(),
            sealed: B64.encode(seal(key.key_bytes(), CHECK_AAD, CHECK_TEXT)?),
        })
    }

    /// The ID of the key this verifier was made with.
    pub fn store_key_id(&self) -> Result<StoreKeyId, StoreError> {
        StoreKeyId::from_hex(&self.store_key_id)
            .ok_or_else(|| StoreError::Corrupt("invalid store key ID in a key check".into()))
    }

    /// `Ok` if `key` is the key this verifier was made with; `WrongKey`
    /// naming both keys otherwise. `what` names the store in messages.
    pub fn verify(&self, key: &StoreKey, what: &str) -> Result<(), StoreError> {
        let expected = StoreKeyId::from_hex(&self.store_key_id).ok_or_else(|| {
            StoreError::Corrupt(format!("{what}: invalid key ID in the key check"))
        })?;
        if &expected != key.id() {
            return Err(StoreError::WrongKey(format!(
                "{what} is sealed with store key {expected}, but the key given is {}; \
                 start with the store key this data directory was created with",
                key.id()
            )));
        }
        let sealed = B64
            .decode(&self.sealed)
            .map_err(|e| StoreError::Corrupt(format!("{what}: the key check: {e}")))?;
        match open(key.key_bytes(), CHECK_AAD, &sealed) {
            Ok(text) if &text[..] == CHECK_TEXT => Ok(()),
            _ => Err(StoreError::WrongKey(format!(
                "store key {} has the expected ID but does not open the key check of {what}; \
                 the key file is damaged or not the original",
                key.id(),
            ))),
        }
    }
}

/// A record sealed under a data key, as stored.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SealedRecord {
    pub(crate) data_key_id: Uuid,
    /// Base64 of the sealed blob.
    pub(crate) sealed: String,
}

fn data_key_aad(id: Uuid) -> Vec<u8> {
    format!("meshca/meta/data_key/{id}").into_bytes()
}

fn record_aad(name: &str, data_key_id: Uuid) -> Vec<u8> {
    format!("meshca/{name}@{data_key_id}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: OffsetDateTime = time::macros::datetime!(2030-01-01 00:00 UTC);

    #[test]
    fn a_sealed_blob_opens_only_with_its_key_and_aad() {
        let key = [7u8; KEY_LEN];
        let sealed = seal(&key, b"ca/state", b"secret").unwrap();
        assert_eq!(&open(&key, b"ca/state", &sealed).unwrap()[..], b"secret");
        assert_eq!(open(&key, b"ca/other", &sealed), Err(OpenFailed));
        assert_eq!(open(&[8u8; KEY_LEN], b"ca/state", &sealed), Err(OpenFailed));
    }

    #[test]
    fn every_store_key_size_seals_and_opens_only_with_its_own_format() {
        for len in [16usize, 24, 32] {
            let key = vec![9u8; len];
            let sealed = seal(&key, b"a", b"registry").unwrap();
            assert_eq!(&open(&key, b"a", &sealed).unwrap()[..], b"registry");
            for other in [16usize, 24, 32].into_iter().filter(|&o| o != len) {
                assert_eq!(open(&vec![9u8; other], b"a", &sealed), Err(OpenFailed));
            }
        }
        assert!(seal(&[1u8; 20], b"a", b"x").is_err());
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let key = [7u8; KEY_LEN];
        let a = seal(&key, b"x", b"same").unwrap();
        let b = seal(&key, b"x", b"same").unwrap();
        assert_ne!(a[1..1 + NONCE_LEN], b[1..1 + NONCE_LEN]);
    }

    #[test]
    fn tampering_and_truncation_fail_to_open() {
        let key = [7u8; KEY_LEN];
        let mut sealed = seal(&key, b"x", b"payload").unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(open(&key, b"x", &sealed), Err(OpenFailed));
        assert_eq!(open(&key, b"x", &sealed[..5]), Err(OpenFailed));
        assert_eq!(open(&key, b"x", &[]), Err(OpenFailed));
    }

    #[test]
    fn a_data_key_round_trips_through_its_record() {
        let store_key = StoreKey::generate().unwrap();
        let data_key = DataKey::generate(NOW).unwrap();
        let record = data_key.seal_with(&store_key).unwrap();
        let back = DataKey::unseal(&record, &store_key).unwrap();
        assert_eq!((back.id, back.created_at), (data_key.id, NOW));
        let sealed = data_key.seal_record("ca/state", b"hello").unwrap();
        assert_eq!(
            &back.open_record("ca/state", &sealed).unwrap()[..],
            b"hello"
        );
        assert!(back.open_record("ca/other", &sealed).is_err());
    }

    #[test]
    fn another_store_key_is_refused_as_wrong_key() {
        let record = DataKey::generate(NOW)
            .unwrap()
            .seal_with(&StoreKey::generate().unwrap())
            .unwrap();
        let other = StoreKey::generate().unwrap();
        assert!(matches!(
            DataKey::unseal(&record, &other),
            Err(StoreError::WrongKey(_))
        ));
    }

    #[test]
    fn same_id_but_other_key_bytes_is_refused_as_wrong_key() {
        let original = StoreKey::from_bytes(&[1u8; 64]).unwrap();
        let mut forged = [1u8; 64];
        forged[40] = 2;
        let forged = StoreKey::from_bytes(&forged).unwrap();
        let record = DataKey::generate(NOW)
            .unwrap()
            .seal_with(&original)
            .unwrap();
        let err = DataKey::unseal(&record, &forged).unwrap_err();
        assert!(err.to_string().contains("expected ID"), "{err}");
    }

    #[test]
    fn a_key_check_accepts_its_key_only() {
        let key = StoreKey::generate().unwrap();
        let check = KeyCheck::new(&key).unwrap();
        check.verify(&key, "the store").unwrap();
        let err = check
            .verify(&StoreKey::generate().unwrap(), "the store")
            .unwrap_err();
        assert!(matches!(err, StoreError::WrongKey(_)), "{err:?}");
        let mut same_id = key.id().as_bytes().to_vec();
        same_id.extend_from_slice(&[3; 32]);
        let err = check
            .verify(&StoreKey::from_bytes(&same_id).unwrap(), "the store")
            .unwrap_err();
        assert!(err.to_string().contains("expected ID"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_data_key() {
        let shown = format!("{:?}", DataKey::generate(NOW).unwrap());
        assert!(shown.contains("[redacted]"), "{shown}");
    }
}
