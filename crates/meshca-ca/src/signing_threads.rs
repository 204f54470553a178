//! The engine's own signing threads, one per core, started on first use.
//!
//! An EC signing is a few hundred microseconds of CPU that a runtime worker
//! cannot interrupt, and everything queued on that worker waits for it. A
//! client flooding the CA keeps the workers busy with such signings, and a
//! quiet client's request (its read, its signing, its answer) queues behind
//! them. Here a flood's signings run on threads of their own, which the
//! kernel shares the CPU with the workers preemptively, so the workers stay
//! free for everyone else's requests (see [`crate::Pace`]). The threads
//! run at a lower priority ([`NICE`]), so that the kernel gives way to the
//! workers (and to anything else of the same priority) when they need the
//! CPU: the flood's signings are what waits.

use crate::CaError;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The signing threads' nice value. At 10 a thread weighs about a tenth of
/// a worker in the kernel's fair share, and a woken worker preempts it.
/// Unpinned on two cores beside a 64-connection flood, a quiet client's
/// median was its median alone with 10, a third higher with 0
/// (docs/BENCHMARKS.md).
pub(crate) const NICE: i32 = 10;

/// A fixed set of threads taking jobs from one queue.
pub(crate) struct SigningThreads {
    /// Dropped with the engine: the threads see the queue closed and end.
    jobs: crossbeam_channel::Sender<Job>,
}

impl SigningThreads {
    /// One thread per core: the fair turns let at most that many signings
    /// in at once, so a job never waits for a thread.
    pub(crate) fn start() -> Result<Self, CaError> {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(cores)
    }

    fn with_threads(count: usize) -> Result<Self, CaError> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        for i in 0..count {
            let queue = queue.clone();
            thread::Builder::new()
                .name(format!("meshca-signer-{i}"))
                .spawn(move || {
                    lower_priority();
                    for job in queue {
                        // The job's result channel is dropped while it
                        // unwinds: its caller gets an error, and the thread
                        // stays for the next job.
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .map_err(|e| CaError::Internal(format!("starting a signing thread: {e}")))?;
        }
        Ok(Self { jobs })
    }

    /// Runs `work` on one of the threads, in the caller's tracing span.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, CaError> + Send + 'static,
    ) -> Result<T, CaError> {
        let (done, result) = oneshot::channel();
        let span = tracing::Span::current();
        let job: Job = Box::new(move || {
            let _ = done.send(span.in_scope(work));
        });
        self.jobs
            .send(job)
            .map_err(|_| CaError::Internal("the signing threads have stopped".into()))?;
        result
            .await
            .map_err(|_| CaError::Internal("a signing thread failed".into()))?
    }
}

/// Gives the calling thread the nice value [`NICE`]. Linux sets it per
/// thread; elsewhere the threads keep the process's priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
        tracing::debug!(error = %e, "signing thread at the process's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn work_runs_on_a_signing_thread_and_returns_its_result() {
        let threads = SigningThreads::with_threads(2).unwrap();
        let name = threads
            .run(|| Ok(thread::current().name().map(str::to_owned)))
            .await
            .unwrap();
        assert!(
            name.as_deref()
                .is_some_and(|n| n.starts_with("meshca-signer-")),
            "{name:?}"
        );
        #[cfg(target_os = "linux")]
        {
            let nice = threads
                .run(|| {
                    let me = Some(rustix::thread::gettid());
                    Ok(rustix::process::getpriority_process(me))
                })
                .await
                .unwrap();
            assert_eq!(nice.ok(), Some(NICE), "the thread's nice value");
        }
        let err = threads
            .run(|| -> Result<(), _> { Err(CaError::Rejected("bad CSR".into())) })
            .await
            .unwrap_err();
        assert!(matches!(err, CaError::Rejected(m) if m == "bad CSR"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_job_is_an_error_and_the_thread_carries_on() {
        let threads = SigningThreads::with_threads(1).unwrap();
        let err = threads
            .run(|| -> Result<(), CaError> { panic!("a bug in signing") })
            .await
            .unwrap_err();
        assert!(matches!(err, CaError::Internal(_)), "{err:?}");
        assert_eq!(threads.run(|| Ok(7)).await.unwrap(), 7);
    }
}
