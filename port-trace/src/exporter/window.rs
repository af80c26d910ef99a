//! The recent events a refresh analyses, kept as what the analysis needs of each (~80 bytes,
//! not the event with its command name) in chunks that a refresh shares instead of copying:
//! memory is the window once, plus what the aggregator drops while a refresh still reads it.

use std::{collections::VecDeque, sync::Arc};

use crate::{analysis::StreamKey, event::Event};

/// Events per shared chunk (a few hundred KiB).
const CHUNK: usize = 4096;

/// What the window keeps of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub ts_ns: u64,
    pub key: StreamKey,
    pub port: u16,
    pub ok: bool,
}

impl Seen {
    pub fn of(e: &Event) -> Self {
        Seen {
            ts_ns: e.ts_ns,
            key: StreamKey::of(e),
            port: e.port,
            ok: e.is_ok(),
        }
    }
}

/// The last `cap` events, oldest first.
pub struct Window {
    cap: usize,
    /// Full chunks, oldest first; the first `skip` events of the first one have left.
    chunks: VecDeque<Arc<[Seen]>>,
    skip: usize,
    tail: Vec<Seen>,
    len: usize,
}

/// A refresh's view of the window: the chunks it shares, and a copy of the last partial one.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    chunks: Vec<Arc<[Seen]>>,
    skip: usize,
    tail: Vec<Seen>,
}

impl Snapshot {
    pub fn iter(&self) -> impl Iterator<Item = &Seen> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .skip(self.skip)
            .chain(&self.tail)
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum::<usize>() - self.skip + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Window {
    pub fn new(cap: usize) -> Self {
        Window {
            cap: cap.max(1),
            chunks: VecDeque::new(),
            skip: 0,
            tail: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap.max(1);
        self.trim();
    }

    pub fn push(&mut self, s: Seen) {
        if self.tail.capacity() == 0 {
            self.tail.reserve_exact(CHUNK.min(self.cap));
        }
        self.tail.push(s);
        self.len += 1;
        if self.tail.len() >= CHUNK {
            self.chunks
                .push_back(Arc::from(std::mem::take(&mut self.tail)));
        }
        self.trim();
    }

    /// Drops the oldest events beyond `cap`.
    fn trim(&mut self) {
        while self.len > self.cap {
            let excess = self.len - self.cap;
            match self.chunks.front() {
                Some(front) => {
                    let left = front.len() - self.skip;
                    if excess >= left {
                        self.chunks.pop_front();
                        self.skip = 0;
                        self.len -= left;
                    } else {
                        self.skip += excess;
                        self.len -= excess;
                    }
                }
                None => {
                    self.tail.drain(..excess);
                    self.len -= excess;
                }
            }
        }
    }

    /// The newest event's time.
    pub fn newest_ns(&self) -> Option<u64> {
        self.tail
            .last()
            .or_else(|| self.chunks.back().and_then(|c| c.last()))
            .map(|s| s.ts_ns)
    }

    /// Shares the full chunks, copies the partial one.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            chunks: self.chunks.iter().cloned().collect(),
            skip: self.skip,
            tail: self.tail.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Op, Outcome, Proto, test_event};

    fn seen(ts: u64) -> Seen {
        Seen::of(&test_event(
            Op::Bind,
            Proto::Udp,
            40000,
            None,
            Outcome::Ok,
            ts,
        ))
    }

    #[test]
    fn keeps_the_last_cap_events_in_order() {
        let mut w = Window::new(10_000);
        for ts in 0..25_000 {
            w.push(seen(ts));
        }
        let snap = w.snapshot();
        assert_eq!(w.len(), 10_000);
        assert_eq!(snap.len(), 10_000);
        let ts: Vec<u64> = snap.iter().map(|s| s.ts_ns).collect();
        assert_eq!(ts, (15_000..25_000).collect::<Vec<_>>());
        assert_eq!(w.newest_ns(), Some(24_999));
        // A snapshot keeps what the window drops meanwhile.
        for ts in 25_000..40_000 {
            w.push(seen(ts));
        }
        assert_eq!(snap.iter().next().map(|s| s.ts_ns), Some(15_000));
        w.set_cap(3);
        let ts: Vec<u64> = w.snapshot().iter().map(|s| s.ts_ns).collect();
        assert_eq!(ts, vec![39_997, 39_998, 39_999]);
    }

    #[test]
    fn a_snapshot_shares_the_full_chunks() {
        let mut w = Window::new(100_000);
        for ts in 0..100_000 {
            w.push(seen(ts));
        }
        let snap = w.snapshot();
        assert_eq!(snap.chunks.len(), 100_000 / CHUNK);
        assert!(snap.chunks.iter().all(|c| Arc::strong_count(c) == 2));
        assert_eq!(snap.tail.len(), 100_000 % CHUNK);
    }
}
