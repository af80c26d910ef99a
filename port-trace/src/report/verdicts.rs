//! Every stream's verdict from events fed one at a time in time order: connect() streams through
//! one set of [`Sequences`] (one range, one sequence across destinations), the others each
//! through their own [`Classifier`] on their namespace's range. State per stream, never per
//! event, in one table: an event looks its stream up once, and the caller's own per-stream
//! state (`X`, e.g. [`super::Summarizer`]'s) lives in the same entry. `serve`'s pattern gauges
//! need only the verdicts; [`super::Summarizer`] adds the rest of the summary.

use std::collections::HashMap;

use crate::{
    analysis::{
        Classifier, GlobalAnalysis, Sequences, StreamAnalysis, StreamKey, StreamTable, Track,
        classify_local, local_verdict,
    },
    event::Op,
    netns::UsableRange,
};

/// One stream's verdict state and the caller's.
struct Stream<X> {
    state: State,
    extra: X,
}

enum State {
    /// A connect() stream (empty while it has only failed: no verdict of its own).
    Connect(Track),
    /// Boxed: few streams (one per namespace, protocol and family), and a classifier is larger
    /// than a connect() stream's entry.
    Local(Box<Classifier>),
}

pub struct Verdicts<X = ()> {
    ranges: HashMap<u32, UsableRange>,
    default_range: UsableRange,
    connects: Sequences,
    streams: StreamTable<Stream<X>>,
}

impl Verdicts {
    /// See [`Verdicts::with_extra`].
    pub fn new(
        ranges: HashMap<u32, UsableRange>,
        default_range: UsableRange,
        connect_netns: Option<u32>,
    ) -> Self {
        Self::with_extra(ranges, default_range, connect_netns)
    }

    /// Calls `f` with every stream's key, successful allocations, verdict and range, in key
    /// order and one at a time, dropping each stream's state as it goes; returns the verdict
    /// on the connect() sequence across destinations.
    pub fn finish(
        self,
        mut f: impl FnMut(&StreamKey, usize, StreamAnalysis, &UsableRange),
    ) -> GlobalAnalysis {
        self.finish_with(|key, ports, a, range, ()| f(key, ports, a, range))
    }
}

impl<X: Default> Verdicts<X> {
    /// `ranges` by namespace, `default_range` for the others. Every connect() stream is
    /// classified on the range of `connect_netns`, the namespace of the first successful
    /// connect() (in arrival order): the sequence across destinations needs one range.
    pub fn with_extra(
        ranges: HashMap<u32, UsableRange>,
        default_range: UsableRange,
        connect_netns: Option<u32>,
    ) -> Self {
        let r = connect_netns
            .and_then(|n| ranges.get(&n))
            .unwrap_or(&default_range);
        let connects = Sequences::new((r.low, r.high));
        Verdicts {
            ranges,
            default_range,
            connects,
            streams: StreamTable::default(),
        }
    }

    /// The range of a namespace.
    pub fn range(&self, netns: u32) -> &UsableRange {
        self.ranges.get(&netns).unwrap_or(&self.default_range)
    }

    /// Streams seen so far.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// One event of stream `key`: its port when `ok`. Returns the caller's state of the stream.
    pub fn push(&mut self, key: &StreamKey, port: u16, ok: bool) -> &mut X {
        let i = match self.streams.get_index_of(key) {
            Some(i) => i,
            None => {
                let state = if key.op == Op::Connect {
                    State::Connect(Track::default())
                } else {
                    let r = self.range(key.netns);
                    State::Local(Box::new(Classifier::new((r.low, r.high))))
                };
                let extra = X::default();
                self.streams
                    .insert_full(key.clone(), Stream { state, extra })
                    .0
            }
        };
        let Some((key, s)) = self.streams.get_index_mut(i) else {
            unreachable!("index {i} was just found or inserted")
        };
        if ok {
            match &mut s.state {
                State::Connect(t) => self.connects.push(key, t, port),
                State::Local(c) => {
                    c.push(port);
                }
            }
        }
        &mut s.extra
    }

    /// Every stream's key and the caller's state, in no order.
    pub fn extras(&self) -> impl Iterator<Item = (&StreamKey, &X)> {
        self.streams.iter().map(|(k, s)| (k, &s.extra))
    }

    /// [`Verdicts::finish`], also handing over the caller's state of each stream.
    pub fn finish_with(
        self,
        mut f: impl FnMut(&StreamKey, usize, StreamAnalysis, &UsableRange, X),
    ) -> GlobalAnalysis {
        let Verdicts {
            ranges,
            default_range,
            connects,
            mut streams,
        } = self;
        streams.sort_unstable_keys();
        let global = connects.global(streams.iter().filter_map(|(k, s)| match &s.state {
            State::Connect(t) => Some((k, t)),
            State::Local(_) => None,
        }));
        for (key, s) in streams {
            let range = ranges.get(&key.netns).unwrap_or(&default_range);
            let (ports, a) = match s.state {
                State::Local(c) => (c.ports(), local_verdict(c.finish())),
                State::Connect(t) => match connects.verdict(&key, &t, &global) {
                    Some(a) => (t.ports(), a),
                    None => (0, classify_local(&[], (range.low, range.high))),
                },
            };
            f(&key, ports, a, range, s.extra);
        }
        global
    }
}
