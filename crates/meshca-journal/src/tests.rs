use super::*;
use std::sync::Arc;
use time::macros::datetime;

fn entry(n: usize) -> Entry {
    Entry {
        serial: format!("{n:02x}:01"),
        spiffe_id: format!("spiffe://td.consul/ns/default/dc/dc1/svc/s{n}"),
        valid_after: datetime!(2030-01-01 00:00 UTC),
        valid_before: datetime!(2030-01-04 00:00 UTC),
        signing_key_id: "aa:bb".into(),
        kind: "csr".into(),
        requester: "accessor:x".into(),
        remote: Some("127.0.0.1:5000".into()),
        request_id: None,
    }
}

fn all_entries(dir: &Path) -> Vec<Entry> {
    segments(dir)
        .unwrap()
        .iter()
        .flat_map(|p| read_segment(p).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_all_durable_once_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap());
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let j = journal.clone();
            tokio::spawn(async move { j.append(&entry(n)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut got = all_entries(dir.path());
    got.sort_by_key(|e| e.spiffe_id.clone());
    let mut want: Vec<Entry> = (0..200).map(entry).collect();
    want.sort_by_key(|e| e.spiffe_id.clone());
    assert_eq!(got, want);
}

#[tokio::test]
async fn segments_roll_over_and_reopening_appends_to_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let line_len = serde_json::to_vec(&entry(0)).unwrap().len() as u64 + 1;
    {
        let journal = Journal::open(dir.path(), 3 * line_len).unwrap();
        for n in 0..7 {
            journal.append(&entry(n)).await.unwrap();
        }
    }
    let journal = Journal::open(dir.path(), 3 * line_len).unwrap();
    journal.append(&entry(7)).await.unwrap();
    drop(journal);
    let files = segments(dir.path()).unwrap();
    assert_eq!(files.len(), 3, "{files:?}");
    assert_eq!(read_segment(&files[0]).unwrap().len(), 3);
    assert_eq!(
        all_entries(dir.path()),
        (0..8).map(entry).collect::<Vec<_>>()
    );
}

fn line_len() -> u64 {
    serde_json::to_vec(&entry(0)).unwrap().len() as u64 + 1
}

/// A closed journal holding `entry(1)`.
async fn journal_of_one_entry() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    reopen_and_append(dir.path(), 1).await;
    dir
}

/// Opens the journal in `dir` (again: a restart), appends `entry(n)` and
/// closes it.
async fn reopen_and_append(dir: &Path, n: usize) {
    let journal = Journal::open(dir, DEFAULT_SEGMENT_BYTES).unwrap();
    journal.append(&entry(n)).await.unwrap();
}

/// Writes `bytes` at `offset` of segment 1, as a crash could have left.
fn scribble(dir: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .open(segment_path(dir, 1))
        .unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

#[tokio::test]
async fn a_torn_last_line_is_dropped_on_open_and_the_rest_kept() {
    let dir = journal_of_one_entry().await;
    scribble(dir.path(), line_len(), br#"{"Serial":"02:01","SPIFF"#);
    reopen_and_append(dir.path(), 2).await;
    assert_eq!(all_entries(dir.path()), vec![entry(1), entry(2)]);
}

#[tokio::test]
async fn lines_overwrite_fill_written_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    for n in 0..3 {
        journal.append(&entry(n)).await.unwrap();
    }
    let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
    assert!(
        bytes.len() as u64 >= line_len() + PREALLOCATE,
        "no fill ahead: {} bytes",
        bytes.len()
    );
    let fill = &bytes[3 * line_len() as usize..];
    assert!(fill.iter().all(|b| *b == b' '), "the fill is blank");
    drop(journal);
    reopen_and_append(dir.path(), 3).await;
    assert_eq!(
        all_entries(dir.path()),
        (0..4).map(entry).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_later_page_of_an_unsynced_batch_after_fill_is_dropped() {
    // A crash during a batch's write can leave its second page on disk and
    // lose its first: fill, then lines that were never acknowledged.
    // Appending after the fill would leave them between good lines.
    let dir = journal_of_one_entry().await;
    let mut lost = serde_json::to_vec(&entry(9)).unwrap();
    lost.push(b'\n');
    scribble(dir.path(), line_len() + 4096, &lost);
    let journal = Journal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    for n in 2..4 {
        journal.append(&entry(n)).await.unwrap();
    }
    drop(journal);
    reopen_and_append(dir.path(), 4).await;
    assert_eq!(
        all_entries(dir.path()),
        (1..5).map(entry).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn zeros_after_the_lines_are_dropped() {
    // Blocks the file system allocated and never wrote read as zeros.
    let dir = journal_of_one_entry().await;
    scribble(dir.path(), line_len(), &[0; 100]);
    reopen_and_append(dir.path(), 2).await;
    assert_eq!(all_entries(dir.path()), vec![entry(1), entry(2)]);
}

#[test]
fn reading_a_segment_refuses_what_follows_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = serde_json::to_vec(&entry(1)).unwrap();
    bytes.extend_from_slice(b"\n{\"Serial\":\"02:01\",\"SPIFF     ");
    std::fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
    let err = read_segment(&segment_path(dir.path(), 1)).unwrap_err();
    assert!(
        err.to_string().contains("incomplete or foreign line"),
        "{err}"
    );
}

#[tokio::test]
async fn a_full_segment_keeps_no_fill() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), 2 * line_len()).unwrap();
    for n in 0..3 {
        journal.append(&entry(n)).await.unwrap();
    }
    let full = std::fs::metadata(segment_path(dir.path(), 1))
        .unwrap()
        .len();
    assert_eq!(full, 2 * line_len());
}

#[test]
fn an_entry_over_the_line_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    let mut huge = entry(1);
    huge.spiffe_id = "x".repeat(MAX_LINE_BYTES);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = runtime.block_on(journal.append(&huge)).unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
}

#[tokio::test]
async fn opening_never_reads_the_older_records() {
    // A segment of 1 GiB whose old records would read as zeros (a sparse
    // file) opens at once and keeps them: only its end is looked at, so
    // the journal's size cannot slow a start.
    let dir = tempfile::tempdir().unwrap();
    let path = segment_path(dir.path(), 1);
    let f = File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let mut line = serde_json::to_vec(&entry(0)).unwrap();
    line.push(b'\n');
    let recent: Vec<u8> = line.repeat(TAIL as usize / line.len() + 1);
    scribble(dir.path(), 1 << 30, &recent);
    let journal = Journal::open(dir.path(), u64::MAX).unwrap();
    journal.append(&entry(1)).await.unwrap();
    drop(journal);
    let mut end = vec![0; line.len()];
    let f = File::open(&path).unwrap();
    f.read_exact_at(&mut end, (1 << 30) + recent.len() as u64)
        .unwrap();
    assert_eq!(serde_json::from_slice::<Entry>(&end).unwrap(), entry(1));
}

#[test]
fn a_segment_without_any_line_end_near_its_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(segment_path(dir.path(), 1), vec![b'x'; 2 * TAIL as usize]).unwrap();
    let err = Journal::open(dir.path(), DEFAULT_SEGMENT_BYTES)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("no line ends"), "{err}");
}

#[cfg(unix)]
#[tokio::test]
async fn segments_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    journal.append(&entry(1)).await.unwrap();
    let mode = std::fs::metadata(segment_path(dir.path(), 1))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// A writer over a bare channel, the journal that feeds it, and the
/// directory of their segment; the calling thread is the writer's (it
/// calls `gather`), no thread runs it.
fn writer(linger: Duration) -> (Writer, mpsc::Sender<Pending>, Journal, tempfile::TempDir) {
    writer_beside(linger, Arc::default())
}

/// [`writer`], for a journal whose producers report their idleness to `idle`.
fn writer_beside(
    linger: Duration,
    idle: Arc<IdleWorkers>,
) -> (Writer, mpsc::Sender<Pending>, Journal, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let segment = Segment::open_newest(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    let (journal, writer) = Journal::with_writer(segment, &idle, linger);
    journal
        .announced
        .writer
        .set(std::thread::current())
        .unwrap();
    let tx = journal.queue.clone();
    (writer, tx, journal, dir)
}

/// Runs `then` on another thread once the calling thread — the writer, in
/// `gather` — sleeps in its wait (or fails after 10 s), so that what must
/// reach a waiting writer does, without guessing a sleep.
fn once_this_thread_waits(then: impl FnOnce() + Send + 'static) {
    let task = Path::new("/proc").join(std::fs::read_link("/proc/thread-self").unwrap());
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !asleep(&task) {
            assert!(Instant::now() < deadline, "the writer never waited");
            std::thread::yield_now();
        }
        then();
    });
}

/// A thread's state letter follows its name, in parentheses, in its
/// `/proc/<pid>/task/<tid>/stat`; `S` is an interruptible sleep.
fn asleep(task: &Path) -> bool {
    std::fs::read_to_string(task.join("stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, state)| state.starts_with('S'))
    })
}

/// The lines of the batch `writer` gathers from `first`, which must not
/// have waited out its 30 s linger.
fn gathered_before_the_linger(writer: &Writer, first: Pending) -> Vec<u8> {
    let started = Instant::now();
    let batch = writer.gather(first);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited out the linger"
    );
    batch.iter().map(|p| p.line[0]).collect()
}

fn pending(n: u8) -> Pending {
    Pending {
        line: vec![n],
        linger: Linger::ForSiblings,
        done: oneshot::channel().0,
    }
}

fn prompt(n: u8) -> Pending {
    Pending {
        linger: Linger::Never,
        ..pending(n)
    }
}

/// Also when a worker is idle: an entry being signed is still coming.
#[test]
fn a_batch_waits_for_an_announced_entry() {
    let an_idle_worker = IdleWorkers::reported();
    an_idle_worker.parked();
    for idle in [Arc::default(), an_idle_worker] {
        let (writer, tx, journal, _dir) = writer_beside(Duration::from_secs(30), idle);
        let expected = journal.expect();
        once_this_thread_waits(move || {
            tx.send(pending(2)).unwrap();
            drop(expected);
        });
        assert_eq!(gathered_before_the_linger(&writer, pending(1)), [1, 2]);
    }
}

#[test]
fn entries_queued_meanwhile_do_not_end_the_wait_early() {
    let (writer, tx, journal, _dir) = writer(Duration::from_secs(30));
    let (first, second) = (journal.expect(), journal.expect());
    once_this_thread_waits(move || {
        tx.send(pending(2)).unwrap();
        drop(first);
        tx.send(pending(3)).unwrap();
        drop(second);
    });
    assert_eq!(gathered_before_the_linger(&writer, pending(1)), [1, 2, 3]);
}

#[test]
fn a_lone_entry_is_not_delayed() {
    let (writer, _tx, _journal, _dir) = writer(Duration::from_secs(30));
    assert_eq!(gathered_before_the_linger(&writer, pending(1)).len(), 1);
}

#[test]
fn a_withdrawn_announcement_ends_the_wait() {
    let (writer, _tx, journal, _dir) = writer(Duration::from_secs(30));
    let expected = journal.expect();
    once_this_thread_waits(move || drop(expected));
    assert_eq!(gathered_before_the_linger(&writer, pending(1)).len(), 1);
}

#[test]
fn the_wait_is_bounded_by_the_linger() {
    let (writer, _tx, journal, _dir) = writer(Duration::from_millis(50));
    let _never_comes = journal.expect();
    let started = Instant::now();
    assert_eq!(writer.gather(pending(1)).len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[test]
fn a_batch_holding_a_prompt_entry_does_not_wait() {
    let (writer, _tx, journal, _dir) = writer(Duration::from_secs(30));
    let _never_comes = journal.expect();
    assert_eq!(gathered_before_the_linger(&writer, prompt(1)).len(), 1);
}

/// Regression: a client with one request beside a flood waited in every
/// batch for the flood's signings in progress, up to the whole linger.
#[test]
fn a_prompt_entry_ends_the_wait_for_others() {
    let (writer, _tx, journal, _dir) = writer(Duration::from_secs(30));
    let (prompt_one, never_comes) = (journal.expect(), journal.expect());
    once_this_thread_waits(move || {
        journal.queue(prompt(2), prompt_one).unwrap();
        // Still announced when the closure ends: only the prompt entry
        // may end the wait.
        std::mem::forget(never_comes);
    });
    assert_eq!(gathered_before_the_linger(&writer, pending(1)), [1, 2]);
}

/// Regression: a server signing on one core announced one entry at a time,
/// so the last announced entry settled after every signing, ended the
/// wait, and every certificate paid a sync of its own. While a worker is
/// busy the batch keeps waiting; a worker running out of work ends it.
#[test]
fn a_batch_waits_while_every_worker_is_busy() {
    let idle = IdleWorkers::reported();
    let (writer, tx, journal, _dir) = writer_beside(Duration::from_secs(30), idle.clone());
    let signing = journal.expect();
    let task = Path::new("/proc").join(std::fs::read_link("/proc/thread-self").unwrap());
    once_this_thread_waits(move || {
        tx.send(pending(2)).unwrap();
        drop(signing);
        // Nothing announced now, but the one worker is still busy: had
        // that ended the wait, the batch would already be [1, 2].
        let deadline = Instant::now() + Duration::from_secs(10);
        while !asleep(&task) {
            assert!(Instant::now() < deadline, "the writer stopped waiting");
            std::thread::yield_now();
        }
        tx.send(pending(3)).unwrap();
        idle.parked();
    });
    assert_eq!(gathered_before_the_linger(&writer, pending(1)), [1, 2, 3]);
}

#[test]
fn a_lone_entry_beside_an_idle_worker_is_not_delayed() {
    let idle = IdleWorkers::reported();
    idle.parked();
    let (writer, _tx, _journal, _dir) = writer_beside(Duration::from_secs(30), idle.clone());
    assert_eq!(gathered_before_the_linger(&writer, pending(1)).len(), 1);
    idle.unparked();
    let (writer, _tx, _journal, _dir) = writer_beside(Duration::from_millis(20), idle);
    let started = Instant::now();
    assert_eq!(writer.gather(pending(1)).len(), 1);
    assert!(
        started.elapsed() >= Duration::from_millis(20),
        "with its worker busy, the entry waits for the linger"
    );
}

/// A lone entry is written and synced by the task appending it. No thread
/// runs this writer: an entry handed to it would never be acknowledged.
#[tokio::test]
async fn a_lone_entry_is_synced_by_the_task_appending_it() {
    let (_writer, _tx, journal, dir) = writer(Duration::from_secs(30));
    let lone = entry(1);
    let append = tokio::time::timeout(Duration::from_secs(10), journal.append(&lone));
    append.await.expect("handed to the writer").unwrap();
    assert_eq!(all_entries(dir.path()), [entry(1)]);
}

/// Beside another entry being signed, a busy segment, or only busy workers,
/// an entry goes to the writer, to share a sync with what comes next.
#[test]
fn an_entry_not_alone_goes_to_the_writer() {
    let (writer, _tx, journal, dir) = writer(Duration::from_secs(30));
    let being_signed = journal.expect();
    assert!(handed_to_the_writer(&writer, &journal));
    drop(being_signed);

    let busy = lock(&journal.shared.segment);
    assert!(handed_to_the_writer(&writer, &journal));
    drop(busy);

    let (writer, _tx, journal, _dir) =
        writer_beside(Duration::from_secs(30), IdleWorkers::reported());
    assert!(handed_to_the_writer(&writer, &journal));
    assert!(all_entries(dir.path()).is_empty());
}

/// Polls one append of `journal` once: whether it is then waiting in the
/// queue of `writer` (rather than written already).
fn handed_to_the_writer(writer: &Writer, journal: &Journal) -> bool {
    use std::future::Future as _;
    let one = entry(1);
    let mut append = std::pin::pin!(journal.append(&one));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let pending = append.as_mut().poll(&mut cx).is_pending();
    let queued = writer.queue.try_recv().is_ok();
    if queued {
        journal.shared.queued.fetch_sub(1, Ordering::SeqCst);
    }
    pending && queued
}
