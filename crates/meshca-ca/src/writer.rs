//! The writer lock: one change to the CA at a time, and a second writer is
//! refused (409) instead of queued. Also the crash-injection points of the
//! rotation crash tests.

use crate::CaError;
use std::sync::Mutex;

/// Serialises writers; remembers what the current one is doing for the
/// `CA is already in state "…"` message.
pub(crate) struct WriterLock {
    lock: tokio::sync::Mutex<()>,
    state: Mutex<&'static str>,
}

/// Held while a writer changes the CA; resets the state name on drop.
pub(crate) struct Writer<'a> {
    _lock: tokio::sync::MutexGuard<'a, ()>,
    state: &'a Mutex<&'static str>,
}

impl WriterLock {
    pub(crate) fn new() -> Self {
        Self {
            lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(IDLE),
        }
    }

    /// Takes the lock without waiting, naming what the writer does.
    pub(crate) fn begin(&self, what: &'static str) -> Result<Writer<'_>, CaError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let lock = self.lock.try_lock().map_err(|_| CaError::Busy(*state))?;
        *state = what;
        Ok(Writer {
            _lock: lock,
            state: &self.state,
        })
    }
}

const IDLE: &str = "INITIALIZED";

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = IDLE;
    }
}

/// Crash injection for the crash tests: when `MESHCA_FAILPOINT` names this
/// step, the process aborts here, exactly as a `SIGKILL` would stop it.
/// Unset in production; reading it costs nothing that matters on these
/// rare paths.
pub(crate) fn failpoint(step: &str) {
    if std::env::var("MESHCA_FAILPOINT").is_ok_and(|v| v == step) {
        tracing::error!(step, "failpoint reached: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_writer_is_refused_with_the_first_ones_state() {
        let lock = WriterLock::new();
        let first = lock.begin("RENEWING").unwrap();
        match lock.begin("RECONFIGURING") {
            Err(CaError::Busy(state)) => assert_eq!(state, "RENEWING"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("two writers at once"),
        }
        drop(first);
        assert!(lock.begin("RECONFIGURING").is_ok());
    }
}
