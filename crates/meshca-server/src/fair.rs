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
//! A client is whoever the request's credential names (a token's accessor,
//! a mesh certificate's service) or, without one, its address. A client
//! with more than [`FairTurns::max_waiting`] requests waiting is refused:
//! its queue, and memory, stay bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Requests one client may have waiting for a turn; beyond it, refused.
pub const MAX_WAITING_PER_CLIENT: usize = 1024;

/// Turns at the signing CPU, `slots` at a time, shared round-robin.
pub struct FairTurns {
    state: Mutex<State>,
    max_waiting: usize,
}

struct State {
    free: usize,
    /// Each waiting client's queue of waiters, oldest first.
    queues: HashMap<String, VecDeque<oneshot::Sender<()>>>,
    /// Clients with a non-empty queue, in the order they are served.
    order: VecDeque<String>,
}

/// The client already has `max_waiting` requests waiting.
#[derive(Debug, PartialEq, Eq)]
pub struct Crowded;

/// One turn; the next waiting client gets it when this drops.
pub struct Turn<'a>(&'a FairTurns);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.pass_on();
    }
}

/// A waiter that gives its turn back if it is dropped (its request was
/// cancelled) after the turn was handed to it but before it took it.
struct Waiting<'a> {
    turns: &'a FairTurns,
    rx: oneshot::Receiver<()>,
    taken: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.taken {
            self.rx.close();
            if self.rx.try_recv().is_ok() {
                self.turns.pass_on();
            }
        }
    }
}

impl FairTurns {
    pub fn new(slots: usize, max_waiting: usize) -> Self {
        Self {
            state: Mutex::new(State {
                free: slots.max(1),
                queues: HashMap::new(),
                order: VecDeque::new(),
            }),
            max_waiting,
        }
    }

    /// Waits for `client`'s next turn.
    pub async fn take(&self, client: &str) -> Result<Turn<'_>, Crowded> {
        let mut waiting = match self.now_or_queue(client)? {
            None => return Ok(Turn(self)),
            Some(rx) => Waiting {
                turns: self,
                rx,
                taken: false,
            },
        };
        // The sender is only dropped with the whole `FairTurns`, which
        // outlives this borrow; a turn handed over is ours either way.
        let _ = (&mut waiting.rx).await;
        waiting.taken = true;
        Ok(Turn(self))
    }

    /// A free turn now (`None`), or a place in `client`'s queue.
    fn now_or_queue(&self, client: &str) -> Result<Option<oneshot::Receiver<()>>, Crowded> {
        let mut state = self.lock();
        if state.free > 0 && state.order.is_empty() {
            state.free -= 1;
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

    /// Hands a finished turn to the next client in the round, or frees it.
    fn pass_on(&self) {
        let mut state = self.lock();
        while let Some(client) = state.order.pop_front() {
            let Some(queue) = state.queues.get_mut(&client) else {
                continue;
            };
            let next = queue.pop_front();
            if queue.is_empty() {
                state.queues.remove(&client);
            } else {
                state.order.push_back(client);
            }
            // A waiter whose request was cancelled cannot take the turn.
            if next.is_some_and(|tx| tx.send(()).is_ok()) {
                return;
            }
        }
        state.free += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
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

    async fn immediate(turns: &FairTurns, client: &str) -> bool {
        tokio::time::timeout(Duration::from_millis(200), turns.take(client))
            .await
            .is_ok()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flooding_client_takes_turns_with_the_others() {
        let turns = Arc::new(FairTurns::new(1, 100));
        let busy = turns.take("flood").await.expect("free");
        let clients = ["flood", "flood", "flood", "flood", "a", "b"];
        let mut served = spawn_requests(&turns, &clients);
        tokio::task::yield_now().await;
        drop(busy);
        let mut order = Vec::new();
        for _ in 0..clients.len() {
            order.push(served.recv().await.expect("served"));
        }
        // First come first served would be flood ×4, a, b.
        assert_eq!(order, ["flood", "a", "b", "flood", "flood", "flood"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn free_turns_are_taken_at_once_up_to_the_slots() {
        let turns = FairTurns::new(2, 100);
        let one = turns.take("a").await.expect("free");
        let two = turns.take("b").await.expect("free");
        assert!(!immediate(&turns, "c").await, "a third turn with two slots");
        drop(one);
        assert!(immediate(&turns, "c").await);
        drop(two);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_with_too_many_waiting_is_refused_and_others_are_not() {
        let turns = Arc::new(FairTurns::new(1, 2));
        let busy = turns.take("x").await.expect("free");
        let mut served = spawn_requests(&turns, &["flood", "flood"]);
        tokio::task::yield_now().await;
        assert_eq!(turns.now_or_queue("flood").err(), Some(Crowded));
        assert!(turns.now_or_queue("other").is_ok());
        drop(busy);
        // The queued "other" receiver above was dropped: it is skipped.
        assert_eq!(served.recv().await, Some("flood"));
        assert_eq!(served.recv().await, Some("flood"));
        assert!(immediate(&turns, "flood").await, "the queue drained");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_waiter_does_not_keep_a_turn() {
        let turns = Arc::new(FairTurns::new(1, 100));
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
        assert!(
            immediate(&turns, "b").await,
            "the cancelled waiter kept the turn"
        );

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
        assert!(
            immediate(&turns, "b").await,
            "the handed-over turn was lost"
        );
    }
}
