//! Pure analysis of port-allocation patterns: plain data in, plain data out.
//!
//! Given the ports the kernel picked, grouped into streams (one destination
//! for connect(); one namespace/protocol/family for bind/listen/autobind),
//! answer "sequential or random?" and then "which counter?":
//!
//! * `pattern`: `sequential` (a counter: steps small and forward), `random`
//!   (no structure: RFC 6056 algorithms 1 and 2, Linux bind(0), UDP) or
//!   `insufficient-data` (too few samples for either);
//! * `counter_scope`, for `sequential` only: `global` (one counter shared by
//!   all destinations: RFC 6056 algorithms 3 and 5, Linux connect() before
//!   5.12), `per-destination` (algorithm 4, Linux connect() since 5.12,
//!   steps of 2..=16, re-salted every 10 s since 5.18) or `undetermined`
//!   (e.g. one destination).
//!
//! The statistics are in [`stats`], the decision rules and thresholds in
//! [`pattern`] (see its module docs). No I/O, no eBPF.

pub mod pattern;
pub mod stats;

#[cfg(test)]
pub mod simulate;
#[cfg(test)]
mod tests;

pub use pattern::{
    Classifier, CounterScope, GlobalAnalysis, Parity, Pattern, StreamAnalysis, StreamTests,
    classify,
};

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;

use pattern::{Sequence, StreamTrack, global_verdict};

use crate::event::{Event, Family, Op, Proto};

/// Per-stream state: keys come from recordings, so the hasher is seeded per process; foldhash
/// because hashing a key per event is a measurable share of `analyze`.
pub type StreamMap<V> = HashMap<StreamKey, V, foldhash::fast::RandomState>;

/// Usable port range, inclusive: `(low, high)` as in
/// `net.ipv4.ip_local_port_range`.
pub type PortRange = (u16, u16);

/// Linux's default `ip_local_port_range`.
pub const DEFAULT_RANGE: PortRange = (32768, 60999);

/// Identifies a stream of port choices. For connect() it names the
/// destination; for bind/listen/autobind the destination fields are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamKey {
    pub op: Op,
    pub netns: u32,
    pub proto: Proto,
    pub family: Family,
    /// Local address (part of the kernel's per-destination hash for connect).
    pub saddr: Option<IpAddr>,
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
}

impl StreamKey {
    /// A connect() stream to one destination.
    pub fn connect(
        netns: u32,
        proto: Proto,
        family: Family,
        saddr: Option<IpAddr>,
        daddr: IpAddr,
        dport: u16,
    ) -> Self {
        StreamKey {
            op: Op::Connect,
            netns,
            proto,
            family,
            saddr,
            daddr: Some(daddr),
            dport: Some(dport),
        }
    }

    /// A stream without destination (bind/listen/autobind).
    pub fn local(op: Op, netns: u32, proto: Proto, family: Family) -> Self {
        StreamKey {
            op,
            netns,
            proto,
            family,
            saddr: None,
            daddr: None,
            dport: None,
        }
    }

    /// The stream an event belongs to: one per destination for connect() (keyed by the
    /// destination only, since a failed connect has no local address), one per namespace,
    /// protocol and family for bind/listen/autobind.
    ///
    /// An IPv4-mapped IPv6 destination (`::ffff:a.b.c.d` from an AF_INET6 socket) is the IPv4
    /// destination: the kernel connects it through the IPv4 path, with the IPv4 port space
    /// and that destination's counter, so it is one stream with family `ipv4`.
    pub fn of(e: &Event) -> Self {
        match (e.op, e.canonical_destination()) {
            (Op::Connect, Some((daddr, dport))) => {
                let family = match daddr {
                    IpAddr::V4(_) => Family::Inet,
                    IpAddr::V6(_) => Family::Inet6,
                };
                Self::connect(e.netns, e.proto, family, None, daddr, dport)
            }
            _ => Self::local(e.op, e.netns, e.proto, e.family),
        }
    }

    /// True when the stream names a destination (connect()).
    pub fn has_destination(&self) -> bool {
        self.daddr.is_some() || self.dport.is_some()
    }
}

/// One port the kernel picked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub ts_ns: u64,
    pub port: u16,
    pub key: StreamKey,
}

/// The verdict for one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    pub key: StreamKey,
    pub analysis: StreamAnalysis,
}

/// Everything [`analyze`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub range: PortRange,
    /// One entry per stream key, in key order.
    pub streams: Vec<StreamReport>,
    pub global: GlobalAnalysis,
}

/// Classifies a stream without destination (bind/listen/autobind): a counter found there is
/// the stream's one counter, scope `global`.
pub fn classify_local(ports: &[u16], range: PortRange) -> StreamAnalysis {
    local_verdict(classify(ports, range))
}

/// A stream without destination's verdict from its own classification: a counter there is its
/// one counter, scope `global`.
pub fn local_verdict(mut a: StreamAnalysis) -> StreamAnalysis {
    if a.pattern == Pattern::Sequential {
        a.counter_scope = Some(CounterScope::Global);
    }
    a
}

/// Classifies the sequence across destinations (see [`pattern`]'s module docs): every sample
/// with a destination, or every sample when none has one, stably sorted by time.
pub fn classify_global(samples: &[Sample], range: PortRange) -> GlobalAnalysis {
    Analyzer::sorted(samples, range).global()
}

/// Classifies every stream and the global sequence.
///
/// Samples may come in any order; each stream is sorted by `ts_ns`. A
/// stream without destination keeps its own verdict ([`classify_local`]).
/// For connect streams:
///
/// * when the sequence across destinations is itself sequential
///   ([`GlobalAnalysis::single_sequence`], RFC 6056 algorithm 5), every
///   stream is `sequential` with scope `global`, whatever its own steps look
///   like (many destinations dilute them, and few samples are enough when
///   they sit on one staircase);
/// * otherwise a stream that is sequential-like on its own is `sequential`,
///   with the global verdict's scope when that is `sequential` too, else
///   `undetermined`;
/// * a stream that looks random on its own stays `random` unless the global
///   verdict is `sequential`: then the allocator has a counter the stream
///   does not show (a re-salted per-destination counter seen too rarely, or
///   a global counter diluted by other destinations) and the stream gets
///   `insufficient-data`;
/// * undecided streams stay `insufficient-data`.
pub fn analyze(samples: &[Sample], range: PortRange) -> Report {
    Analyzer::sorted(samples, range).finish()
}

/// A stream's state: most streams of a busy host (one per destination) see one port only,
/// kept as that port until a second one comes. `Empty` until its first port (a connect()
/// stream seen failing only).
#[derive(Debug, Clone, Default)]
enum TrackState {
    #[default]
    Empty,
    One {
        port: u16,
        position: Option<usize>,
    },
    More(Box<StreamTrack>),
}

/// One stream's state in the [`Sequences`] it is part of; the caller keeps it with the
/// stream's other state, so that an event looks its stream up once.
#[derive(Debug, Clone, Default)]
pub struct Track(TrackState);

impl Track {
    fn push(&mut self, port: u16, position: Option<usize>, range: PortRange) {
        match &mut self.0 {
            TrackState::More(t) => t.push(port, position),
            TrackState::Empty => self.0 = TrackState::One { port, position },
            TrackState::One {
                port: first,
                position: at,
            } => {
                let mut t = Box::new(StreamTrack::new(range));
                t.push(*first, *at);
                t.push(port, position);
                self.0 = TrackState::More(t);
            }
        }
    }

    /// The stream's full state (made on the spot for one port: no allocation); None before
    /// its first port.
    fn track(&self, range: PortRange) -> Option<std::borrow::Cow<'_, StreamTrack>> {
        match &self.0 {
            TrackState::Empty => None,
            TrackState::More(t) => Some(std::borrow::Cow::Borrowed(&**t)),
            TrackState::One { port, position } => {
                let mut t = StreamTrack::new(range);
                t.push(*port, *position);
                Some(std::borrow::Cow::Owned(t))
            }
        }
    }

    /// Ports pushed so far.
    pub fn ports(&self) -> usize {
        match &self.0 {
            TrackState::Empty => 0,
            TrackState::One { .. } => 1,
            TrackState::More(t) => t.classifier().ports(),
        }
    }
}

/// The time-ordered sequences across streams, fed one sample at a time; each stream's own
/// state is a [`Track`] the caller keeps. It keeps state per stream, not per sample: a
/// [`Classifier`] each (bounded by the number of distinct steps) and at most
/// [`pattern::MAX_PAIRS_PER_STREAM`] (gap, step) pairs each.
#[derive(Debug, Clone)]
pub struct Sequences {
    range: PortRange,
    /// The global sequence of the samples with a destination...
    with_destination: Sequence,
    /// ...and of those without, which stands in when no sample has a destination.
    without_destination: Sequence,
    any_destination: bool,
}

impl Sequences {
    pub fn new(range: PortRange) -> Self {
        Sequences {
            range,
            with_destination: Sequence::new(range),
            without_destination: Sequence::new(range),
            any_destination: false,
        }
    }

    /// Adds the next port the kernel picked for stream `key`, whose state is `track`.
    pub fn push(&mut self, key: &StreamKey, track: &mut Track, port: u16) {
        let has_destination = key.has_destination();
        self.any_destination |= has_destination;
        let seq = if has_destination {
            &mut self.with_destination
        } else {
            &mut self.without_destination
        };
        let position = seq.push(key, port);
        track.push(port, position, self.range);
    }

    /// The verdict on the global sequence so far, given every stream's state in key order.
    pub fn global<'a>(
        &self,
        streams: impl IntoIterator<Item = (&'a StreamKey, &'a Track)>,
    ) -> GlobalAnalysis {
        let kept = streams
            .into_iter()
            .filter(|(k, _)| !self.any_destination || k.has_destination())
            .filter_map(|(_, t)| t.track(self.range));
        let seq = if self.any_destination {
            &self.with_destination
        } else {
            &self.without_destination
        };
        global_verdict(seq, kept)
    }

    /// One stream's verdict given `global` (from [`Self::global`]); None before its first port.
    pub fn verdict(
        &self,
        key: &StreamKey,
        track: &Track,
        global: &GlobalAnalysis,
    ) -> Option<StreamAnalysis> {
        let a = track.track(self.range)?.classifier().finish();
        Some(if key.has_destination() {
            refine(a, global)
        } else {
            local_verdict(a)
        })
    }
}

/// Streams by key in one table: a hash index into a vector, sortable by key once at the end.
pub type StreamTable<V> = indexmap::IndexMap<StreamKey, V, foldhash::fast::RandomState>;

/// [`analyze`], fed one sample at a time in time order (ties: in arrival order); see
/// [`Sequences`] for what it keeps.
#[derive(Debug, Clone)]
pub struct Analyzer {
    streams: StreamTable<Track>,
    sequences: Sequences,
}

impl Analyzer {
    pub fn new(range: PortRange) -> Self {
        Analyzer {
            streams: StreamTable::default(),
            sequences: Sequences::new(range),
        }
    }

    /// Fed with `samples` in time order (a stable sort: ties keep their order).
    fn sorted(samples: &[Sample], range: PortRange) -> Self {
        let mut order: Vec<&Sample> = samples.iter().collect();
        order.sort_by_key(|s| s.ts_ns);
        let mut a = Analyzer::new(range);
        for s in order {
            a.push(&s.key, s.port);
        }
        a
    }

    /// Adds the next port the kernel picked for stream `key`.
    pub fn push(&mut self, key: &StreamKey, port: u16) {
        let track = match self.streams.get_mut(key) {
            Some(t) => t,
            None => self.streams.entry(key.clone()).or_default(),
        };
        self.sequences.push(key, track, port);
    }

    /// Streams so far, in key order.
    fn ordered(&self) -> Vec<(&StreamKey, &Track)> {
        let mut v: Vec<_> = self.streams.iter().collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// The verdict on the global sequence so far.
    pub fn global(&self) -> GlobalAnalysis {
        self.sequences.global(self.ordered())
    }

    /// Everything [`analyze`] reports.
    pub fn finish(&self) -> Report {
        let global = self.global();
        let streams = self
            .ordered()
            .into_iter()
            .filter_map(|(key, t)| {
                Some(StreamReport {
                    key: key.clone(),
                    analysis: self.sequences.verdict(key, t, &global)?,
                })
            })
            .collect();
        Report {
            range: self.sequences.range,
            streams,
            global,
        }
    }
}

/// A destination stream's verdict given the verdict across destinations (see [`analyze`]).
fn refine(mut a: StreamAnalysis, global: &GlobalAnalysis) -> StreamAnalysis {
    let global_sequential = global.pattern == Pattern::Sequential;
    if global.single_sequence && a.samples > 0 {
        a.pattern = Pattern::Sequential;
        a.counter_scope = Some(CounterScope::Global);
        a.reason = format!(
            "part of one sequence across destinations: {}; alone: {}",
            global.reason, a.reason
        );
    } else if a.local_pattern == Pattern::Sequential {
        a.counter_scope = Some(if global_sequential {
            global.counter_scope.unwrap_or(CounterScope::Undetermined)
        } else {
            CounterScope::Undetermined
        });
        a.reason = format!("{}; across destinations: {}", a.reason, global.reason);
    } else if a.pattern == Pattern::Random && global_sequential {
        a.pattern = Pattern::InsufficientData;
        a.reason = format!(
            "random on its own, but across destinations: {} ({})",
            global.pattern, global.reason
        );
    }
    if a.pattern != Pattern::Sequential {
        a.counter_scope = None;
    }
    a
}
