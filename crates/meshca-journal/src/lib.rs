//! The issuance journal: one JSON line per issued certificate — serial,
//! SPIFFE ID, validity, who asked — appended to numbered segment files
//! (`issued-000001.jsonl`, …) in the server's data dir. What revocation and
//! audit need, kept by each server for the leaves it issued.
//!
//! **Durable before acknowledged.** [`Journal::append`] returns once the
//! line is on disk (`fdatasync`). One writer thread takes every line queued
//! while the previous sync ran and syncs them together (group commit), so
//! the number of syncs per second bounds batches, not certificates.
//!
//! **Never read at start.** Opening looks at the end of the newest segment
//! only, to drop a line a crash tore (it was never acknowledged); the size
//! of the journal does not slow start-up or anything else the CA does.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use time::OffsetDateTime;
use tokio::sync::oneshot;

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Entry {
    /// Colon-hex, as `SerialNumber` in the API.
    pub serial: String,
    #[serde(rename = "SPIFFEID")]
    pub spiffe_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub valid_after: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub valid_before: OffsetDateTime,
    /// `SigningKeyID` of the certificate that signed it.
    pub signing_key_id: String,
    /// `csr`, `agent_leaf` or `server_tls`.
    pub kind: String,
    /// `accessor:<AccessorID>`, `anonymous`, …: never a secret.
    pub requester: String,
    pub remote: Option<String>,
    pub request_id: Option<String>,
}

/// Why an entry could not be made durable. Cloneable: one failed sync
/// fails every entry of its batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the issuance journal: {0}")]
pub struct JournalError(String);

impl JournalError {
    fn io(what: &str, path: &Path, e: std::io::Error) -> Self {
        Self(format!("{what} {}: {e}", path.display()))
    }
}

/// Segments roll over at this size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Most entries one sync makes durable; more wait for the next one.
const MAX_BATCH: usize = 4096;

/// How far from the end of the newest segment a torn line is looked for:
/// far more than one entry.
const TAIL: u64 = 64 * 1024;

const PREFIX: &str = "issued-";
const SUFFIX: &str = ".jsonl";

struct Pending {
    line: Vec<u8>,
    done: oneshot::Sender<Result<(), JournalError>>,
}

/// The journal of one data dir. Appends from any task; one writer thread.
pub struct Journal {
    queue: mpsc::Sender<Pending>,
}

impl Journal {
    /// Opens (creating) the journal in `dir`, repairs a torn last line,
    /// and starts the writer thread.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Self, JournalError> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| JournalError::io("creating", dir, e))?;
        let segment = Segment::open_newest(dir, segment_bytes)?;
        let (queue, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("meshca-journal".into())
            .spawn(move || write_batches(segment, &rx))
            .map_err(|e| JournalError::io("starting the writer of", dir, e))?;
        Ok(Self { queue })
    }

    /// Appends `entry` and returns once it is durable, or why it is not.
    pub async fn append(&self, entry: &Entry) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(entry)
            .map_err(|e| JournalError(format!("encoding an entry: {e}")))?;
        line.push(b'\n');
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Pending { line, done })
            .map_err(|_| JournalError("the writer has stopped".into()))?;
        wait.await
            .map_err(|_| JournalError("the writer has stopped".into()))?
    }
}

/// The segment files of `dir`, oldest first.
pub fn segments(dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let mut numbered = Vec::new();
    let listing = std::fs::read_dir(dir).map_err(|e| JournalError::io("reading", dir, e))?;
    for item in listing {
        let path = item
            .map_err(|e| JournalError::io("reading", dir, e))?
            .path();
        if let Some(n) = segment_number(&path) {
            numbered.push((n, path));
        }
    }
    numbered.sort();
    Ok(numbered.into_iter().map(|(_, p)| p).collect())
}

/// Every entry of one segment file, in order (for tools and tests: the
/// server never reads the journal).
pub fn read_segment(path: &Path) -> Result<Vec<Entry>, JournalError> {
    let text = std::fs::read_to_string(path).map_err(|e| JournalError::io("reading", path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| JournalError(format!("{} line {}: {e}", path.display(), i + 1)))
        })
        .collect()
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{n:06}{SUFFIX}"))
}

/// The segment being appended to.
struct Segment {
    dir: PathBuf,
    number: u64,
    file: File,
    len: u64,
    max_len: u64,
    /// Set when a failed write could not be undone: the file's end is
    /// unknown, so nothing more is appended until a restart repairs it.
    broken: Option<JournalError>,
}

impl Segment {
    fn open_newest(dir: &Path, max_len: u64) -> Result<Self, JournalError> {
        let number = segments(dir)?
            .last()
            .and_then(|p| segment_number(p))
            .unwrap_or(1);
        let mut segment = Self::open(dir, number, max_len)?;
        segment.drop_torn_tail()?;
        Ok(segment)
    }

    fn open(dir: &Path, number: u64, max_len: u64) -> Result<Self, JournalError> {
        let path = segment_path(dir, number);
        let created = !path.exists();
        let file = open_append(&path)?;
        if created {
            // The new name must survive a crash too.
            sync_dir(dir)?;
        }
        let len = file
            .metadata()
            .map_err(|e| JournalError::io("reading", &path, e))?
            .len();
        Ok(Self {
            dir: dir.to_path_buf(),
            number,
            file,
            len,
            max_len,
            broken: None,
        })
    }

    fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.number)
    }

    /// Cuts the segment after its last complete line: a crash can tear the
    /// line being written, and that line was never acknowledged.
    fn drop_torn_tail(&mut self) -> Result<(), JournalError> {
        let path = self.path();
        let start = self.len.saturating_sub(TAIL);
        let mut tail = Vec::new();
        let mut reader = File::open(&path).map_err(|e| JournalError::io("opening", &path, e))?;
        reader
            .seek(SeekFrom::Start(start))
            .and_then(|_| reader.read_to_end(&mut tail))
            .map_err(|e| JournalError::io("reading", &path, e))?;
        let keep = match tail.iter().rposition(|b| *b == b'\n') {
            Some(i) => start + i as u64 + 1,
            None if start == 0 => 0,
            None => {
                return Err(JournalError(format!(
                    "{}: no line ends in its last {TAIL} bytes",
                    path.display()
                )))
            }
        };
        if keep < self.len {
            tracing::warn!(path = %path.display(), bytes = self.len - keep,
                "issuance journal: dropping a torn last line (written during a crash, never acknowledged)");
            self.truncate(keep)?;
        }
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<(), JournalError> {
        let path = self.path();
        self.file
            .set_len(len)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| JournalError::io("truncating", &path, e))?;
        self.len = len;
        Ok(())
    }

    /// Writes `batch` and syncs it; on failure the segment is cut back to
    /// where it was, so that no partial line stays between good ones.
    fn append(&mut self, batch: &[Pending]) -> Result<(), JournalError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let mut bytes = Vec::with_capacity(batch.iter().map(|p| p.line.len()).sum());
        for pending in batch {
            bytes.extend_from_slice(&pending.line);
        }
        let path = self.path();
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| JournalError::io("writing", &path, e));
        if let Err(e) = written {
            if let Err(undo) = self.truncate(self.len) {
                self.broken = Some(undo);
            }
            return Err(e);
        }
        self.len += bytes.len() as u64;
        if self.len >= self.max_len {
            *self = Self::open(&self.dir, self.number + 1, self.max_len)?;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, JournalError> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map_err(|e| JournalError::io("opening", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io("syncing", dir, e))
}

/// The writer thread: every line queued while the last sync ran goes into
/// the next one. Ends when the journal is dropped.
fn write_batches(mut segment: Segment, queue: &mpsc::Receiver<Pending>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let result = segment.append(&batch);
        if let Err(e) = &result {
            tracing::error!(error = %e, entries = batch.len(), "issuance journal write failed");
        }
        for pending in batch {
            let _ = pending.done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests;
