//! Pure analysis of port-allocation patterns: plain data in, plain data out.
//!
//! Given the ports the kernel picked, grouped into streams (one destination
//! for connect(); one namespace/protocol/family for bind/listen/autobind),
//! decide which RFC 6056 style of allocation produced them:
//!
//! * `sequential`: one counter shared by all destinations (RFC 6056
//!   algorithms 3 and 5; Linux connect() before 5.12);
//! * `per-destination-sequential`: a counter per destination (algorithm 4;
//!   Linux connect() since 5.12, steps of 2..=16, re-salted every 10 s since
//!   5.18);
//! * `random`: no structure (algorithms 1 and 2; Linux bind(0), UDP);
//! * `insufficient-data`: too few samples or the tests disagree.
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
    GlobalAnalysis, Parity, Pattern, StreamAnalysis, StreamTests, classify, classify_global,
};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::event::{Event, Family, Op, Proto};

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

/// Classifies every stream and the global sequence.
///
/// Samples may come in any order; each stream is sorted by `ts_ns`. A
/// stream without destination keeps its own verdict. For connect streams:
///
/// * when the sequence across destinations is itself sequential
///   ([`GlobalAnalysis::single_sequence`], RFC 6056 algorithm 5), every
///   stream with at least [`pattern::MIN_SAMPLES`] samples is `sequential`,
///   whatever its own steps look like (many destinations dilute them);
/// * otherwise a stream that is sequential-like on its own takes the global
///   verdict: `sequential` (one shared counter) or
///   `per-destination-sequential`; when the global verdict is anything else
///   the choice between the two cannot be made and the stream gets
///   `insufficient-data`;
/// * a stream that looks random on its own stays `random` only when the
///   global verdict is `random` too; otherwise the allocator has structure
///   the stream does not show (a re-salted per-destination counter seen
///   too rarely, or a global counter diluted by other destinations) and
///   the stream gets `insufficient-data`;
/// * undecided streams stay `insufficient-data`.
pub fn analyze(samples: &[Sample], range: PortRange) -> Report {
    let mut by_key: BTreeMap<&StreamKey, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_key.entry(&s.key).or_default().push(s);
    }
    let global = classify_global(samples, range);
    let streams = by_key
        .into_iter()
        .map(|(key, mut v)| {
            v.sort_by_key(|s| s.ts_ns);
            let ports: Vec<u16> = v.iter().map(|s| s.port).collect();
            let mut analysis = classify(&ports, range);
            if key.has_destination()
                && global.single_sequence
                && analysis.samples >= pattern::MIN_SAMPLES
            {
                analysis.pattern = Pattern::Sequential;
                analysis.reason = format!(
                    "part of one sequence across destinations: {}; alone: {}",
                    global.reason, analysis.reason
                );
            } else if key.has_destination() && analysis.local_pattern == Pattern::Sequential {
                analysis.pattern = match global.pattern {
                    Pattern::Sequential => Pattern::Sequential,
                    Pattern::PerDestinationSequential => Pattern::PerDestinationSequential,
                    _ => Pattern::InsufficientData,
                };
                analysis.reason = format!(
                    "{}; across destinations: {}",
                    analysis.reason, global.reason
                );
            }
            if key.has_destination()
                && analysis.pattern == Pattern::Random
                && global.pattern != Pattern::Random
            {
                analysis.pattern = Pattern::InsufficientData;
                analysis.reason = format!(
                    "random on its own, but across destinations: {} ({})",
                    global.pattern, global.reason
                );
            }
            StreamReport {
                key: key.clone(),
                analysis,
            }
        })
        .collect();
    Report {
        range,
        streams,
        global,
    }
}
