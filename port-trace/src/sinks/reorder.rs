//! Time order from a nearly time-ordered stream of events: a recording is written in
//! ring-buffer order, where events of different CPUs may swap places. A bounded window of
//! events is held back and released oldest first.

use std::{cmp::Reverse, collections::BinaryHeap};

use crate::event::Event;

/// Events held back (about 2 MiB). Events of different CPUs swap places by a few events at
/// most; one that arrives more than this many events after a newer one is passed on where it
/// arrives, and counted.
pub const REORDER_EVENTS: usize = 8192;

/// Held events live in slots; the heap orders (time, arrival, slot): a stable sort within the
/// window, without moving or allocating events.
pub struct Reorder {
    window: usize,
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
        if self.heap.len() > self.window {
            self.pop()
        } else {
            None
        }
    }

    fn pop(&mut self) -> Option<Event> {
        let Reverse((ts, _, slot)) = self.heap.pop()?;
        if ts < self.released_ns {
            self.late += 1;
        }
        self.released_ns = self.released_ns.max(ts);
        self.free.push(slot);
        self.slots[slot].take()
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
}
