//! The high-water mark: a small authenticated file beside the database that
//! remembers the last acknowledged commit, so a store that comes back older
//! (or different) is refused instead of served.
//!
//! A flipped bit in sled's log makes sled recover up to the damage and
//! silently drop the commits after it; a lost or replaced database directory
//! opens as a new, empty store. Either would serve an older CA, or create a
//! new cluster, as if nothing happened. The mark holds the last committed
//! index and a digest of every record, authenticated with HMAC-SHA256 under
//! a key derived from the store key; it is rewritten (atomically, fsynced)
//! after each commit is durable and before the commit is acknowledged.
//!
//! The digest is the sum, modulo 2^256, of an HMAC-SHA256 of each record
//! (its key and value) under a second derived key. A sum can be updated
//! from the records a commit changes, so a commit costs its own size, not
//! the store's; keyed, it cannot be steered by someone who does not hold the
//! store key (an unkeyed sum could, by choosing records).

use aws_lc_rs::hmac;
use meshca_store::{fs, StoreError, StoreKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File name of the mark, in the data directory beside the database
/// directory: removing the database directory leaves the mark behind to
/// say that a CA was there.
pub const MARK_FILE_NAME: &str = "store.mark";

const MARK_PURPOSE: &[u8] = b"meshca/sled/high-water-mark/v1";
const DIGEST_PURPOSE: &[u8] = b"meshca/sled/record-digest/v1";
const MAC_DOMAIN: &[u8] = b"meshca store high-water mark, version 1";

/// A digest of a set of records: the sum of their keyed hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Digest([u64; 4]);

impl Digest {
    fn from_tag(tag: &[u8]) -> Self {
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().zip(tag.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *limb = u64::from_le_bytes(bytes);
        }
        Self(limbs)
    }

    pub(crate) fn add(&mut self, other: &Digest) {
        let mut carry = false;
        for (a, b) in self.0.iter_mut().zip(other.0) {
            let (sum, c1) = a.overflowing_add(b);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            *a = sum;
            carry = c1 || c2;
        }
    }

    pub(crate) fn sub(&mut self, other: &Digest) {
        let mut borrow = false;
        for (a, b) in self.0.iter_mut().zip(other.0) {
            let (diff, b1) = a.overflowing_sub(b);
            let (diff, b2) = diff.overflowing_sub(u64::from(borrow));
            *a = diff;
            borrow = b1 || b2;
        }
    }

    fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, limb) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() == 32).then(|| Self::from_tag(bytes))
    }
}

/// What the mark says: the last acknowledged index and the digest of the
/// records at that index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) index: u64,
    pub(crate) digest: Digest,
}

#[derive(Serialize, Deserialize)]
struct MarkFileV1 {
    version: u32,
    index: u64,
    /// Hex of the digest.
    digest: String,
    /// Hex of the HMAC over the index and the digest.
    mac: String,
}

/// The mark file of one data directory and the keys that authenticate it.
pub(crate) struct MarkFile {
    path: PathBuf,
    mac_key: hmac::Key,
    digest_key: hmac::Key,
}

impl MarkFile {
    pub(crate) fn new(data_dir: &Path, key: &StoreKey) -> Self {
        Self {
            path: data_dir.join(MARK_FILE_NAME),
            mac_key: key.derive_mac_key(MARK_PURPOSE),
            digest_key: key.derive_mac_key(DIGEST_PURPOSE),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The digest term of one record.
    pub(crate) fn term(&self, key: &str, value: &[u8]) -> Digest {
        let mut ctx = hmac::Context::with_key(&self.digest_key);
        ctx.update(&(key.len() as u64).to_be_bytes());
        ctx.update(key.as_bytes());
        ctx.update(value);
        Digest::from_tag(ctx.sign().as_ref())
    }

    fn mac(&self, index: u64, digest: Digest) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.mac_key);
        ctx.update(MAC_DOMAIN);
        ctx.update(&index.to_be_bytes());
        ctx.update(&digest.to_bytes());
        ctx.sign()
    }

    /// The mark, `None` when there is no file. A file that does not parse
    /// or whose MAC does not verify is refused: without it meshca cannot
    /// tell whether the store holds every acknowledged write.
    pub(crate) fn read(&self) -> Result<Option<Mark>, StoreError> {
        let raw = match std::fs::read(&self.path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.unreadable(&e.to_string())),
        };
        let file: MarkFileV1 =
            serde_json::from_slice(&raw).map_err(|e| self.unreadable(&e.to_string()))?;
        if file.version != 1 {
            return Err(self.unreadable(&format!("unknown version {}", file.version)));
        }
        let digest = hex::decode(&file.digest)
            .ok()
            .and_then(|d| Digest::from_bytes(&d))
            .ok_or_else(|| self.unreadable("the digest is not 32 bytes of hex"))?;
        let mac = hex::decode(&file.mac).map_err(|_| self.unreadable("the MAC is not hex"))?;
        let mut ctx = Vec::with_capacity(MAC_DOMAIN.len() + 40);
        ctx.extend_from_slice(MAC_DOMAIN);
        ctx.extend_from_slice(&file.index.to_be_bytes());
        ctx.extend_from_slice(&digest.to_bytes());
        hmac::verify(&self.mac_key, &ctx, &mac).map_err(|_| {
            self.unreadable(
                "its MAC does not verify under this store key (the file was altered or \
                 belongs to another store)",
            )
        })?;
        Ok(Some(Mark {
            index: file.index,
            digest,
        }))
    }

    /// Replaces the mark, atomically and durably (mode 0600).
    pub(crate) fn write(&self, mark: &Mark) -> std::io::Result<()> {
        let file = MarkFileV1 {
            version: 1,
            index: mark.index,
            digest: hex::encode(mark.digest.to_bytes()),
            mac: hex::encode(self.mac(mark.index, mark.digest).as_ref()),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        fs::write_file_atomically(&self.path, &json)
    }

    fn unreadable(&self, why: &str) -> StoreError {
        StoreError::Corrupt(format!(
            "the high-water mark {} is unreadable ({why}), so meshca cannot tell whether the \
             store holds every acknowledged write. Restore the data directory from a snapshot \
             or backup; to accept the store as it is, move the mark file aside (see the \
             meshca-store-sled README)",
            self.path.display()
        ))
    }
}

/// Checks an opened store (at `index`, with `digest`) against `mark`.
///
/// Returns whether the mark must be rewritten: it is missing (a new store,
/// or one from before marks), or one commit behind (a crash came after the
/// commit was durable and before its mark was written).
pub(crate) fn vet(
    mark: Option<&Mark>,
    index: u64,
    digest: Digest,
    mark_path: &Path,
) -> Result<bool, StoreError> {
    let Some(mark) = mark else {
        return Ok(true);
    };
    if index < mark.index {
        return Err(StoreError::RolledBack {
            found: index,
            acknowledged: mark.index,
        });
    }
    if index == mark.index {
        if digest != mark.digest {
            return Err(StoreError::Corrupt(format!(
                "the store's records differ from the last acknowledged write at index {index} \
                 (their digest does not match the high-water mark {}): the database was damaged \
                 or altered. Refusing to serve it: restore the data directory from a snapshot or \
                 backup",
                mark_path.display()
            )));
        }
        return Ok(false);
    }
    if index == mark.index + 1 {
        return Ok(true);
    }
    Err(StoreError::Corrupt(format!(
        "the store is at index {index} but its high-water mark {} says {}: commits were \
         acknowledged that the mark never saw, so the store was replaced or the mark is stale. \
         Restore the data directory from a snapshot or backup; if this store is the one you \
         expect, move the mark file aside to accept it (see the meshca-store-sled README)",
        mark_path.display(),
        mark.index
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark_file(dir: &Path) -> MarkFile {
        MarkFile::new(dir, &StoreKey::from_bytes(&[4u8; 64]).unwrap())
    }

    #[test]
    fn the_digest_sum_is_order_free_and_reversible() {
        let dir = tempfile::tempdir().unwrap();
        let file = mark_file(dir.path());
        let (a, b) = (file.term("ca/a", b"1"), file.term("ca/b", b"2"));
        let mut ab = Digest::default();
        ab.add(&a);
        ab.add(&b);
        let mut ba = Digest::default();
        ba.add(&b);
        ba.add(&a);
        assert_eq!(ab, ba);
        ab.sub(&a);
        assert_eq!(ab, {
            let mut only_b = Digest::default();
            only_b.add(&b);
            only_b
        });
        ab.sub(&b);
        assert_eq!(ab, Digest::default());
        assert_ne!(file.term("ca/a", b"1"), file.term("ca/a", b"2"));
        assert_ne!(file.term("ca/a", b"1"), file.term("ca/b", b"1"));
    }

    #[test]
    fn carries_propagate_across_limbs() {
        let mut d = Digest([u64::MAX, u64::MAX, 0, 0]);
        d.add(&Digest([1, 0, 0, 0]));
        assert_eq!(d, Digest([0, 0, 1, 0]));
        d.sub(&Digest([1, 0, 0, 0]));
        assert_eq!(d, Digest([u64::MAX, u64::MAX, 0, 0]));
    }

    #[test]
    fn a_written_mark_reads_back_and_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = mark_file(dir.path());
        assert_eq!(file.read().unwrap(), None);
        let mark = Mark {
            index: 7,
            digest: file.term("ca/x", b"y"),
        };
        file.write(&mark).unwrap();
        assert_eq!(file.read().unwrap(), Some(mark));
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_altered_mark_or_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = mark_file(dir.path());
        file.write(&Mark {
            index: 7,
            digest: Digest::default(),
        })
        .unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        std::fs::write(file.path(), text.replace("\"index\": 7", "\"index\": 9")).unwrap();
        let err = file.read().unwrap_err();
        assert!(err.to_string().contains("MAC does not verify"), "{err}");

        std::fs::write(file.path(), &text).unwrap();
        let other = MarkFile::new(dir.path(), &StoreKey::generate().unwrap());
        assert!(other.read().is_err());
        std::fs::write(file.path(), b"{").unwrap();
        let err = file.read().unwrap_err();
        assert!(err.to_string().contains("unreadable"), "{err}");
    }

    #[test]
    fn vetting_accepts_equal_or_one_ahead_and_refuses_the_rest() {
        let path = Path::new("/data/store.mark");
        let d = Digest([1, 2, 3, 4]);
        let mark = Mark {
            index: 5,
            digest: d,
        };
        assert_eq!(vet(None, 3, d, path), Ok(true), "no mark: upgrade or new");
        assert_eq!(vet(Some(&mark), 5, d, path), Ok(false));
        assert_eq!(vet(Some(&mark), 6, Digest::default(), path), Ok(true));
        assert_eq!(
            vet(Some(&mark), 4, d, path),
            Err(StoreError::RolledBack {
                found: 4,
                acknowledged: 5
            })
        );
        assert!(matches!(
            vet(Some(&mark), 0, Digest::default(), path),
            Err(StoreError::RolledBack { found: 0, .. })
        ));
        let err = vet(Some(&mark), 5, Digest::default(), path).unwrap_err();
        assert!(
            err.to_string()
                .contains("differ from the last acknowledged write"),
            "{err}"
        );
        let err = vet(Some(&mark), 7, d, path).unwrap_err();
        assert!(err.to_string().contains("index 7"), "{err}");
    }
}
