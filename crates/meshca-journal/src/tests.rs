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

#[tokio::test]
async fn a_torn_last_line_is_dropped_on_open_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = Journal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        journal.append(&entry(1)).await.unwrap();
    }
    let path = segment_path(dir.path(), 1);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"Serial":"02:01","SPIFF"#).unwrap();
    drop(f);
    let journal = Journal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    journal.append(&entry(2)).await.unwrap();
    assert_eq!(all_entries(dir.path()), vec![entry(1), entry(2)]);
}

#[tokio::test]
async fn opening_never_reads_the_older_records() {
    // A journal whose old records are unreadable (zeros, as a sparse file
    // of 1 GiB reads) opens at once: only the end of the newest segment is
    // looked at, so its size cannot slow a start.
    let dir = tempfile::tempdir().unwrap();
    let path = segment_path(dir.path(), 1);
    let f = File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"\n").unwrap();
    drop(f);
    let journal = Journal::open(dir.path(), u64::MAX).unwrap();
    journal.append(&entry(1)).await.unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 1 << 30, "appended after the old records: {len}");
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

/// A writer over a bare channel, and the journal that feeds it; the
/// calling thread is the writer's (it calls `gather`).
fn writer(linger: Duration) -> (Writer, mpsc::Sender<Pending>, Journal) {
    let (tx, rx) = mpsc::channel();
    let announced = Arc::new(Announced::default());
    announced.writer.set(std::thread::current()).unwrap();
    let journal = Journal {
        queue: tx.clone(),
        announced: announced.clone(),
    };
    let writer = Writer {
        queue: rx,
        announced,
        linger,
    };
    (writer, tx, journal)
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

fn pending(n: u8) -> Pending {
    Pending {
        line: vec![n],
        done: oneshot::channel().0,
    }
}

#[test]
fn a_batch_waits_for_an_announced_entry() {
    let (writer, tx, journal) = writer(Duration::from_secs(30));
    let expected = journal.expect();
    once_this_thread_waits(move || {
        tx.send(pending(2)).unwrap();
        drop(expected);
    });
    let started = Instant::now();
    let batch = writer.gather(pending(1));
    let lines: Vec<_> = batch.iter().map(|p| p.line[0]).collect();
    assert_eq!(lines, [1, 2]);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn entries_queued_meanwhile_do_not_end_the_wait_early() {
    let (writer, tx, journal) = writer(Duration::from_secs(30));
    let (first, second) = (journal.expect(), journal.expect());
    once_this_thread_waits(move || {
        tx.send(pending(2)).unwrap();
        drop(first);
        tx.send(pending(3)).unwrap();
        drop(second);
    });
    let started = Instant::now();
    let batch = writer.gather(pending(1));
    let lines: Vec<_> = batch.iter().map(|p| p.line[0]).collect();
    assert_eq!(lines, [1, 2, 3]);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_lone_entry_is_not_delayed() {
    let (writer, _tx, _journal) = writer(Duration::from_secs(30));
    let started = Instant::now();
    assert_eq!(writer.gather(pending(1)).len(), 1);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_withdrawn_announcement_ends_the_wait() {
    let (writer, _tx, journal) = writer(Duration::from_secs(30));
    let expected = journal.expect();
    once_this_thread_waits(move || drop(expected));
    let started = Instant::now();
    assert_eq!(writer.gather(pending(1)).len(), 1);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn the_wait_is_bounded_by_the_linger() {
    let (writer, _tx, journal) = writer(Duration::from_millis(50));
    let _never_comes = journal.expect();
    let started = Instant::now();
    assert_eq!(writer.gather(pending(1)).len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(50));
}
