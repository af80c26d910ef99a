//! Time order from a nearly time-ordered stream of events: a recording is written in
//! ring-buffer order, where events of different CPUs may swap places. A bounded window of
//! events is held back and released oldest first.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
};

use crate::event::Event;

/// Events held back (about 2 MiB). Events of different CPUs swap places by a few events at
/// most; one that arrives more than this many events after a newer one is passed on where it
/// arrives, and counted.
pub const REORDER_EVENTS: usize = 8192;

/// Held events are released in (time, arrival) order: a stable sort within the window. Most
/// arrive in order and wait in a queue, in that order already; only those older than the
/// newest queued one go through a heap (time, arrival, slot) whose events live in slots, so
/// that neither moves events around.
pub struct Reorder {
    window: usize,
    /// In (time, arrival) order: each is at least as new as the one before.
    in_order: VecDeque<(u64, u64, Event)>,
    heap: BinaryHeap<Reverse<(u64, u64, usize)>>,
    slots: Vec<Option<Event>>,
    free: Vec<usize>,
    seq: u64,
    released_ns: u64,
    late: u64,
}

impl Reorder {
    pub fn new(window: usize) -> Self {
        Reorder {
            window: window.max(1),
            in_order: VecDeque::new(),
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            seq: 0,
            released_ns: 0,
            late: 0,
        }
    }

    /// Takes one event; hands back the oldest one held once the window is full.
    pub fn push(&mut self, event: Event) -> Option<Event> {
        self.seq += 1;
        let ts = event.ts_ns;
        if self.in_order.back().is_none_or(|b| b.0 <= ts) {
            self.in_order.push_back((ts, self.seq, event));
        } else {
            let slot = match self.free.pop() {
                Some(i) => {
                    self.slots[i] = Some(event);
                    i
                }
                None => {
                    self.slots.push(Some(event));
                    self.slots.len() - 1
                }
            };
            self.heap.push(Reverse((ts, self.seq, slot)));
        }
        if self.in_order.len() + self.heap.len() > self.window {
            self.pop()
        } else {
            None
        }
    }

    /// The oldest event held: the queue's first or the heap's top.
    fn pop(&mut self) -> Option<Event> {
        let queued = self.in_order.front().map(|q| (q.0, q.1));
        let heaped = self.heap.peek().map(|Reverse((ts, seq, _))| (*ts, *seq));
        let (ts, event) = match (queued, heaped) {
            (Some(q), Some(h)) if h < q => self.pop_heap()?,
            (Some(_), _) => self.in_order.pop_front().map(|(ts, _, e)| (ts, e))?,
            (None, Some(_)) => self.pop_heap()?,
            (None, None) => return None,
        };
        if ts < self.released_ns {
            self.late += 1;
        }
        self.released_ns = self.released_ns.max(ts);
        Some(event)
    }

    fn pop_heap(&mut self) -> Option<(u64, Event)> {
        let Reverse((ts, _, slot)) = self.heap.pop()?;
        self.free.push(slot);
        Some((ts, self.slots[slot].take()?))
    }

    /// The events still held, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(|| self.pop())
    }

    /// Events released after a newer one: out of order by more than the window.
    pub fn late(&self) -> u64 {
        self.late
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Op, Outcome, Proto, test_event};

    fn ev(ts: u64) -> Event {
        test_event(Op::Bind, Proto::Udp, 40000, None, Outcome::Ok, ts)
    }

    #[test]
    fn swaps_within_the_window_are_undone_and_later_ones_counted() {
        let mut r = Reorder::new(2);
        let mut out = Vec::new();
        for ts in [2, 1, 3, 5, 4, 6, 0] {
            out.extend(r.push(ev(ts)).map(|e| e.ts_ns));
        }
        out.extend(r.drain().map(|e| e.ts_ns));
        // 0 came 6 events after newer ones, beyond a window of 2.
        assert_eq!(out, vec![1, 2, 3, 4, 0, 5, 6]);
        assert_eq!(r.late(), 1);
    }

    /// The queue and the heap release what one heap of every held event releases: the
    /// oldest, ties in arrival order, with the same count of late ones.
    #[test]
    fn releases_what_one_heap_would() {
        use rand::{Rng, SeedableRng, rngs::SmallRng};
        let mut rng = SmallRng::seed_from_u64(7);
        for window in [1, 3, 16] {
            for swaps in [0, 5, 50, 100] {
                let times: Vec<u64> = (0..2000u64)
                    .map(|i| {
                        if rng.random_range(0..100) < swaps {
                            i.saturating_sub(rng.random_range(0..40))
                        } else {
                            i / 3
                        }
                    })
                    .collect();
                let mut r = Reorder::new(window);
                let mut got = Vec::new();
                for (i, &ts) in times.iter().enumerate() {
                    let mut e = ev(ts);
                    e.pid = i as u32;
                    got.extend(r.push(e).map(|e| e.pid));
                }
                got.extend(r.drain().map(|e| e.pid));
                // The model: every held event in one list, the oldest (time, arrival) out.
                let (mut held, mut want, mut released, mut late) = (Vec::new(), Vec::new(), 0, 0);
                let mut release = |held: &mut Vec<(u64, usize)>| {
                    let (at, _) = held.iter().enumerate().min_by_key(|(_, h)| **h).unwrap();
                    let (ts, i) = held.remove(at);
                    late += u64::from(ts < released);
                    released = released.max(ts);
                    want.push(i as u32);
                };
                for (i, &ts) in times.iter().enumerate() {
                    held.push((ts, i));
                    if held.len() > window {
                        release(&mut held);
                    }
                }
                while !held.is_empty() {
                    release(&mut held);
                }
                assert_eq!(got, want, "window {window}, swaps {swaps}");
                assert_eq!(r.late(), late, "window {window}, swaps {swaps}");
            }
        }
    }
}
