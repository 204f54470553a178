//! Blocking queries (`?index=N&wait=5m`): parse the parameters and wait for
//! a change, as Consul does.

use crate::error::ApiError;
use meshca_core::GoDuration;
use rand::Rng;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// The parsed blocking-query parameters of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockingQuery {
    /// `None` when the request does not block.
    pub index: Option<u64>,
    pub wait: Duration,
}

impl BlockingQuery {
    /// An empty value counts as absent (`?index=&wait=`), as in Consul.
    pub fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let index = match non_empty(query, "index") {
            None => None,
            Some(s) => Some(
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| ApiError::InvalidIndex)?,
            ),
        };
        let wait = match non_empty(query, "wait") {
            None => DEFAULT_WAIT,
            Some(s) => parse_wait(s)?,
        };
        Ok(Self {
            index: index.filter(|i| *i > 0),
            wait,
        })
    }

    /// The wait plus up to 1/16 of random jitter, so that many clients that
    /// started together do not all return at once (Consul does the same).
    pub fn wait_with_jitter(&self) -> Duration {
        let jitter_ms = (self.wait.as_millis() / 16) as u64;
        let extra = if jitter_ms == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..jitter_ms)
        };
        self.wait + Duration::from_millis(extra)
    }
}

/// The parameter's value, or `None` when it is absent or empty: Consul
/// ignores `?wait=` and `?index=` without a value, and so do its clients.
pub fn non_empty<'q>(query: &'q HashMap<String, String>, name: &str) -> Option<&'q str> {
    query
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// A wait is a Go duration with a unit (`10s`, `5m`); a bare number is an
/// invalid wait time, as in Consul. Longer than [`MAX_WAIT`] is `MAX_WAIT`,
/// even past Go's range (where Consul answers 400): the server caps the
/// wait either way, and the OpenAPI pattern can then describe exactly what
/// is accepted.
fn parse_wait(s: &str) -> Result<Duration, ApiError> {
    GoDuration::parse_at_most(s, MAX_WAIT).ok_or(ApiError::InvalidWait)
}

/// Waits until `rx`'s value exceeds `index`, `deadline` passes, or the
/// server begins to shut down (`stop` turns true: a parked query is
/// answered at once instead of holding the shutdown up). Returns the
/// latest value either way. An `index` from the future (a client that saw
/// another server or a previous run) does not block: like Consul, the
/// query resets and answers at once.
pub async fn wait_for_index(
    rx: &mut watch::Receiver<u64>,
    index: u64,
    deadline: tokio::time::Instant,
    stop: &mut watch::Receiver<bool>,
) -> u64 {
    loop {
        let current = *rx.borrow_and_update();
        if current != index {
            return current;
        }
        tokio::select! {
            changed = tokio::time::timeout_at(deadline, rx.changed()) => match changed {
                Ok(Ok(())) => continue,
                _ => return *rx.borrow(),
            },
            () = stopping(stop) => return *rx.borrow(),
        }
    }
}

/// Completes once `stop` is true (or its sender is gone).
pub async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<BlockingQuery, ApiError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BlockingQuery::parse(&map)
    }

    #[test]
    fn defaults_and_caps() {
        assert_eq!(
            q(&[]).unwrap(),
            BlockingQuery {
                index: None,
                wait: DEFAULT_WAIT
            }
        );
        assert_eq!(q(&[("wait", "1h")]).unwrap().wait, MAX_WAIT);
        assert_eq!(
            q(&[("index", "7"), ("wait", "10s")]).unwrap(),
            BlockingQuery {
                index: Some(7),
                wait: Duration::from_secs(10)
            }
        );
        assert_eq!(q(&[("index", "0")]).unwrap().index, None);
    }

    #[test]
    fn empty_values_count_as_absent_as_in_consul() {
        assert_eq!(
            q(&[("index", ""), ("wait", "")]).unwrap(),
            BlockingQuery {
                index: None,
                wait: DEFAULT_WAIT
            }
        );
    }

    #[test]
    fn bad_values_are_consul_errors() {
        assert!(matches!(
            q(&[("index", "abc")]),
            Err(ApiError::InvalidIndex)
        ));
        assert!(matches!(q(&[("index", "-1")]), Err(ApiError::InvalidIndex)));
        assert!(matches!(q(&[("wait", "soon")]), Err(ApiError::InvalidWait)));
        assert!(matches!(q(&[("wait", "10")]), Err(ApiError::InvalidWait)));
    }

    fn running() -> (watch::Sender<bool>, watch::Receiver<bool>) {
        watch::channel(false)
    }

    #[tokio::test]
    async fn wait_returns_when_the_index_moves_past() {
        let (tx, mut rx) = watch::channel(5u64);
        let (_s, mut stop) = running();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let waiter =
            tokio::spawn(async move { wait_for_index(&mut rx, 5, deadline, &mut stop).await });
        tx.send_replace(6);
        assert_eq!(waiter.await.unwrap(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn an_index_from_the_future_does_not_block() {
        let (_tx, mut rx) = watch::channel(5u64);
        let (_s, mut stop) = running();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let started = tokio::time::Instant::now();
        assert_eq!(wait_for_index(&mut rx, 9, deadline, &mut stop).await, 5);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_gives_up_at_the_deadline() {
        let (_tx, mut rx) = watch::channel(5u64);
        let (_s, mut stop) = running();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let started = tokio::time::Instant::now();
        assert_eq!(wait_for_index(&mut rx, 5, deadline, &mut stop).await, 5);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_answers_a_parked_query_at_once() {
        let (_tx, mut rx) = watch::channel(5u64);
        let (s, mut stop) = running();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        let started = tokio::time::Instant::now();
        let waiter =
            tokio::spawn(async move { wait_for_index(&mut rx, 5, deadline, &mut stop).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        s.send_replace(true);
        assert_eq!(waiter.await.unwrap(), 5);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
