//! The HTTP server's connection table: a fixed number of connections, each with a deadline for
//! its next request. When the table is full a new connection evicts the one that has waited
//! longest for a request, so idle or slow clients can hold a slot only until a well-behaved
//! scraper (which sends its request at once) needs it.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

/// How many connections, and how long each may wait in each phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub capacity: usize,
    /// From accept (TLS handshake included) to a connection's first complete request head.
    pub first_request: Duration,
    /// From a response to the next complete request head on a kept-alive connection.
    pub keep_alive: Duration,
    /// From a request head to its response (basic auth may queue for a bcrypt check).
    pub serving: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            capacity: 64,
            // A scraper sends its request right after connecting; only a slow client needs more.
            first_request: Duration::from_secs(3),
            // Longer than common scrape intervals' reuse of a connection needs is not useful:
            // Prometheus reconnects cheaply, and an evicted idle connection is re-dialled.
            keep_alive: Duration::from_secs(60),
            serving: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Eviction order: never-served connections go first, then idle ones, then busy ones.
    FirstRequest,
    KeepAlive,
    Serving,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    since: Instant,
}

/// One connection's entry; dropping it frees the slot.
#[derive(Debug)]
pub struct Conn {
    state: Mutex<State>,
    evicted: Notify,
    table: Arc<Table>,
}

#[derive(Debug)]
pub struct Table {
    limits: Limits,
    conns: Mutex<Vec<Arc<Conn>>>,
}

/// The table itself is the only lock; a poisoned one still holds consistent entries.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Table {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            conns: Mutex::new(Vec::with_capacity(limits.capacity)),
        })
    }

    /// Takes a slot for a new connection, evicting the longest-waiting one when full.
    pub fn admit(self: &Arc<Self>) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            state: Mutex::new(State {
                phase: Phase::FirstRequest,
                since: Instant::now(),
            }),
            evicted: Notify::new(),
            table: self.clone(),
        });
        let mut conns = lock(&self.conns);
        if conns.len() >= self.limits.capacity.max(1) {
            let victim = conns
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| {
                    let s = lock(&c.state);
                    (s.phase, s.since)
                })
                .map(|(i, _)| i);
            if let Some(i) = victim {
                // notify_one keeps a permit when the task is not waiting yet.
                conns.swap_remove(i).evicted.notify_one();
            }
        }
        conns.push(conn.clone());
        conn
    }

    pub fn len(&self) -> usize {
        lock(&self.conns).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Conn {
    /// A request head has arrived.
    pub fn serving(&self) {
        self.enter(Phase::Serving);
    }

    /// Its response is written; the connection waits for the next request.
    pub fn idle(&self) {
        self.enter(Phase::KeepAlive);
    }

    fn enter(&self, phase: Phase) {
        *lock(&self.state) = State {
            phase,
            since: Instant::now(),
        };
    }

    /// When the current phase runs out.
    pub fn deadline(&self) -> Instant {
        let s = lock(&self.state);
        let l = &self.table.limits;
        s.since
            + match s.phase {
                Phase::FirstRequest => l.first_request,
                Phase::KeepAlive => l.keep_alive,
                Phase::Serving => l.serving,
            }
    }

    /// Resolves when a newer connection took this one's slot.
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }

    /// Runs `conn` until it finishes, its phase's deadline passes or it is evicted; then frees
    /// the slot.
    pub async fn supervise(self: Arc<Self>, conn: impl Future<Output = ()>) {
        tokio::pin!(conn);
        loop {
            let deadline = self.deadline();
            tokio::select! {
                _ = &mut conn => break,
                _ = self.evicted() => break,
                // The phase may have moved on while sleeping: look again.
                _ = tokio::time::sleep_until(deadline) => if self.deadline() <= Instant::now() {
                    break;
                },
            }
        }
        self.release();
    }

    fn release(self: &Arc<Self>) {
        lock(&self.table.conns).retain(|c| !Arc::ptr_eq(c, self));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(capacity: usize) -> Arc<Table> {
        Table::new(Limits {
            capacity,
            ..Limits::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_evicts_the_longest_waiting_unserved_connection() {
        let t = table(3);
        let served = t.admit();
        served.serving();
        served.idle();
        tokio::time::advance(Duration::from_secs(1)).await;
        let old = t.admit();
        tokio::time::advance(Duration::from_secs(1)).await;
        let new = t.admit();
        let newest = t.admit();
        assert_eq!(t.len(), 3);
        // `old` never sent a request and waited longest: it goes before the kept-alive one.
        tokio::time::timeout(Duration::from_millis(1), old.evicted())
            .await
            .expect("the oldest unserved connection is evicted");
        for keep in [&served, &new, &newest] {
            assert!(
                tokio::time::timeout(Duration::from_millis(1), keep.evicted())
                    .await
                    .is_err()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_ends_at_its_phase_deadline_and_frees_its_slot() {
        let t = table(2);
        let slow = t.admit();
        let l = Limits::default();
        let started = Instant::now();
        slow.clone().supervise(std::future::pending()).await;
        assert_eq!(started.elapsed(), l.first_request);
        assert!(t.is_empty());

        let kept = t.admit();
        kept.serving();
        kept.idle();
        let started = Instant::now();
        kept.clone().supervise(std::future::pending()).await;
        assert_eq!(started.elapsed(), l.keep_alive);
        assert!(t.is_empty());
    }
}
