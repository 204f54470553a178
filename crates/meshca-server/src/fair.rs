//! Fair admission: one client flooding the CA must not starve the others.
//!
//! [`FairTurns`] hands out a fixed number of places; when none is free,
//! waiting clients take turns round-robin — each client's requests queue
//! behind each other, not behind another client's — so a client with one
//! request waits for at most one place of each other client, however many
//! requests those have queued. The server admits signing requests through
//! it, so that a flood's excess waits parked instead of crowding the
//! runtime ahead of everyone else's requests.
//!
//! While more than one client is being served, no client holds more than
//! `slots - reserved` places: the rest are kept for whoever comes next, so
//! that a quiet client's request is admitted at once instead of after one
//! of the flood's, and finds fewer of the flood's signings ahead of it on
//! the CPU. A client alone may take every place.
//!
//! A client is whoever the request's credential names (a token's accessor,
//! a mesh certificate's service) or, without one, its address. A client
//! with more than [`FairTurns::max_waiting`] requests waiting is refused:
//! its queue, and memory, stay bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Requests one client may have waiting for a turn; beyond it, refused.
pub const MAX_WAITING_PER_CLIENT: usize = 1024;

/// How long after two different clients were admitted one after the
/// other the reserve is kept back. A client renewing every few seconds
/// beside a flood is not protected by it; one in a hurry is.
pub const SHARED_FOR: Duration = Duration::from_secs(1);

/// Turns at the signing CPU, `slots` at a time, shared round-robin.
pub struct FairTurns {
    state: Mutex<State>,
    slots: usize,
    reserved: usize,
    max_waiting: usize,
}

struct State {
    free: usize,
    /// Places held, per client holding any.
    held: HashMap<String, usize>,
    /// Clients holding more than one place.
    busy: usize,
    /// Each waiting client's queue of waiters, oldest first.
    queues: HashMap<String, VecDeque<oneshot::Sender<()>>>,
    /// Clients with a non-empty queue, in the order they are served.
    order: VecDeque<String>,
    /// The client admitted last, once there was one.
    last_admitted: Option<String>,
    /// When a client was last admitted right after another one.
    shared_at: Option<Instant>,
}

/// The client already has `max_waiting` requests waiting.
#[derive(Debug, PartialEq, Eq)]
pub struct Crowded;

/// One turn; the next waiting client gets it when this drops.
pub struct Turn<'a> {
    turns: &'a FairTurns,
    client: &'a str,
}

impl<'a> Turn<'a> {
    /// The client this turn is for.
    pub fn client(&self) -> &'a str {
        self.client
    }

    /// Where this client stands among the others, read at once.
    pub fn company(&self) -> Company {
        let state = self.turns.lock();
        let held = state.holding(self.client);
        let waits = state.queues.contains_key(self.client);
        Company {
            held,
            // Another client holds more than one place, or waits for one.
            beside_a_busy_client: state.busy > usize::from(held > 1)
                || state.queues.len() > usize::from(waits),
            shared: state.shared(Instant::now()),
        }
    }
}

/// A client's standing among the others (see [`Turn::company`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Company {
    /// Places the client holds.
    pub held: usize,
    /// Whether another client holds more than one place or waits for one.
    pub beside_a_busy_client: bool,
    /// Whether other clients are being served beside this one (a client
    /// was admitted right after another within [`SHARED_FOR`]).
    pub shared: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.turns.release(self.client);
    }
}

/// A waiter that gives its turn back if it is dropped (its request was
/// cancelled) after the turn was handed to it but before it took it.
struct Waiting<'a> {
    turns: &'a FairTurns,
    client: &'a str,
    rx: oneshot::Receiver<()>,
    taken: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.taken {
            self.rx.close();
            if self.rx.try_recv().is_ok() {
                self.turns.release(self.client);
            }
        }
    }
}

impl FairTurns {
    /// `slots` places, of which `reserved` are kept for other clients
    /// while more than one is being served (at least one place stays
    /// takeable by each).
    pub fn new(slots: usize, reserved: usize, max_waiting: usize) -> Self {
        let slots = slots.max(1);
        Self {
            state: Mutex::new(State {
                free: slots,
                held: HashMap::new(),
                busy: 0,
                queues: HashMap::new(),
                order: VecDeque::new(),
                last_admitted: None,
                shared_at: None,
            }),
            slots,
            reserved: reserved.min(slots - 1),
            max_waiting,
        }
    }

    /// Waits for `client`'s next turn.
    pub async fn take<'a>(&'a self, client: &'a str) -> Result<Turn<'a>, Crowded> {
        let rx = match self.now_or_queue(client)? {
            None => {
                return Ok(Turn {
                    turns: self,
                    client,
                })
            }
            Some(rx) => rx,
        };
        let mut waiting = Waiting {
            turns: self,
            client,
            rx,
            taken: false,
        };
        // The sender is only dropped with the whole `FairTurns`, which
        // outlives this borrow; a turn handed over is ours either way.
        let _ = (&mut waiting.rx).await;
        waiting.taken = true;
        Ok(Turn {
            turns: self,
            client,
        })
    }

    /// A free turn now (`None`), or a place in `client`'s queue.
    fn now_or_queue(&self, client: &str) -> Result<Option<oneshot::Receiver<()>>, Crowded> {
        let mut state = self.lock();
        let now = Instant::now();
        // A place stays free only while every waiting client is at its
        // limit (`hand_over` sees to it), so a client under its own may
        // take it. Should the limit have grown since, the waiters get the
        // next places given back: each holds one at least.
        if state.free > 0 && state.holding(client) < self.limit(&state, now) {
            state.admit(client, now);
            return Ok(None);
        }
        let queue = state.queues.entry(client.to_owned()).or_default();
        queue.retain(|tx| !tx.is_closed());
        if queue.len() >= self.max_waiting {
            return Err(Crowded);
        }
        let (tx, rx) = oneshot::channel();
        queue.push_back(tx);
        if queue.len() == 1 {
            state.order.push_back(client.to_owned());
        }
        Ok(Some(rx))
    }

    /// `client`'s turn is over: its place goes to whoever may have it.
    fn release(&self, client: &str) {
        let mut state = self.lock();
        state.give_back(client);
        let now = Instant::now();
        while state.free > 0 && self.hand_over(&mut state, now) {}
    }

    /// Gives a free place to the next client in the round that is under
    /// its limit and has a waiter left; whether there was one.
    fn hand_over(&self, state: &mut State, now: Instant) -> bool {
        let limit = self.limit(state, now);
        state.after_the_last_admitted();
        for _ in 0..state.order.len() {
            let Some(client) = state.order.pop_front() else {
                break;
            };
            if state.holding(&client) >= limit {
                state.order.push_back(client);
                continue;
            }
            let Some(queue) = state.queues.get_mut(&client) else {
                continue;
            };
            // A waiter whose request was cancelled cannot take the turn.
            let mut handed = false;
            while let Some(tx) = queue.pop_front() {
                if tx.send(()).is_ok() {
                    handed = true;
                    break;
                }
            }
            let more_waiting = !queue.is_empty();
            if handed {
                state.admit(&client, now);
            }
            if more_waiting {
                state.order.push_back(client);
            } else {
                state.queues.remove(&client);
            }
            if handed {
                return true;
            }
        }
        false
    }

    /// The places one client may hold now.
    fn limit(&self, state: &State, now: Instant) -> usize {
        if state.shared(now) {
            self.slots - self.reserved
        } else {
            self.slots
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// A client that has just had a place goes after the others waiting:
    /// a flood always has a waiter, and taking turns in the round's order
    /// alone, a client that began waiting while the flood held the places
    /// found the flood ahead of it in the round.
    fn after_the_last_admitted(&mut self) {
        if self.order.len() > 1 && self.order.front() == self.last_admitted.as_ref() {
            self.order.rotate_left(1);
        }
    }

    /// Whether a client was admitted right after another one lately.
    fn shared(&self, now: Instant) -> bool {
        self.shared_at
            .is_some_and(|at| now.saturating_duration_since(at) < SHARED_FOR)
    }

    fn holding(&self, client: &str) -> usize {
        self.held.get(client).copied().unwrap_or(0)
    }

    /// `client` gives a place back.
    fn give_back(&mut self, client: &str) {
        if let Some(held) = self.held.get_mut(client) {
            *held -= 1;
            match *held {
                0 => {
                    self.held.remove(client);
                }
                1 => self.busy -= 1,
                _ => {}
            }
        }
        self.free += 1;
    }

    /// `client` takes a free place.
    fn admit(&mut self, client: &str, now: Instant) {
        self.free -= 1;
        match self.held.get_mut(client) {
            Some(held) => {
                *held += 1;
                if *held == 2 {
                    self.busy += 1;
                }
            }
            None => {
                self.held.insert(client.to_owned(), 1);
            }
        }
        match &mut self.last_admitted {
            Some(last) if last == client => {}
            Some(last) => {
                last.clear();
                last.push_str(client);
                self.shared_at = Some(now);
            }
            None => self.last_admitted = Some(client.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};
    use tokio::sync::mpsc;

    /// Spawns a task per request that takes a turn for its client, reports
    /// the client and lets the turn go. On a current-thread runtime the
    /// tasks queue up in this order at the caller's next yield.
    fn spawn_requests(
        turns: &Arc<FairTurns>,
        clients: &[&'static str],
    ) -> mpsc::UnboundedReceiver<&'static str> {
        let (served_tx, served) = mpsc::unbounded_channel();
        for &client in clients {
            let (turns, served_tx) = (turns.clone(), served_tx.clone());
            tokio::spawn(async move {
                let _turn = turns.take(client).await.expect("a turn");
                served_tx.send(client).expect("the test listens");
            });
        }
        served
    }

    /// `client`'s turn if it is there without waiting; otherwise `None`,
    /// and the waiter is dropped as a cancelled request's would be.
    fn at_once<'a>(turns: &'a FairTurns, client: &'a str) -> Option<Turn<'a>> {
        let mut take = std::pin::pin!(turns.take(client));
        match take.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(turn) => Some(turn.expect("not crowded")),
            Poll::Pending => None,
        }
    }

    fn immediate(turns: &FairTurns, client: &str) -> bool {
        at_once(turns, client).is_some()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_is_busy_while_it_holds_two_places_or_waits_for_one() {
        let turns = FairTurns::new(3, 0, 100);
        let quiet = at_once(&turns, "quiet").unwrap();
        let first = at_once(&turns, "flood").unwrap();
        assert!(!quiet.company().beside_a_busy_client, "one place each");
        let second = at_once(&turns, "flood").unwrap();
        assert!(quiet.company().beside_a_busy_client);
        assert!(!first.company().beside_a_busy_client, "not beside itself");
        drop(second);
        assert!(!quiet.company().beside_a_busy_client);

        // Every place taken: a client waiting for one is busy too.
        let last = at_once(&turns, "flood").unwrap();
        let mut waiting = std::pin::pin!(turns.take("other"));
        assert!(waiting
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending());
        assert!(quiet.company().beside_a_busy_client);
        drop((first, last));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flooding_client_takes_turns_with_the_others() {
        let turns = Arc::new(FairTurns::new(1, 0, 100));
        let busy = turns.take("flood").await.expect("free");
        let clients = ["flood", "flood", "flood", "flood", "a", "b"];
        let mut served = spawn_requests(&turns, &clients);
        tokio::task::yield_now().await;
        drop(busy);
        let mut order = Vec::new();
        for _ in 0..clients.len() {
            order.push(served.recv().await.expect("served"));
        }
        // First come first served would be flood ×4, a, b. The flood has
        // just had the turn, so the others go first: before the flood was
        // put after the last admitted, a client that began waiting while
        // the flood held every place waited for one more of its turns.
        assert_eq!(order, ["a", "b", "flood", "flood", "flood", "flood"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn free_turns_are_taken_at_once_up_to_the_slots() {
        let turns = FairTurns::new(2, 0, 100);
        let one = turns.take("a").await.expect("free");
        let two = turns.take("b").await.expect("free");
        assert!(!immediate(&turns, "c"), "a third turn with two slots");
        drop(one);
        assert!(immediate(&turns, "c"));
        drop(two);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_with_too_many_waiting_is_refused_and_others_are_not() {
        let turns = Arc::new(FairTurns::new(1, 0, 2));
        let busy = turns.take("x").await.expect("free");
        let mut served = spawn_requests(&turns, &["flood", "flood"]);
        tokio::task::yield_now().await;
        assert_eq!(turns.now_or_queue("flood").err(), Some(Crowded));
        assert!(turns.now_or_queue("other").is_ok());
        drop(busy);
        // The queued "other" receiver above was dropped: it is skipped.
        assert_eq!(served.recv().await, Some("flood"));
        assert_eq!(served.recv().await, Some("flood"));
        assert!(immediate(&turns, "flood"), "the queue drained");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_waiter_does_not_keep_a_turn() {
        let turns = Arc::new(FairTurns::new(1, 0, 100));
        // Cancelled while waiting: the turn goes past it.
        let busy = turns.take("x").await.expect("free");
        let waiter = tokio::spawn({
            let turns = turns.clone();
            async move { drop(turns.take("a").await) }
        });
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        drop(busy);
        assert!(immediate(&turns, "b"), "the cancelled waiter kept the turn");

        // Cancelled after the turn was handed to it, before it ran: the
        // turn comes back.
        let busy = turns.take("x").await.expect("free");
        let waiter = tokio::spawn({
            let turns = turns.clone();
            async move { drop(turns.take("a").await) }
        });
        tokio::task::yield_now().await;
        drop(busy);
        waiter.abort();
        let _ = waiter.await;
        assert!(immediate(&turns, "b"), "the handed-over turn was lost");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_alone_may_take_every_place() {
        let turns = FairTurns::new(3, 1, 100);
        let held: Vec<_> = (0..3).map(|_| at_once(&turns, "flood")).collect();
        assert!(held.iter().all(Option::is_some), "the reserve held back");
        assert!(!immediate(&turns, "flood"), "a fourth place");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn while_two_clients_are_served_the_reserve_is_kept_for_the_other() {
        let turns = FairTurns::new(3, 1, 100);
        let first = at_once(&turns, "flood").expect("free");
        assert!(immediate(&turns, "quiet"), "another client is admitted");
        let second = at_once(&turns, "flood").expect("free");
        assert!(
            !immediate(&turns, "flood"),
            "the flood took the place kept for others"
        );
        assert!(immediate(&turns, "quiet"), "the kept place");
        drop((first, second));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn once_the_other_client_is_gone_a_client_may_take_the_reserve_again() {
        let turns = FairTurns::new(3, 1, 100);
        let _first = at_once(&turns, "flood").expect("free");
        drop(at_once(&turns, "quiet").expect("free"));
        let _second = at_once(&turns, "flood").expect("free");
        tokio::time::advance(SHARED_FOR / 2).await;
        assert!(!immediate(&turns, "flood"), "kept back a while");
        tokio::time::advance(SHARED_FOR / 2).await;
        assert!(immediate(&turns, "flood"), "kept back for good");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_freed_place_skips_a_client_at_its_limit_for_the_next_in_turn() {
        let turns = Arc::new(FairTurns::new(2, 1, 100));
        let flood = turns.take("flood").await.expect("free");
        let other = turns.take("other").await.expect("free");
        let mut served = spawn_requests(&turns, &["flood", "quiet"]);
        tokio::task::yield_now().await;
        drop(other);
        // First come first served would be flood; it already holds the one
        // place a client may have while others are served.
        assert_eq!(served.recv().await, Some("quiet"));
        drop(flood);
        assert_eq!(served.recv().await, Some("flood"));
    }
}
