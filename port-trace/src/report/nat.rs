//! NAT port spaces in a summary: per (namespace, protocol, translated source address,
//! destination), the ports NAT chose, their pattern against the NAT range, the peak
//! occupancy the watcher saw (its pressure) and the failures charged to it. Pure.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write,
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use crate::{
    analysis::{Pattern, classify},
    event::{Event, NatRange, Op, Proto},
};

/// Ports kept per space for the pattern: enough to classify, bounded.
const MAX_PORTS_PER_SPACE: usize = 10_000;
/// Spaces followed; failures without a destination go to a space with no destination.
const MAX_SPACES: usize = 100_000;

/// Which NAT port space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NatSpace {
    pub netns: u32,
    pub proto: Proto,
    pub translated: IpAddr,
    /// None for failures conntrack could not tie to one destination.
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
}

/// One NAT port space's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NatSpaceSummary {
    pub space: NatSpace,
    pub allocations: u64,
    pub failures: u64,
    pub pattern: Pattern,
    pub reason: String,
    /// Most live translations seen at once.
    pub peak_in_use: u32,
    pub range: NatRange,
    /// `peak_in_use / range size`.
    pub pressure: f64,
}

#[derive(Debug, Default)]
struct Space {
    ports: Vec<u16>,
    allocations: u64,
    failures: u64,
    peak: u32,
    range: Option<NatRange>,
}

/// Collects NAT events, in time order.
#[derive(Debug, Default)]
pub struct NatSummarizer {
    spaces: HashMap<NatSpace, Space>,
}

impl NatSummarizer {
    /// Takes a NAT event; other events are ignored.
    pub fn push(&mut self, e: &Event) {
        let (Op::Nat, Some(info)) = (e.op, &e.nat) else {
            return;
        };
        let key = NatSpace {
            netns: e.netns,
            proto: e.proto,
            translated: e.saddr,
            daddr: e.daddr,
            dport: e.dport,
        };
        if !self.spaces.contains_key(&key) && self.spaces.len() >= MAX_SPACES {
            return;
        }
        let s = self.spaces.entry(key).or_default();
        s.range = Some(info.range);
        s.peak = s.peak.max(info.in_use);
        if e.is_ok() {
            s.allocations += 1;
            if s.ports.len() < MAX_PORTS_PER_SPACE {
                s.ports.push(e.port);
            }
        } else {
            s.failures += 1;
        }
    }

    /// The rows, most pressing first (pressure, then failures).
    pub fn finish(self) -> Vec<NatSpaceSummary> {
        let mut rows: Vec<NatSpaceSummary> = self
            .spaces
            .into_iter()
            .filter_map(|(space, s)| {
                let range = s.range?;
                let a = classify(&s.ports, (range.low, range.high));
                Some(NatSpaceSummary {
                    space,
                    allocations: s.allocations,
                    failures: s.failures,
                    pattern: a.pattern,
                    reason: a.reason,
                    peak_in_use: s.peak,
                    range,
                    pressure: f64::from(s.peak) / f64::from(range.size()),
                })
            })
            .collect();
        rows.sort_by(|a, b| {
            b.pressure
                .total_cmp(&a.pressure)
                .then(b.failures.cmp(&a.failures))
                .then(a.space.cmp(&b.space))
        });
        rows
    }
}

/// The NAT section of the table (empty without NAT events).
pub fn render(rows: &[NatSpaceSummary]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nNAT PORT SPACES (translated source -> destination)\n{:<50} {:>10} {:>6} {:>6} {:<17} {:>9} {:>8} RANGE",
        "SPACE", "NETNS", "N", "FAILED", "PATTERN", "PEAK", "PRESSURE"
    );
    let mut sources: BTreeMap<&str, ()> = BTreeMap::new();
    for r in rows {
        let dest = match r.space.daddr.zip(r.space.dport) {
            Some((a, p)) => format!("{a}:{p}"),
            None => "(destination unknown)".into(),
        };
        let source = match r.range.source {
            crate::event::NatRangeSource::Configured => "configured",
            crate::event::NatRangeSource::KernelDefault => "kernel default",
        };
        sources.insert(source, ());
        let _ = writeln!(
            out,
            "{:<50} {:>10} {:>6} {:>6} {:<17} {:>9} {:>7.1}% {}-{} ({source})",
            format!("{} {} -> {dest}", r.space.proto, r.space.translated),
            r.space.netns,
            r.allocations,
            r.failures,
            r.pattern.as_str(),
            format!("{}/{}", r.peak_in_use, r.range.size()),
            r.pressure * 100.0,
            r.range.low,
            r.range.high,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Errno, NatInfo, NatRangeSource, Outcome, test_event};
    use std::net::Ipv4Addr;

    fn nat_event(port: u16, in_use: u32, ok: bool) -> Event {
        let dest = Some((Ipv4Addr::new(198, 51, 100, 2), 80));
        let result = if ok {
            Outcome::Ok
        } else {
            Outcome::Err(Errno(libc::EADDRNOTAVAIL))
        };
        let mut e = test_event(Op::Nat, Proto::Tcp, port, dest, result, u64::from(port));
        e.nat = Some(NatInfo {
            orig_saddr: None,
            orig_sport: None,
            orig_daddr: None,
            orig_dport: None,
            in_use,
            range: NatRange {
                low: 40000,
                high: 40009,
                source: NatRangeSource::Configured,
            },
        });
        e
    }

    #[test]
    fn a_full_space_has_full_pressure_and_its_failures() {
        let mut s = NatSummarizer::default();
        for (i, p) in [
            40003, 40007, 40001, 40009, 40000, 40005, 40002, 40008, 40004, 40006,
        ]
        .into_iter()
        .enumerate()
        {
            s.push(&nat_event(p, i as u32 + 1, true));
        }
        s.push(&nat_event(0, 10, false));
        let mut other = test_event(Op::Connect, Proto::Tcp, 1, None, Outcome::Ok, 0);
        other.nat = None;
        s.push(&other);
        let rows = s.finish();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].allocations, 10);
        assert_eq!(rows[0].failures, 1);
        assert_eq!(rows[0].peak_in_use, 10);
        assert!((rows[0].pressure - 1.0).abs() < 1e-9);
        assert!(render(&rows).contains("40000-40009 (configured)"));
    }
}
