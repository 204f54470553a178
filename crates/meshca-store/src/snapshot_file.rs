//! The backup file: a [`Snapshot`] as one JSON document with a SHA-256 of
//! its content, so that a truncated or altered file is refused before
//! anything is restored. Sealed records stay sealed: a backup holds no
//! plaintext secret, and restores only where the store key opens its data
//! keys.
//!
//! ```json
//! {"Format": "meshca-snapshot", "Version": 1, "Index": 42,
//!  "Records": [{"Key": "ca/roots", "Value": "<base64>"}, …],
//!  "SHA256": "<hex of the records' canonical encoding>"}
//! ```

use crate::{schema, Snapshot, StoreError};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

const FORMAT: &str = "meshca-snapshot";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct File {
    format: String,
    version: u32,
    index: u64,
    records: Vec<Record>,
    #[serde(rename = "SHA256")]
    sha256: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Record {
    key: String,
    /// Base64 (standard, padded).
    value: String,
}

/// The SHA-256 of the index and every record, each field length-prefixed,
/// so that no two snapshots share an encoding.
fn digest(index: u64, records: &[(String, Vec<u8>)]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&index.to_be_bytes());
    for (key, value) in records {
        for field in [key.as_bytes(), value.as_slice()] {
            ctx.update(&(field.len() as u64).to_be_bytes());
            ctx.update(field);
        }
    }
    hex::encode(ctx.finish().as_ref())
}

/// The backup file of `snapshot`.
pub fn encode(snapshot: &Snapshot) -> Result<Vec<u8>, StoreError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let file = File {
        format: FORMAT.into(),
        version: VERSION,
        index: snapshot.index,
        records: snapshot
            .records
            .iter()
            .map(|(key, value)| Record {
                key: key.clone(),
                value: b64.encode(value),
            })
            .collect(),
        sha256: digest(snapshot.index, &snapshot.records),
    };
    serde_json::to_vec(&file).map_err(|e| StoreError::Corrupt(format!("encoding a snapshot: {e}")))
}

/// Why a backup file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("not a meshca snapshot: {0}")]
    Malformed(String),
    #[error(
        "the snapshot's checksum does not match its content: the file is damaged or was altered"
    )]
    Checksum,
}

/// The snapshot in a backup file, checked: the format, every key, and the
/// checksum.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotFileError> {
    let malformed = |e: String| SnapshotFileError::Malformed(e);
    let file: File = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    if file.format != FORMAT || file.version != VERSION {
        return Err(malformed(format!(
            "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
            file.format, file.version
        )));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut records = Vec::with_capacity(file.records.len());
    for r in file.records {
        schema::validate_key(&r.key).map_err(|e| malformed(e.to_string()))?;
        if r.key == schema::INDEX {
            return Err(malformed(format!("{} is not a record to restore", r.key)));
        }
        let value = b64
            .decode(&r.value)
            .map_err(|e| malformed(format!("{}: {e}", r.key)))?;
        records.push((r.key, value));
    }
    if !records.windows(2).all(|w| w[0].0 < w[1].0) {
        return Err(malformed("the records are not in key order".into()));
    }
    if digest(file.index, &records) != file.sha256 {
        return Err(SnapshotFileError::Checksum);
    }
    Ok(Snapshot {
        index: file.index,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            index: 7,
            records: vec![
                ("acl/token/a".into(), b"{}".to_vec()),
                ("ca/keys".into(), vec![0, 1, 2, 255]),
                ("meta/schema_version".into(), 3u64.to_be_bytes().to_vec()),
            ],
        }
    }

    #[test]
    fn a_snapshot_round_trips() {
        let s = sample();
        assert_eq!(decode(&encode(&s).unwrap()).unwrap(), s);
    }

    #[test]
    fn altered_truncated_and_foreign_files_are_refused() {
        let bytes = encode(&sample()).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let altered = text.replace("\"Index\":7", "\"Index\":8");
        assert_eq!(decode(altered.as_bytes()), Err(SnapshotFileError::Checksum));
        let value = base64::engine::general_purpose::STANDARD.encode([0u8, 1, 2, 255]);
        let other = base64::engine::general_purpose::STANDARD.encode([0u8, 1, 2, 254]);
        let altered = text.replace(&value, &other);
        assert_eq!(decode(altered.as_bytes()), Err(SnapshotFileError::Checksum));
        assert!(matches!(
            decode(&bytes[..bytes.len() / 2]),
            Err(SnapshotFileError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"{\"Format\":\"x\"}"),
            Err(SnapshotFileError::Malformed(_))
        ));
        let index_record = text.replace("acl/token/a", "meta/index");
        assert!(matches!(
            decode(index_record.as_bytes()),
            Err(SnapshotFileError::Malformed(_))
        ));
    }
}
