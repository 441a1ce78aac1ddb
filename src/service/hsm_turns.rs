//! HSM turns: the service's HSM batches are served **in turn between callers**, never first come
//! first served, so that a client with many large requests in flight cannot make a station wait
//! behind all of them.
//!
//! At most [`HsmTurns::capacity`] batches are at the HSM at once (by default the machine's
//! available parallelism: the in-process HSM's worker count, so its own FIFO queue stays empty).
//! A batch that finds no free turn waits in its caller's queue, and when a turn frees up it goes
//! to the next caller in a round robin of the callers with batches waiting:
//!
//! - **callers** are client identities (the certificate's identity URI): a client does not gain
//!   turns by opening more connections;
//! - within one identity, its **connections** take turns in the same way (one process's bulk
//!   connections do not starve its other connection);
//! - within one connection, batches go in arrival order.
//!
//! A station with one batch waiting therefore waits for at most one batch of every other caller
//! that has batches waiting, whatever their number. A batch is one card set or one PSAM set (at
//! most [`hsm_api::BATCH_ITEMS`] items), so one turn is bounded.
//!
//! The connection comes from the gRPC layer through [`on_connection`] (a task-local around the
//! request: the service's methods take only the identity); work without one (ceremonies,
//! in-process callers, tests) is the identity's own connection-less queue.
//!
//! A waiting batch whose request is cancelled (client gone, timeout) is passed over when its
//! turn comes; a turn granted to a request that is gone returns to the pool at once.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

tokio::task_local! {
    /// The client connection of the request being served.
    static CONNECTION: SocketAddr;
}

/// Runs `request` as a request of `connection` (the peer address of its TCP connection): its
/// HSM batches take their turn among that connection's.
pub async fn on_connection<F: Future>(connection: Option<SocketAddr>, request: F) -> F::Output {
    match connection {
        Some(addr) => CONNECTION.scope(addr, request).await,
        None => request.await,
    }
}

/// Who a batch is for: the caller's identity and, when known, its connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Caller {
    identity: String,
    connection: Option<SocketAddr>,
}

impl Caller {
    /// `identity` on the connection of the request being served, if any ([`on_connection`]).
    pub(crate) fn current(identity: String) -> Caller {
        Caller {
            identity,
            connection: CONNECTION.try_with(|addr| *addr).ok(),
        }
    }

    #[cfg(test)]
    pub(crate) fn on(identity: &str, connection: Option<SocketAddr>) -> Caller {
        Caller {
            identity: identity.to_owned(),
            connection,
        }
    }
}

/// The turns of the service's HSM batches (see the [module docs](self)).
#[derive(Debug, Clone)]
pub(crate) struct HsmTurns {
    queue: Arc<Mutex<Queue>>,
}

/// One turn at the HSM, given back when dropped.
pub(crate) struct Turn {
    /// None once disarmed (a turn that could not be handed over).
    queue: Option<Arc<Mutex<Queue>>>,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn").finish_non_exhaustive()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.free += 1;
            q.grant(&queue);
        }
    }
}

/// A batch's place: its turn at once, or a wait for it.
#[derive(Debug)]
pub(crate) enum Ticket {
    Now(Turn),
    Waiting(oneshot::Receiver<Turn>),
}

impl Ticket {
    /// The turn, once it is this batch's. None only if the queue is gone (never while the
    /// service that made the ticket lives).
    pub(crate) async fn ready(self) -> Option<Turn> {
        match self {
            Ticket::Now(turn) => Some(turn),
            Ticket::Waiting(rx) => rx.await.ok(),
        }
    }

    /// The turn if it has come (for tests of the order of service).
    #[cfg(test)]
    pub(crate) fn try_take(&mut self) -> Option<Turn> {
        match std::mem::replace(self, Ticket::Waiting(oneshot::channel().1)) {
            Ticket::Now(turn) => Some(turn),
            Ticket::Waiting(mut rx) => match rx.try_recv() {
                Ok(turn) => Some(turn),
                Err(_) => {
                    *self = Ticket::Waiting(rx);
                    None
                }
            },
        }
    }
}

/// One identity's waiting batches, by connection.
#[derive(Debug, Default)]
struct Identity {
    /// Connections with batches waiting, in turn order.
    order: VecDeque<Option<SocketAddr>>,
    waiting: HashMap<Option<SocketAddr>, VecDeque<oneshot::Sender<Turn>>>,
}

#[derive(Debug)]
struct Queue {
    capacity: usize,
    /// Turns not in use (negative for a moment after the capacity was lowered).
    free: isize,
    /// Identities with batches waiting, in turn order.
    order: VecDeque<String>,
    waiting: HashMap<String, Identity>,
}

impl Queue {
    /// The next waiting batch in turn order, taken out of its queues.
    fn next_waiting(&mut self) -> Option<oneshot::Sender<Turn>> {
        let name = self.order.pop_front()?;
        let identity = self.waiting.get_mut(&name)?;
        let connection = identity.order.pop_front()?;
        let batches = identity.waiting.get_mut(&connection)?;
        let next = batches.pop_front();
        if batches.is_empty() {
            identity.waiting.remove(&connection);
        } else {
            identity.order.push_back(connection);
        }
        if identity.order.is_empty() {
            self.waiting.remove(&name);
        } else {
            self.order.push_back(name);
        }
        next
    }

    /// Hands free turns to waiting batches, in turn order.
    fn grant(&mut self, queue: &Arc<Mutex<Queue>>) {
        while self.free > 0 {
            let Some(waiter) = self.next_waiting() else {
                return;
            };
            self.free -= 1;
            let turn = Turn {
                queue: Some(Arc::clone(queue)),
            };
            if let Err(mut unwanted) = waiter.send(turn) {
                // Its request is gone: the turn goes to the next one (disarmed, so that its
                // drop does not take this lock again).
                unwanted.queue = None;
                self.free += 1;
            }
        }
    }
}

impl HsmTurns {
    /// At most `capacity` (at least 1) batches at the HSM at once.
    pub(crate) fn new(capacity: usize) -> HsmTurns {
        let capacity = capacity.max(1);
        HsmTurns {
            queue: Arc::new(Mutex::new(Queue {
                capacity,
                free: isize::try_from(capacity).unwrap_or(isize::MAX),
                order: VecDeque::new(),
                waiting: HashMap::new(),
            })),
        }
    }

    /// As many turns as the machine's available parallelism.
    pub(crate) fn for_this_machine() -> HsmTurns {
        HsmTurns::new(std::thread::available_parallelism().map_or(1, usize::from))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many batches may be at the HSM at once.
    pub(crate) fn capacity(&self) -> usize {
        self.lock().capacity
    }

    /// Sets how many batches may be at the HSM at once (at least 1); batches already there
    /// finish.
    pub(crate) fn set_capacity(&self, capacity: usize) {
        let capacity = capacity.max(1);
        let mut q = self.lock();
        let delta = capacity as isize - q.capacity as isize;
        q.capacity = capacity;
        q.free += delta;
        q.grant(&self.queue);
    }

    /// A place for one batch of `caller`, taken now (a turn at once when one is free and no one
    /// waits, else a place in `caller`'s queue).
    pub(crate) fn ticket(&self, caller: Caller) -> Ticket {
        let mut q = self.lock();
        if q.free > 0 && q.order.is_empty() {
            q.free -= 1;
            return Ticket::Now(Turn {
                queue: Some(Arc::clone(&self.queue)),
            });
        }
        let (tx, rx) = oneshot::channel();
        let q = &mut *q;
        let identity = match q.waiting.get_mut(&caller.identity) {
            Some(identity) => identity,
            None => {
                q.order.push_back(caller.identity.clone());
                q.waiting.entry(caller.identity).or_default()
            }
        };
        match identity.waiting.get_mut(&caller.connection) {
            Some(batches) => batches.push_back(tx),
            None => {
                identity.order.push_back(caller.connection);
                identity
                    .waiting
                    .insert(caller.connection, VecDeque::from([tx]));
            }
        }
        Ticket::Waiting(rx)
    }

    /// Waits for a turn of `caller`.
    pub(crate) async fn turn(&self, caller: Caller) -> Option<Turn> {
        self.ticket(caller).ready().await
    }

    /// Batches waiting for a turn.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.lock()
            .waiting
            .values()
            .flat_map(|identity| identity.waiting.values())
            .map(VecDeque::len)
            .sum()
    }
}

#[cfg(test)]
#[path = "tests/hsm_turns.rs"]
mod tests;
