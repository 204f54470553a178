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
//! **Alone, on the caller's thread.** An entry with no other entry being
//! signed or queued, while a runtime worker is idle, is written and synced
//! by the task appending it ([`Journal::append_expected`]), not handed to
//! the writer: the writer's wake-up and the answer's wake-up back cost two
//! context switches each, more CPU than the sync itself on a virtual
//! machine. At one connection that took /sign from 7.7-8.0 context
//! switches to 4.6 and 11-21% less CPU.
//!
//! **Waiting for siblings.** On a fast disk a sync ends before the next
//! certificate is signed, so batches stay at one entry and every
//! certificate pays a whole sync in CPU (over 100 µs of kernel time on a
//! virtual disk). An issuance therefore announces itself before its
//! signing work ([`Journal::expect`]); when the writer has a batch and other
//! announced entries are still coming, it waits up to [`LINGER`] for them,
//! as PostgreSQL's `commit_delay` does when `commit_siblings` are active.
//! In the server it also waits while every runtime worker is busy
//! ([`IdleWorkers`]): their queued requests are about to sign too. A
//! lone request is never delayed, and neither is one appended with
//! [`Linger::Never`]: its batch is synced with what is queued, without
//! waiting for entries still being signed (a client with one request
//! beside a flood must not wait for the flood's signings).
//!
//! **Written ahead.** A segment grows in steps of 256 KiB of
//! blank fill, which the lines then overwrite: a sync of bytes already in
//! the file writes no metadata, and costs about two thirds of one that
//! grows it. Lines never begin with a space, so the first line that does
//! ends the segment.
//!
//! **Never read at start.** Opening looks at the end of the newest segment
//! only, to cut what follows its last complete line: the fill, and what a
//! crash left of a batch (never acknowledged). The size of the journal does
//! not slow start-up or anything else the CA does.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};
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

/// A batch stops growing once it holds this many bytes.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// The longest line the journal takes (a real entry is under 4 KiB: the
/// SPIFFE ID is bounded and every other field is short). Bounding lines
/// bounds a batch, and so how far from a segment's end a crash can leave
/// bytes that were never synced.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// A segment grows by this many bytes of [`FILL`] at a time, written ahead
/// of the lines that will overwrite them. Overwriting bytes already in the
/// file changes no metadata, so a sync writes the data alone: with 6
/// entries a sync on this virtual disk took 155-180 µs and 76-82 µs of
/// CPU, against 220-330 µs and 103-129 µs when it also grew the file
/// (`scripts/bench/sync_cost.py`, docs/BENCHMARKS.md).
const PREALLOCATE: u64 = 256 * 1024;

/// What is written ahead of the lines: JSON whitespace, so the segment
/// being written still reads as JSON Lines (jq, grep) with a blank end.
const FILL: u8 = b' ';

/// How much of the newest segment's end opening reads: its fill, the last
/// batch (perhaps torn) and a complete line before it.
const TAIL: u64 = PREALLOCATE + (MAX_BATCH_BYTES + 2 * MAX_LINE_BYTES) as u64;

/// How long the writer waits for announced entries before syncing the
/// ones it has. At 16 connections 1 ms halved the syncs per certificate
/// (0.86 → 0.50) and cut /sign CPU by about 5% (docs/BENCHMARKS.md).
pub const LINGER: Duration = Duration::from_millis(1);

/// Whether the batch an entry joins may wait for announced entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    /// Up to [`LINGER`], to share a sync with them (group commit).
    ForSiblings,
    /// Not at all: the batch is synced with whatever is queued.
    Never,
}

/// How many of the threads that produce entries (the server's runtime
/// workers) have run out of work, as the runtime reports them through
/// [`IdleWorkers::parked`] and [`IdleWorkers::unparked`].
///
/// A batch waits for announced entries only while some worker is busy:
/// once no entry is being signed and a worker is idle, nothing else is
/// coming soon. Without this, one core signing requests one after another
/// ended the wait after every signing (no entry announced for a moment),
/// and each certificate paid a sync of its own. A journal opened without
/// it ([`Journal::open`]) counts its producers as idle: it waits only for
/// the entries announced.
pub struct IdleWorkers {
    idle: AtomicUsize,
    reported: bool,
    journal: OnceLock<std::sync::Weak<Announced>>,
}

impl Default for IdleWorkers {
    /// Not reported: every producer counts as idle.
    fn default() -> Self {
        Self::new(false)
    }
}

impl IdleWorkers {
    /// Counted by the runtime's hooks; no worker is idle at first.
    pub fn reported() -> Arc<Self> {
        Arc::new(Self::new(true))
    }

    fn new(reported: bool) -> Self {
        Self {
            idle: AtomicUsize::new(0),
            reported,
            journal: OnceLock::new(),
        }
    }

    /// A worker is about to sleep: if the journal's writer waits for
    /// entries and none is being signed, it waits no longer.
    pub fn parked(&self) {
        // SeqCst here and in the writer's wait: either the writer sees this
        // worker idle before it sleeps, or this sees the writer waiting.
        self.idle.fetch_add(1, Ordering::SeqCst);
        if let Some(announced) = self.journal.get().and_then(std::sync::Weak::upgrade) {
            if announced.lingering.load(Ordering::SeqCst) && announced.none() {
                announced.wake_writer();
            }
        }
    }

    /// A worker woke up.
    pub fn unparked(&self) {
        self.idle.fetch_sub(1, Ordering::SeqCst);
    }

    fn any(&self) -> bool {
        !self.reported || self.idle.load(Ordering::SeqCst) > 0
    }
}

const PREFIX: &str = "issued-";
const SUFFIX: &str = ".jsonl";

struct Pending {
    line: Vec<u8>,
    linger: Linger,
    done: oneshot::Sender<Result<(), JournalError>>,
}

/// Entries announced by [`Journal::expect`] and not yet queued, and the
/// writer thread to wake when the last of them settles.
///
/// The writer parks while it lingers and only the last announced entry
/// wakes it, not every entry: at 16 connections a wake-up per entry cost a
/// context switch per certificate, and the woken writer preempted a worker.
#[derive(Default)]
struct Announced {
    count: AtomicUsize,
    writer: OnceLock<Thread>,
    /// Whether the writer is waiting for siblings (so that a worker going
    /// idle wakes it only then).
    lingering: AtomicBool,
    idle: Arc<IdleWorkers>,
}

impl Announced {
    /// Announcements for a journal whose producers report to `idle`, which
    /// learns of them in turn (to wake the writer when a worker goes idle).
    fn beside(idle: &Arc<IdleWorkers>) -> Arc<Self> {
        let announced = Arc::new(Self {
            idle: idle.clone(),
            ..Self::default()
        });
        let _ = idle.journal.set(Arc::downgrade(&announced));
        announced
    }

    fn add(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// One announced entry was queued or withdrawn; if it was the last one
    /// and a worker has run out of work, the lingering writer stops waiting.
    /// A writer that is not lingering is not woken: it waits for its queue
    /// by parking too, and would wake for nothing.
    fn settle(&self) {
        // SeqCst, as the writer's `lingering` then `quiet()`: either it sees
        // the count fall, or this sees it lingering.
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1
            && self.lingering.load(Ordering::SeqCst)
            && self.idle.any()
        {
            self.wake_writer();
        }
    }

    fn none(&self) -> bool {
        self.count.load(Ordering::SeqCst) == 0
    }

    /// Nothing more is coming soon: no announced entry is being signed,
    /// and a worker has run out of work (so none is about to start one).
    fn quiet(&self) -> bool {
        self.none() && self.idle.any()
    }

    /// [`Announced::quiet`] but for one entry still announced: the
    /// caller's own, about to be appended.
    fn quiet_but_for_one(&self) -> bool {
        self.count.load(Ordering::SeqCst) <= 1 && self.idle.any()
    }

    /// Ends a lingering writer's wait: the last announced entry settled,
    /// or an entry that must not wait was queued.
    fn wake_writer(&self) {
        if let Some(writer) = self.writer.get() {
            writer.unpark();
        }
    }
}

/// The journal of one data dir. Appends from any task; one writer thread.
pub struct Journal {
    queue: mpsc::Sender<Pending>,
    announced: Arc<Announced>,
    shared: Arc<Shared>,
}

/// What the writer thread and an append alone in the journal share.
struct Shared {
    segment: Mutex<Segment>,
    /// Entries queued for the writer and not yet synced.
    queued: AtomicUsize,
}

/// An entry on its way: while it lives, the writer knows one more entry is
/// coming and may wait a little for it. It is dropped once the entry is
/// queued, or early when the issuance failed (withdrawing the announcement).
pub struct Expected {
    announced: Arc<Announced>,
}

impl Drop for Expected {
    /// Called once the entry is queued (so the writer takes it into the
    /// batch it is gathering), or when the issuance failed.
    fn drop(&mut self) {
        self.announced.settle();
    }
}

impl Journal {
    /// Opens (creating) the journal in `dir`, repairs a torn last line,
    /// and starts the writer thread.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Self, JournalError> {
        Self::open_with(dir, segment_bytes, Arc::default())
    }

    /// [`Journal::open`], with batches that wait for announced entries
    /// while a worker counted by `idle` is busy.
    pub fn open_with(
        dir: &Path,
        segment_bytes: u64,
        idle: Arc<IdleWorkers>,
    ) -> Result<Self, JournalError> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| JournalError::io("creating", dir, e))?;
        let segment = Segment::open_newest(dir, segment_bytes)?;
        let (journal, writer) = Self::with_writer(segment, &idle, LINGER);
        let thread = std::thread::Builder::new()
            .name("meshca-journal".into())
            .spawn(move || writer.run())
            .map_err(|e| JournalError::io("starting the writer of", dir, e))?;
        let _ = journal.announced.writer.set(thread.thread().clone());
        Ok(journal)
    }

    /// A journal appending to `segment` and the writer that serves it, not
    /// running yet; the writer's thread is still to be named to
    /// `announced`.
    fn with_writer(segment: Segment, idle: &Arc<IdleWorkers>, linger: Duration) -> (Self, Writer) {
        let shared = Arc::new(Shared {
            segment: Mutex::new(segment),
            queued: AtomicUsize::new(0),
        });
        let (queue, rx) = mpsc::channel();
        let announced = Announced::beside(idle);
        let writer = Writer {
            queue: rx,
            announced: announced.clone(),
            linger,
            shared: shared.clone(),
        };
        let journal = Self {
            queue,
            announced,
            shared,
        };
        (journal, writer)
    }

    /// Announces an entry that [`Journal::append_expected`] will bring
    /// shortly (call it before the work that produces the entry).
    pub fn expect(&self) -> Expected {
        self.announced.add();
        Expected {
            announced: self.announced.clone(),
        }
    }

    /// Appends `entry` and returns once it is durable, or why it is not.
    pub async fn append(&self, entry: &Entry) -> Result<(), JournalError> {
        self.append_expected(entry, self.expect(), Linger::ForSiblings)
            .await
    }

    /// [`Journal::append`] of the entry `expected` announced, in a batch
    /// that may `linger` or not.
    pub async fn append_expected(
        &self,
        entry: &Entry,
        expected: Expected,
        linger: Linger,
    ) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(entry)
            .map_err(|e| JournalError(format!("encoding an entry: {e}")))?;
        line.push(b'\n');
        if line.len() > MAX_LINE_BYTES {
            return Err(JournalError(format!(
                "an entry of {} bytes is over the limit of {MAX_LINE_BYTES}",
                line.len()
            )));
        }
        if let Some(written) = self.write_alone(&line) {
            return written;
        }
        let (done, wait) = oneshot::channel();
        self.queue(Pending { line, linger, done }, expected)?;
        wait.await
            .map_err(|_| JournalError("the writer has stopped".into()))?
    }

    /// Writes and syncs `line` on the calling thread when its entry is
    /// alone: no other entry announced (being signed) or queued, a runtime
    /// worker idle (so no request is about to sign either: the writer
    /// would not wait for siblings) and the segment free. Handing it to the
    /// writer thread costs a wake-up there and one back, each a context
    /// switch that costs more CPU than the sync itself on a virtual
    /// machine. The caller blocks for the sync, a fraction of a
    /// millisecond its answer waits for anyway; another worker is idle for
    /// whatever else comes. `None` when the entry is not alone.
    fn write_alone(&self, line: &[u8]) -> Option<Result<(), JournalError>> {
        let alone =
            self.shared.queued.load(Ordering::SeqCst) == 0 && self.announced.quiet_but_for_one();
        if !alone {
            return None;
        }
        let mut segment = self.shared.segment.try_lock().ok()?;
        Some(segment.append_logged(&[line]))
    }

    /// Hands `pending`, the entry `expected` announced, to the writer.
    fn queue(&self, pending: Pending, expected: Expected) -> Result<(), JournalError> {
        let linger = pending.linger;
        // Counted before it is sent: the writer must never see an entry
        // that is not counted yet.
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        if self.queue.send(pending).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(JournalError("the writer has stopped".into()));
        }
        drop(expected);
        if linger == Linger::Never {
            self.announced.wake_writer();
        }
        Ok(())
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
/// server never reads the journal). The blank fill after the lines is
/// skipped; anything else after them is an error.
pub fn read_segment(path: &Path) -> Result<Vec<Entry>, JournalError> {
    let bytes = std::fs::read(path).map_err(|e| JournalError::io("reading", path, e))?;
    let end = lines_end(&bytes);
    if let Some(at) = bytes[end..].iter().position(|b| *b != FILL) {
        return Err(JournalError(format!(
            "{}: an incomplete or foreign line at byte {}",
            path.display(),
            end + at
        )));
    }
    bytes[..end]
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_slice(line)
                .map_err(|e| JournalError(format!("{} line {}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// Where the complete lines at the start of `bytes` end: before the first
/// line that does not begin like an entry (the fill, or what a crash left
/// of a batch) or has no end, or that holds a zero byte (a block the file
/// system never wrote). `bytes` begins at a line's start.
fn lines_end(bytes: &[u8]) -> usize {
    let mut end = 0;
    while bytes.get(end) == Some(&b'{') {
        match bytes[end..].iter().position(|b| *b == b'\n' || *b == 0) {
            Some(i) if bytes[end + i] == b'\n' => end += i + 1,
            _ => break,
        }
    }
    end
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

/// The segment being appended to: its lines, then fill up to the file's
/// length, which the next lines overwrite.
struct Segment {
    dir: PathBuf,
    number: u64,
    file: File,
    /// Where the lines end and the next batch goes.
    len: u64,
    /// The file's length: `len` and the fill after it.
    allocated: u64,
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
        segment.drop_unsynced_tail()?;
        Ok(segment)
    }

    fn open(dir: &Path, number: u64, max_len: u64) -> Result<Self, JournalError> {
        let path = segment_path(dir, number);
        let created = !path.exists();
        let file = open_rw(&path)?;
        if created {
            // The new name must survive a crash too.
            sync_dir(dir)?;
        }
        let allocated = file
            .metadata()
            .map_err(|e| JournalError::io("reading", &path, e))?
            .len();
        Ok(Self {
            dir: dir.to_path_buf(),
            number,
            file,
            len: allocated,
            allocated,
            max_len,
            broken: None,
        })
    }

    fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.number)
    }

    /// Cuts the segment after its last complete line before the fill. A
    /// crash while a batch was written can leave any part of it on disk:
    /// a torn line, or a later page of the batch after fill where an
    /// earlier page was lost. None of it was acknowledged. Only the last
    /// [`TAIL`] bytes are read: the fill and one batch fit in them.
    fn drop_unsynced_tail(&mut self) -> Result<(), JournalError> {
        let path = self.path();
        let start = self.allocated.saturating_sub(TAIL);
        let mut tail = Vec::new();
        self.file
            .seek(SeekFrom::Start(start))
            .and_then(|_| self.file.read_to_end(&mut tail))
            .map_err(|e| JournalError::io("reading", &path, e))?;
        // The window may begin inside a line: the lines start after it.
        let first_line = if start == 0 {
            0
        } else {
            match tail.iter().position(|b| *b == b'\n') {
                Some(i) => i + 1,
                None => {
                    return Err(JournalError(format!(
                        "{}: no line ends in its last {TAIL} bytes",
                        path.display()
                    )))
                }
            }
        };
        let keep = start + (first_line + lines_end(&tail[first_line..])) as u64;
        let dropped = &tail[(keep - start) as usize..];
        if dropped.iter().any(|b| *b != FILL) {
            tracing::warn!(path = %path.display(), bytes = dropped.len(),
                "issuance journal: dropping what a crash left after the last synced line (never acknowledged)");
        }
        if keep < self.allocated {
            self.truncate(keep)?;
        }
        Ok(())
    }

    /// Cuts the file at `len` (dropping the fill too) and syncs.
    fn truncate(&mut self, len: u64) -> Result<(), JournalError> {
        let path = self.path();
        self.file
            .set_len(len)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| JournalError::io("truncating", &path, e))?;
        self.len = len;
        self.allocated = len;
        Ok(())
    }

    /// [`Segment::append`], logging a failure (once per batch).
    fn append_logged(&mut self, batch: &[&[u8]]) -> Result<(), JournalError> {
        let result = self.append(batch);
        if let Err(e) = &result {
            tracing::error!(error = %e, entries = batch.len(), "issuance journal write failed");
        }
        result
    }

    /// Writes `batch` and syncs it; on failure the segment is cut back to
    /// where it was, so that no partial line stays between good ones.
    fn append(&mut self, batch: &[&[u8]]) -> Result<(), JournalError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let lines: usize = batch.iter().map(|line| line.len()).sum();
        let end = self.len + lines as u64;
        // When the lines pass the fill, more fill goes after them in the
        // same write, so that the next syncs overwrite only.
        let grows = end > self.allocated;
        let grow_to = if grows {
            end + PREALLOCATE
        } else {
            self.allocated
        };
        let mut bytes = Vec::with_capacity(lines);
        for line in batch {
            bytes.extend_from_slice(line);
        }
        if grows {
            bytes.resize((grow_to - self.len) as usize, FILL);
        }
        let path = self.path();
        let written = self
            .file
            .write_all_at(&bytes, self.len)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| JournalError::io("writing", &path, e));
        if let Err(e) = written {
            if let Err(undo) = self.truncate(self.len) {
                self.broken = Some(undo);
            }
            return Err(e);
        }
        self.len = end;
        self.allocated = grow_to;
        if self.len >= self.max_len {
            // A full segment keeps no fill: it is only ever read. Its lines
            // are synced, so a failure here costs the tidiness alone
            // (readers skip the fill).
            if let Err(e) = self.truncate(self.len) {
                tracing::warn!(error = %e, "issuance journal: a full segment keeps its fill");
            }
            *self = Self::open(&self.dir, self.number + 1, self.max_len)?;
        }
        Ok(())
    }
}

/// The segment, whether or not a panic left its lock poisoned: the file
/// state is kept consistent by `Segment::append` itself.
fn lock(segment: &Mutex<Segment>) -> MutexGuard<'_, Segment> {
    segment
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open_rw(path: &Path) -> Result<File, JournalError> {
    let mut options = OpenOptions::new();
    options.create(true).read(true).write(true);
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

/// The writer thread's side of the journal.
struct Writer {
    queue: mpsc::Receiver<Pending>,
    announced: Arc<Announced>,
    linger: Duration,
    shared: Arc<Shared>,
}

impl Writer {
    /// Syncs batches until the journal is dropped.
    fn run(self) {
        while let Ok(first) = self.queue.recv() {
            let batch = self.gather(first);
            let lines: Vec<&[u8]> = batch.iter().map(|p| p.line.as_slice()).collect();
            let result = lock(&self.shared.segment).append_logged(&lines);
            self.shared.queued.fetch_sub(batch.len(), Ordering::SeqCst);
            for pending in batch {
                let _ = pending.done.send(result.clone());
            }
        }
    }

    /// `first` and every line queued after it, waiting up to `linger` for
    /// entries announced and not yet queued, unless one of them may not
    /// wait ([`Linger::Never`]).
    fn gather(&self, first: Pending) -> Vec<Pending> {
        let deadline = Instant::now() + self.linger;
        let mut bytes = first.line.len();
        let mut may_wait = first.linger == Linger::ForSiblings;
        let mut batch = vec![first];
        let full = |count, bytes| count >= MAX_BATCH || bytes >= MAX_BATCH_BYTES;
        loop {
            while !full(batch.len(), bytes) {
                let Ok(next) = self.queue.try_recv() else {
                    break;
                };
                bytes += next.line.len();
                may_wait &= next.linger == Linger::ForSiblings;
                batch.push(next);
            }
            if full(batch.len(), bytes) || self.announced.quiet() || !may_wait {
                return batch;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return batch;
            }
            // Woken early by the last announced entry (`Announced::settle`)
            // or a worker going idle (`IdleWorkers::parked`); a spurious
            // wake-up just goes round again.
            self.announced.lingering.store(true, Ordering::SeqCst);
            if !self.announced.quiet() {
                std::thread::park_timeout(left);
            }
            self.announced.lingering.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests;
