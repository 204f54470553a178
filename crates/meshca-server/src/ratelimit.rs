//! CSR rate limiting (`CSRMaxPerSecond`, `CSRMaxConcurrent`): over the limit
//! a request is refused at once with 429, never queued. Then fair
//! admission: signing requests inside the server at once are bounded, and
//! the next place goes round-robin between the clients waiting for one;
//! inside, a turn per core at signing, handed round-robin the same way,
//! and each signing's pace (see [`Admitted`]'s [`SigningTurn`]).
//!
//! The per-second limit is `governor`'s GCRA limiter, the concurrency limit a
//! tokio semaphore whose permit is held while the CSR is signed.

use crate::error::ApiError;
use crate::fair::{FairTurns, Turn, MAX_WAITING_PER_CLIENT};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use meshca_ca::{Pace, SigningTurn};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The longest time between two CSRs that a positive `CSRMaxPerSecond` can
/// ask for: a lower rate is taken as this one. It keeps the period within
/// governor's range (nanoseconds in a u64, about 584 years).
const MAX_PERIOD: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

type PerSecond<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

enum Mode<C: Clock> {
    Off,
    PerSecond(PerSecond<C>),
    Concurrent(Arc<Semaphore>),
}

struct Limits<C: Clock> {
    per_second: f64,
    max_concurrent: u32,
    mode: Mode<C>,
}

/// A limiter reconfigured in place when the CA configuration changes.
///
/// The clock is a parameter for the tests; the server uses governor's
/// monotonic default.
pub struct CsrLimiter<C: Clock = DefaultClock> {
    clock: C,
    limits: Mutex<Limits<C>>,
    admission: FairTurns,
    /// One turn per core at signing inline, handed round-robin (see
    /// [`Admitted`]'s [`SigningTurn`]).
    cpu: FairTurns,
}

/// Signing requests per core admitted at once: enough in flight for the
/// journal to share each sync between many and for the CPU to have work
/// while a sync runs, and a bound on how much of a flood is inside the
/// server. With 8 per core, 64 connections on two cores moved in one
/// convoy: every admitted request waited for the same sync while the
/// cores idled (15% of them); with 16, one batch is synced while the next
/// one signs: idle 3-5%, /sign 14-20% and agent leaves 15-27% more per
/// second, for the same or less CPU each (docs/BENCHMARKS.md). With 6
/// instead of 8, /sign at 16 connections was 5% slower.
const ADMITTED_PER_CORE: usize = 16;

/// Of those, places per core that no client may take while another one is
/// being served too (see [`FairTurns`]): half, so that a newcomer is
/// admitted at once. Pinned to one core beside a 64-connection flood, a
/// quiet client's p99 was 10-15 ms when the flood could hold every place,
/// and 3.1-3.9 ms with 8 places and 4 of them kept back
/// (docs/BENCHMARKS.md); the CPU turns since bound how many of the flood's
/// signings run ahead of it, whatever places the flood holds.
const RESERVED_PER_CORE: usize = 8;

/// One client's way through the limits: who it is for the fair share.
pub struct Gate<'a, C: Clock = DefaultClock> {
    limiter: &'a CsrLimiter<C>,
    client: String,
}

impl<C: Clock + Clone> Gate<'_, C> {
    /// The rate limits (refused at once), then a fair place among the
    /// requests signing now: waits while the server is full, served
    /// round-robin with the other waiting clients; refused when this client
    /// already has too many waiting.
    pub async fn admit(&self) -> Result<Admitted<'_>, ApiError> {
        let permit = self.limiter.acquire()?;
        let place = self
            .limiter
            .admission
            .take(&self.client)
            .await
            .map_err(|_| ApiError::RateLimited {
                retry_after_secs: 1,
            })?;
        Ok(Admitted {
            permit: Some(permit),
            place,
            cpu: &self.limiter.cpu,
            cpu_turn: None,
            alone: false,
        })
    }
}

/// Held while a CSR is being signed; releases a concurrency slot on drop.
pub struct Permit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

/// A request admitted to sign: its rate-limit permit and its place; the
/// engine takes its turn at the CPU through it.
pub struct Admitted<'a> {
    permit: Option<Permit>,
    place: Turn<'a>,
    cpu: &'a FairTurns,
    cpu_turn: Option<Turn<'a>>,
    /// The only request in the server when its turn came.
    alone: bool,
}

/// The places bound how much of a flood is inside the server; the CPU
/// turns decide who signs next. A signing runs inline on a runtime worker
/// and is not interrupted, so every signing ready ahead of a request is
/// time it waits. With a turn per core, a flood's admitted requests wait
/// for theirs parked, off the runtime's queues, and the next turn goes
/// round-robin: a client's request signs after at most one of another
/// client's per core, not after every one that client has ready.
///
/// While several clients are served, that is still too slow for a client
/// with one request beside a flood: its read, signing and answer queued on
/// the workers behind the flood's signings, and its journal entry waited
/// for the flood's next ones to share a sync. Pinned to one core beside a
/// 64-connection flood, its p99 was 3-4 times its p99 alone. So beside
/// a busy client (one with more than one request in the server), a client
/// with one request signs at once, on its worker, without a turn, and its
/// entry is synced without waiting ([`Pace::Prompt`]); a busy client beside
/// others takes turns and signs on the engine's signing threads
/// ([`Pace::Background`]), which the kernel preempts for the workers. The
/// quiet client's p99 fell to 1.2-1.6 times its p99 alone, the flood's
/// rate by about a third (docs/BENCHMARKS.md). Otherwise — a client alone,
/// or clients with one request each — requests sign on their workers in
/// turns, entries batched: the cheapest per certificate.
impl SigningTurn for Admitted<'_> {
    async fn take(&mut self) -> Pace {
        let company = self.place.company();
        if company.held == 1 && company.beside_a_busy_client {
            return Pace::Prompt;
        }
        // Never crowded: a client waits for at most as many turns as it
        // has places, fewer than the queue holds.
        self.cpu_turn = self.cpu.take(self.place.client()).await.ok();
        // Read again: the wait for the turn may have been long.
        let company = self.place.company();
        self.alone = company.held == 1 && !company.shared;
        if company.held > 1 && company.shared {
            Pace::Background
        } else {
            Pace::Batched
        }
    }

    fn alone(&self) -> bool {
        self.alone
    }

    /// The leaf is signed: `CSRMaxConcurrent` counts signings, so its
    /// permit goes back now, before the journal's sync is awaited (with a
    /// limit of 1, holding it made every signing wait for its own sync),
    /// and so does the CPU turn. The fair place is kept until the answer:
    /// it bounds how much of a flood is inside the server, and a quiet
    /// client's median latency beside a flood doubled or worse when it was
    /// given back here too (docs/BENCHMARKS.md).
    fn signed(&mut self) {
        self.permit = None;
        self.cpu_turn = None;
    }
}

impl CsrLimiter {
    pub fn new(per_second: f64, max_concurrent: u32) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_clock(per_second, max_concurrent, DefaultClock::default(), cores)
    }
}

impl<C: Clock + Clone> CsrLimiter<C> {
    fn with_clock(per_second: f64, max_concurrent: u32, clock: C, cores: usize) -> Self {
        let mode = Self::mode(per_second, max_concurrent, &clock);
        Self {
            clock,
            limits: Mutex::new(Limits {
                per_second,
                max_concurrent,
                mode,
            }),
            admission: FairTurns::new(
                cores * ADMITTED_PER_CORE,
                cores * RESERVED_PER_CORE,
                MAX_WAITING_PER_CLIENT,
            ),
            cpu: FairTurns::new(cores, 0, cores * ADMITTED_PER_CORE),
        }
    }

    /// The gate for `client`'s signing requests (see [`Gate::admit`]).
    pub fn for_client(&self, client: String) -> Gate<'_, C> {
        Gate {
            limiter: self,
            client,
        }
    }

    /// Applies new limits; `CSRMaxConcurrent` > 0 replaces the per-second
    /// limit. Unchanged limits keep their state, so that saving the
    /// configuration does not refill the bucket.
    pub fn configure(&self, per_second: f64, max_concurrent: u32) {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if limits.per_second == per_second && limits.max_concurrent == max_concurrent {
            return;
        }
        *limits = Limits {
            per_second,
            max_concurrent,
            mode: Self::mode(per_second, max_concurrent, &self.clock),
        };
    }

    fn mode(per_second: f64, max_concurrent: u32, clock: &C) -> Mode<C> {
        if max_concurrent > 0 {
            Mode::Concurrent(Arc::new(Semaphore::new(max_concurrent as usize)))
        } else if per_second > 0.0 {
            Mode::PerSecond(RateLimiter::direct_with_clock(
                quota(per_second),
                clock.clone(),
            ))
        } else {
            Mode::Off
        }
    }

    /// Takes a slot or fails with 429 and a `Retry-After` hint.
    pub fn acquire(&self) -> Result<Permit, ApiError> {
        let limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        match &limits.mode {
            Mode::Off => Ok(Permit(None)),
            Mode::Concurrent(sem) => sem
                .clone()
                .try_acquire_owned()
                .map(|p| Permit(Some(p)))
                .map_err(|_| ApiError::RateLimited {
                    retry_after_secs: 1,
                }),
            Mode::PerSecond(limiter) => match limiter.check() {
                Ok(()) => Ok(Permit(None)),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    Err(ApiError::RateLimited {
                        retry_after_secs: whole_seconds(wait),
                    })
                }
            },
        }
    }
}

/// `rate` CSRs a second on average, in bursts of up to its whole part (at
/// least one), starting with a full burst.
fn quota(rate: f64) -> Quota {
    // `as` saturates: a rate beyond u32::MAX is a burst of u32::MAX.
    let burst = NonZeroU32::new(rate.floor() as u32).unwrap_or(NonZeroU32::MIN);
    let period = Duration::try_from_secs_f64(1.0 / rate)
        .unwrap_or(MAX_PERIOD)
        .clamp(Duration::from_nanos(1), MAX_PERIOD);
    Quota::with_period(period)
        .unwrap_or(Quota::per_second(burst))
        .allow_burst(burst)
}

/// A wait as `Retry-After` seconds: rounded up, and at least one.
fn whole_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    fn ready<T>(f: Pin<&mut impl Future<Output = T>>) -> T {
        match poll_once(f) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("waiting"),
        }
    }

    /// Regression: the turns went round in the order clients began
    /// waiting, so a busy client always waiting found itself first in the
    /// round whenever it gave a turn back, and another busy client waited
    /// for one more of its signings.
    #[tokio::test(flavor = "current_thread")]
    async fn busy_clients_take_turns_at_signing() {
        let (limiter, _) = limiter(0.0, 0);
        let (a, b) = (
            limiter.for_client("a".into()),
            limiter.for_client("b".into()),
        );
        let mut signing = a.admit().await.unwrap();
        let mut as_next = a.admit().await.unwrap();
        let mut bs_first = b.admit().await.unwrap();
        let _bs_second = b.admit().await.unwrap();
        assert_eq!(ready(std::pin::pin!(signing.take())), Pace::Background);
        let mut as_turn = std::pin::pin!(as_next.take());
        let mut bs_turn = std::pin::pin!(bs_first.take());
        assert!(
            poll_once(as_turn.as_mut()).is_pending(),
            "one turn per core"
        );
        assert!(poll_once(bs_turn.as_mut()).is_pending());

        signing.signed();
        assert_eq!(ready(bs_turn.as_mut()), Pace::Background, "b signs next");
        assert!(poll_once(as_turn.as_mut()).is_pending());
    }

    /// One client alone signs on its worker in turns, its journal entries
    /// batched: the cheapest per certificate.
    #[tokio::test(flavor = "current_thread")]
    async fn a_client_alone_signs_batched_on_its_worker() {
        let (limiter, _) = limiter(0.0, 0);
        let alone = limiter.for_client("alone".into());
        let (first, second) = (alone.admit().await.unwrap(), alone.admit().await.unwrap());
        in_turns_at(Pace::Batched, first, second);
    }

    /// A request alone in the server signs without yielding first; one of
    /// two, from one client or two, yields to the other.
    #[tokio::test(flavor = "current_thread")]
    async fn only_a_request_alone_in_the_server_skips_the_yield() {
        let (one_client, _) = limiter(0.0, 0);
        let a = one_client.for_client("a".into());
        let mut only = a.admit().await.unwrap();
        ready(std::pin::pin!(only.take()));
        assert!(only.alone());
        let mut second = a.admit().await.unwrap();
        only.signed();
        ready(std::pin::pin!(second.take()));
        assert!(!second.alone(), "a's first request is still in the server");
        drop((only, second));

        let (two_clients, _) = limiter(0.0, 0);
        let (a, b) = (
            two_clients.for_client("a".into()),
            two_clients.for_client("b".into()),
        );
        let mut as_only = a.admit().await.unwrap();
        let _bs = b.admit().await.unwrap();
        ready(std::pin::pin!(as_only.take()));
        assert!(!as_only.alone(), "b is served beside a");
    }

    /// `first` signs at `pace` at once; `second` waits for its turn, then
    /// signs at `pace` too.
    fn in_turns_at(pace: Pace, mut first: Admitted<'_>, mut second: Admitted<'_>) {
        assert_eq!(ready(std::pin::pin!(first.take())), pace);
        let mut seconds_turn = std::pin::pin!(second.take());
        assert!(
            poll_once(seconds_turn.as_mut()).is_pending(),
            "one turn per core"
        );
        first.signed();
        assert_eq!(ready(seconds_turn.as_mut()), pace);
    }

    /// Many clients with one request each (a mesh's sidecars) are not a
    /// flood: they take turns on their workers, entries batched. Signing
    /// at once and syncing each entry promptly cost them 10-15% more CPU
    /// per certificate (docs/BENCHMARKS.md).
    #[tokio::test(flavor = "current_thread")]
    async fn clients_with_one_request_each_take_turns_batched() {
        let (limiter, _) = limiter(0.0, 0);
        let (one, two) = (
            limiter.for_client("one".into()),
            limiter.for_client("two".into()),
        );
        let (ones, twos) = (one.admit().await.unwrap(), two.admit().await.unwrap());
        in_turns_at(Pace::Batched, ones, twos);
    }

    /// Regression: a quiet client's request beside a flood waited for the
    /// flood's signing in progress, on the same worker, and then for the
    /// flood's next signings to share a journal sync with them. Now it
    /// signs at once on its worker and its entry is synced without
    /// waiting, while the flood signs on the signing threads.
    #[tokio::test(flavor = "current_thread")]
    async fn beside_a_flood_a_request_alone_signs_at_once_and_promptly() {
        let (limiter, _) = limiter(0.0, 0);
        let (flood, quiet) = (
            limiter.for_client("flood".into()),
            limiter.for_client("quiet".into()),
        );
        let mut signing = flood.admit().await.unwrap();
        let mut floods_next = flood.admit().await.unwrap();
        let mut quiets = quiet.admit().await.unwrap();
        assert_eq!(ready(std::pin::pin!(signing.take())), Pace::Background);
        let mut floods_turn = std::pin::pin!(floods_next.take());
        assert!(poll_once(floods_turn.as_mut()).is_pending());

        assert_eq!(ready(std::pin::pin!(quiets.take())), Pace::Prompt);
        quiets.signed();
        assert!(
            poll_once(floods_turn.as_mut()).is_pending(),
            "the quiet request took no turn, and gives none back"
        );
        signing.signed();
        assert_eq!(ready(floods_turn.as_mut()), Pace::Background);
    }

    fn limiter(
        per_second: f64,
        max_concurrent: u32,
    ) -> (CsrLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            CsrLimiter::with_clock(per_second, max_concurrent, clock.clone(), 1),
            clock,
        )
    }

    fn retry_after(r: Result<Permit, ApiError>) -> u64 {
        match r {
            Err(ApiError::RateLimited { retry_after_secs }) => retry_after_secs,
            Err(e) => panic!("want 429, got {e:?}"),
            Ok(_) => panic!("want 429, got a permit"),
        }
    }

    #[test]
    fn per_second_limit_refills_over_time() {
        let (l, clock) = limiter(2.0, 0);
        assert!(l.acquire().is_ok());
        assert!(l.acquire().is_ok());
        assert_eq!(retry_after(l.acquire()), 1);
        clock.advance(Duration::from_millis(600));
        assert!(l.acquire().is_ok());
        assert!(l.acquire().is_err());
    }

    #[test]
    fn retry_after_is_the_wait_rounded_up() {
        let (l, clock) = limiter(0.25, 0);
        assert!(l.acquire().is_ok());
        assert_eq!(retry_after(l.acquire()), 4);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(retry_after(l.acquire()), 3);
        clock.advance(Duration::from_millis(2500));
        assert!(l.acquire().is_ok());
    }

    #[test]
    fn fractional_rates_allow_their_whole_part_at_once() {
        let (l, _clock) = limiter(2.9, 0);
        assert!(l.acquire().is_ok());
        assert!(l.acquire().is_ok());
        assert!(l.acquire().is_err());
    }

    #[test]
    fn extreme_rates_do_not_panic() {
        let (l, _clock) = limiter(1e-300, 0);
        assert!(l.acquire().is_ok());
        assert_eq!(retry_after(l.acquire()), MAX_PERIOD.as_secs());
        let (l, _clock) = limiter(1e300, 0);
        for _ in 0..1000 {
            assert!(l.acquire().is_ok());
        }
    }

    #[test]
    fn concurrency_limit_counts_held_permits() {
        let (l, _clock) = limiter(50.0, 1);
        let held = l.acquire().unwrap();
        assert_eq!(retry_after(l.acquire()), 1);
        drop(held);
        assert!(l.acquire().is_ok());
    }

    #[test]
    fn zero_means_off() {
        let (l, _clock) = limiter(0.0, 0);
        for _ in 0..1000 {
            assert!(l.acquire().is_ok());
        }
    }

    #[test]
    fn reconfiguring_switches_modes() {
        let (l, _clock) = limiter(0.0, 0);
        l.configure(1.0, 0);
        assert!(l.acquire().is_ok());
        assert!(l.acquire().is_err());
        l.configure(0.0, 0);
        assert!(l.acquire().is_ok());
        l.configure(0.0, 1);
        let held = l.acquire().unwrap();
        assert!(l.acquire().is_err());
        drop(held);
    }

    #[test]
    fn unchanged_limits_keep_their_state() {
        let (l, _clock) = limiter(1.0, 0);
        assert!(l.acquire().is_ok());
        l.configure(1.0, 0);
        assert!(
            l.acquire().is_err(),
            "saving the same limits refilled the bucket"
        );
        l.configure(2.0, 0);
        assert!(l.acquire().is_ok());
    }

    #[test]
    fn the_default_clock_is_real_time() {
        let l = CsrLimiter::new(4.0, 0);
        for _ in 0..4 {
            assert!(l.acquire().is_ok());
        }
        assert!(l.acquire().is_err());
        // One cell every 250 ms: a real short wait refills one.
        std::thread::sleep(Duration::from_millis(300));
        assert!(l.acquire().is_ok());
    }
}
