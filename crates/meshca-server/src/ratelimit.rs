//! CSR rate limiting (`CSRMaxPerSecond`, `CSRMaxConcurrent`): over the limit
//! a request is refused at once with 429, never queued.

use crate::error::ApiError;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

enum Mode {
    Off,
    PerSecond {
        rate: f64,
        tokens: f64,
        last: Instant,
    },
    Concurrent(Arc<Semaphore>),
}

/// A limiter reconfigured in place when the CA configuration changes.
pub struct CsrLimiter {
    mode: Mutex<Mode>,
    settings: Mutex<(f64, u32)>,
}

/// Held while a CSR is being signed; releases a concurrency slot on drop.
pub struct Permit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl CsrLimiter {
    pub fn new(per_second: f64, max_concurrent: u32) -> Self {
        let l = Self {
            mode: Mutex::new(Mode::Off),
            settings: Mutex::new((f64::NAN, u32::MAX)),
        };
        l.configure(per_second, max_concurrent);
        l
    }

    /// Applies new limits; `CSRMaxConcurrent` > 0 replaces the per-second limit.
    pub fn configure(&self, per_second: f64, max_concurrent: u32) {
        let mut settings = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        if settings.0 == per_second && settings.1 == max_concurrent {
            return;
        }
        *settings = (per_second, max_concurrent);
        let mode = if max_concurrent > 0 {
            Mode::Concurrent(Arc::new(Semaphore::new(max_concurrent as usize)))
        } else if per_second > 0.0 {
            Mode::PerSecond {
                rate: per_second,
                tokens: per_second.max(1.0),
                last: Instant::now(),
            }
        } else {
            Mode::Off
        };
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    /// Takes a slot or fails with 429 and a `Retry-After` hint.
    pub fn acquire(&self) -> Result<Permit, ApiError> {
        let mut mode = self.mode.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *mode {
            Mode::Off => Ok(Permit(None)),
            Mode::Concurrent(sem) => sem
                .clone()
                .try_acquire_owned()
                .map(|p| Permit(Some(p)))
                .map_err(|_| ApiError::RateLimited {
                    retry_after_secs: 1,
                }),
            Mode::PerSecond { rate, tokens, last } => {
                let now = Instant::now();
                let burst = rate.max(1.0);
                *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * *rate).min(burst);
                *last = now;
                if *tokens >= 1.0 {
                    *tokens -= 1.0;
                    Ok(Permit(None))
                } else {
                    let wait = ((1.0 - *tokens) / *rate).ceil().max(1.0);
                    Err(ApiError::RateLimited {
                        retry_after_secs: wait as u64,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn per_second_limit_refills_over_time() {
        let l = CsrLimiter::new(2.0, 0);
        assert!(l.acquire().is_ok());
        assert!(l.acquire().is_ok());
        assert!(matches!(l.acquire(), Err(ApiError::RateLimited { .. })));
        tokio::time::advance(std::time::Duration::from_millis(600)).await;
        assert!(l.acquire().is_ok());
    }

    #[test]
    fn concurrency_limit_counts_held_permits() {
        let l = CsrLimiter::new(50.0, 1);
        let held = l.acquire().unwrap();
        assert!(matches!(
            l.acquire(),
            Err(ApiError::RateLimited {
                retry_after_secs: 1
            })
        ));
        drop(held);
        assert!(l.acquire().is_ok());
    }

    #[test]
    fn zero_means_off() {
        let l = CsrLimiter::new(0.0, 0);
        for _ in 0..1000 {
            assert!(l.acquire().is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reconfiguring_switches_modes() {
        let l = CsrLimiter::new(0.0, 0);
        l.configure(1.0, 0);
        assert!(l.acquire().is_ok());
        assert!(l.acquire().is_err());
        l.configure(0.0, 0);
        assert!(l.acquire().is_ok());
    }
}
