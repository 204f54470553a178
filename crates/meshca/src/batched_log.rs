//! Log lines written in batches by a thread of their own, without loss.
//!
//! Each line is appended to a shared buffer (a lock and a copy, no system
//! call); a writer thread, woken by the first line after a quiet spell,
//! gathers lines for [`FLUSH_EVERY`] and writes them in one call. At
//! thousands of audit lines a second that is a few hundred wake-ups where a
//! queue with a thread woken per line (tracing-appender's) made about one
//! per line, plus its spinning before it parked: 3% of a `/sign`'s CPU at
//! 16 connections (docs/BENCHMARKS.md).
//!
//! Nothing is dropped: a line that finds the buffer at [`FULL_AT`] bytes
//! waits until the thread has written it, as a direct write to a slow
//! stderr would. A crash loses at most the last [`FLUSH_EVERY`] of lines,
//! which the issuance journal holds durably. Dropping the [`FlushGuard`]
//! writes what is buffered and stops the thread; lines logged after that
//! are written directly.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the writer gathers lines after the first one before writing
/// them. Short enough that someone tailing the log sees no delay.
pub const FLUSH_EVERY: Duration = Duration::from_millis(5);

/// Bytes buffered before a new line waits for the writer: about 4 000
/// audit lines, far more than [`FLUSH_EVERY`] of signing at any rate this
/// server reaches.
pub const FULL_AT: usize = 1 << 20;

/// A `MakeWriter` for tracing-subscriber: every line goes to the shared
/// buffer (see the module's documentation).
pub struct Batched<W: Write + Send + 'static> {
    shared: Arc<Shared<W>>,
}

impl<W: Write + Send + 'static> Clone for Batched<W> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

/// Writes what is buffered and stops the writer thread when dropped.
pub struct FlushGuard<W: Write + Send + 'static> {
    shared: Arc<Shared<W>>,
    thread: Option<JoinHandle<()>>,
}

struct Shared<W> {
    buffer: Mutex<Buffer>,
    /// The writer waits here for lines, and while it gathers them.
    lines: Condvar,
    /// Lines wait here for room.
    room: Condvar,
    sink: Mutex<W>,
    full_at: usize,
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    closed: bool,
}

impl<W: Write + Send + 'static> Batched<W> {
    /// Starts the writer thread (named `thread_name`) over `sink`.
    pub fn start(
        sink: W,
        thread_name: &str,
        gather: Duration,
        full_at: usize,
    ) -> std::io::Result<(Self, FlushGuard<W>)> {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer::default()),
            lines: Condvar::new(),
            room: Condvar::new(),
            sink: Mutex::new(sink),
            full_at,
        });
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || writer.run(gather))?;
        let guard = FlushGuard {
            shared: shared.clone(),
            thread: Some(thread),
        };
        Ok((Self { shared }, guard))
    }
}

impl<W> Shared<W> {
    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sink(&self) -> MutexGuard<'_, W> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<W: Write> Shared<W> {
    /// The writer thread: waits for a first line, gathers for `gather`
    /// (or until the buffer is full or closed), writes the batch.
    fn run(&self, gather: Duration) {
        let mut spare = Vec::new();
        loop {
            let mut buffer = self.buffer();
            while buffer.bytes.is_empty() && !buffer.closed {
                buffer = self.lines.wait(buffer).unwrap_or_else(|e| e.into_inner());
            }
            let deadline = Instant::now() + gather;
            while !buffer.closed && buffer.bytes.len() < self.full_at {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                buffer = self
                    .lines
                    .wait_timeout(buffer, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if buffer.closed {
                // Written under the buffer's lock, so that lines logged
                // after the close (written directly) follow these.
                self.write(&buffer.bytes);
                buffer.bytes = Vec::new();
                return;
            }
            std::mem::swap(&mut buffer.bytes, &mut spare);
            drop(buffer);
            self.room.notify_all();
            self.write(&spare);
            spare.clear();
        }
    }

    /// Writes a batch. A log that cannot be written has nowhere to report
    /// it, so the error is dropped, as tracing-subscriber does.
    fn write(&self, batch: &[u8]) {
        if batch.is_empty() {
            return;
        }
        let mut sink = self.sink();
        let _ = sink.write_all(batch).and_then(|()| sink.flush());
    }

    /// Appends one line (tracing-subscriber writes each event with one
    /// `write_all`, so a line is never split between batches).
    fn append(&self, line: &[u8]) {
        let mut buffer = self.buffer();
        while buffer.bytes.len() >= self.full_at && !buffer.closed {
            self.lines.notify_one();
            buffer = self.room.wait(buffer).unwrap_or_else(|e| e.into_inner());
        }
        if buffer.closed {
            // Still under the buffer's lock: after the closing batch.
            self.write(line);
            return;
        }
        let first = buffer.bytes.is_empty();
        buffer.bytes.extend_from_slice(line);
        let full = buffer.bytes.len() >= self.full_at;
        drop(buffer);
        // Only the first line of a batch (or a full buffer) wakes the
        // writer: the rest are gathered while it waits.
        if first || full {
            self.lines.notify_one();
        }
    }
}

impl<W: Write + Send + 'static> Write for &Batched<W> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.shared.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + Send + 'static> tracing_subscriber::fmt::MakeWriter<'a> for Batched<W> {
    type Writer = &'a Batched<W>;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl<W: Write + Send + 'static> Drop for FlushGuard<W> {
    fn drop(&mut self) {
        self.shared.buffer().closed = true;
        self.shared.lines.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records each write call, shared with the test, which
    /// can wait for a write.
    #[derive(Clone, Default)]
    struct Recorder(Arc<(Mutex<Vec<Vec<u8>>>, Condvar)>);

    impl Write for Recorder {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 .0.lock().unwrap().push(bytes.to_vec());
            self.0 .1.notify_all();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn writes(&self) -> Vec<Vec<u8>> {
            self.0 .0.lock().unwrap().clone()
        }
        fn text(&self) -> String {
            String::from_utf8(self.writes().concat()).unwrap()
        }
        /// Waits (at most 10 s) until something has been written.
        fn wait_for_a_write(&self) {
            let (writes, written) = &*self.0;
            let (writes, _) = written
                .wait_timeout_while(writes.lock().unwrap(), Duration::from_secs(10), |w| {
                    w.is_empty()
                })
                .unwrap();
            assert!(!writes.is_empty(), "nothing was written in 10 s");
        }
    }

    fn log(writer: &Batched<Recorder>, line: &str) {
        let mut w: &Batched<Recorder> = writer;
        w.write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn lines_logged_together_are_written_in_one_call_in_order() {
        let sink = Recorder::default();
        let (writer, guard) = Batched::start(
            sink.clone(),
            "test-log",
            Duration::from_millis(500),
            FULL_AT,
        )
        .unwrap();
        for i in 0..100 {
            log(&writer, &format!("line {i}\n"));
        }
        sink.wait_for_a_write();
        assert_eq!(sink.writes().len(), 1, "one batch, one write");
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(sink.text(), expected);
        drop(guard);
    }

    #[test]
    fn dropping_the_guard_writes_what_is_buffered_at_once() {
        let sink = Recorder::default();
        let (writer, guard) =
            Batched::start(sink.clone(), "test-log", Duration::from_secs(3600), FULL_AT).unwrap();
        log(&writer, "first\n");
        log(&writer, "second\n");
        let started = Instant::now();
        drop(guard);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "did not wait for the hour"
        );
        assert_eq!(sink.text(), "first\nsecond\n");
        log(&writer, "after the close\n");
        assert_eq!(sink.text(), "first\nsecond\nafter the close\n");
    }

    #[test]
    fn a_full_buffer_makes_lines_wait_and_loses_none() {
        let sink = Recorder::default();
        // Room for about three lines; a long gather, so only a full buffer
        // gets anything written while the lines are logged.
        let (writer, guard) =
            Batched::start(sink.clone(), "test-log", Duration::from_secs(3600), 32).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        log(&writer, &format!("t{t} line {i:03}\n"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = sink.text();
        assert!(
            sink.writes().len() > 100,
            "the full buffer was written early, again and again"
        );
        for t in 0..4 {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let expected: Vec<String> = (0..200).map(|i| format!("t{t} line {i:03}")).collect();
            assert_eq!(
                lines, expected,
                "every line of thread {t}, whole and in order"
            );
        }
        assert_eq!(text.lines().count(), 800);
    }
}
