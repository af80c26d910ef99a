//! NAT metrics for `serve` (docs/metrics.md, "NAT"): fed by the conntrack watchers' updates.
//! Every label set is bounded: `netns` by the namespaces watched, the space labels by the
//! [`crate::nat::watch::TOP_SPACES`] fullest spaces of each namespace, failures by [`MAX_FAILURE_SPACES`].

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::{
    event::{Event, NatRange, Op},
    nat::{
        NatUpdate,
        decode::{CpuStats, STAT_NAMES},
        occupancy::SpaceKey,
    },
    pressure::forecast::{Occupancy, RATE_WINDOW_NS, Recent, time_to_exhaustion},
};

/// Distinct (netns, proto, saddr, daddr, dport) label sets of the failure counter; later ones
/// are counted with `daddr="other"`.
pub const MAX_FAILURE_SPACES: usize = 100;
/// Spaces whose allocation rate is followed; the idlest is dropped past it.
const MAX_RATED_SPACES: usize = 16_384;
/// How long a NAT mapping outlives its connection: conntrack keeps a closed TCP connection in
/// TIME_WAIT for `nf_conntrack_tcp_timeout_time_wait` (120 s by default) before DESTROY.
pub const NAT_HOLD_SECS: f64 = 120.0;

const SPACE: &[&str] = &["netns", "proto", "saddr", "daddr", "dport"];

pub struct NatMetrics {
    pub allocations: IntCounterVec,
    pub failures: IntCounterVec,
    pub conntrack: IntCounterVec,
    pub range_ports: IntGaugeVec,
    pub in_use: IntGaugeVec,
    pub pressure: GaugeVec,
    pub exhaustion: GaugeVec,
    pub lost: IntGaugeVec,
}

impl NatMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let counters = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<_> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let int_gauges = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<_> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<_> {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(NatMetrics {
            allocations: counters(
                "port_trace_nat_allocations_total",
                "Source ports chosen by SNAT/MASQUERADE (conntrack NEW events).",
                &["netns", "proto"],
            )?,
            failures: counters(
                "port_trace_nat_failures_total",
                "New connections NAT could not map (conntrack insert_failed while the space was full).",
                SPACE,
            )?,
            conntrack: counters(
                "port_trace_conntrack_stat_total",
                "Conntrack's per-CPU statistics, summed over CPUs.",
                &["netns", "stat"],
            )?,
            range_ports: int_gauges(
                "port_trace_nat_range_ports",
                "Ports in the NAT range pressure is measured against.",
                &["netns", "source"],
            )?,
            in_use: int_gauges(
                "port_trace_nat_ports_in_use",
                "Top-N NAT port spaces: live translations from this source address to this destination.",
                SPACE,
            )?,
            pressure: gauges(
                "port_trace_nat_pressure_ratio",
                "Top-N NAT port spaces: live translations / NAT range size.",
                SPACE,
            )?,
            exhaustion: gauges(
                "port_trace_nat_exhaustion_seconds",
                "Top-N NAT port spaces: seconds until the space is full at the current NAT rate (+Inf: never, 0: full now).",
                SPACE,
            )?,
            lost: int_gauges(
                "port_trace_nat_events_lost",
                "Conntrack events lost (socket buffer overflow or a full queue) since the watcher started.",
                &["netns"],
            )?,
        })
    }
}

type Labels = [String; 5];

fn labels(netns: u32, k: &SpaceKey) -> Labels {
    [
        netns.to_string(),
        k.proto.name().to_string(),
        k.translated.to_string(),
        k.daddr.to_string(),
        k.dport.to_string(),
    ]
}

fn refs(l: &Labels) -> [&str; 5] {
    [&l[0], &l[1], &l[2], &l[3], &l[4]]
}

/// What the NAT metrics remember between updates.
pub struct NatAggregator {
    pub metrics: NatMetrics,
    stats: HashMap<u32, CpuStats>,
    shown: HashMap<u32, Vec<Labels>>,
    failure_spaces: HashSet<Labels>,
    rates: HashMap<(u32, SpaceKey), Recent>,
}

impl NatAggregator {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        Ok(NatAggregator {
            metrics: NatMetrics::register(registry)?,
            stats: HashMap::new(),
            shown: HashMap::new(),
            failure_spaces: HashSet::new(),
            rates: HashMap::new(),
        })
    }

    /// One watcher update; `now_ns` is the wall clock.
    pub fn apply(&mut self, u: &NatUpdate, now_ns: u64) {
        match u {
            NatUpdate::Event(e) => self.event(e),
            NatUpdate::Status {
                netns,
                stats,
                range,
                top,
                lost,
            } => self.status(*netns, stats, range, top, *lost, now_ns),
        }
    }

    fn event(&mut self, e: &Event) {
        if e.op != Op::Nat {
            return;
        }
        let netns = e.netns.to_string();
        if e.is_ok() {
            self.metrics
                .allocations
                .with_label_values(&[netns.as_str(), e.proto.name()])
                .inc();
            if let (Some(daddr), Some(dport)) = (e.daddr, e.dport) {
                let key = SpaceKey {
                    proto: e.proto,
                    translated: e.saddr,
                    daddr,
                    dport,
                };
                if !self.rates.contains_key(&(e.netns, key)) && self.rates.len() >= MAX_RATED_SPACES
                {
                    self.drop_idlest_rate();
                }
                self.rates
                    .entry((e.netns, key))
                    .or_insert_with(|| Recent::new(e.ts_ns))
                    .add(e.ts_ns);
            }
            return;
        }
        let mut l: Labels = [
            netns,
            e.proto.name().to_string(),
            e.saddr.to_string(),
            e.daddr
                .map_or_else(|| "unknown".into(), |a: IpAddr| a.to_string()),
            e.dport.map_or_else(|| "unknown".into(), |p| p.to_string()),
        ];
        if !self.failure_spaces.contains(&l) {
            if self.failure_spaces.len() >= MAX_FAILURE_SPACES {
                l[2] = "other".into();
                l[3] = "other".into();
                l[4] = "other".into();
            } else {
                self.failure_spaces.insert(l.clone());
            }
        }
        self.metrics.failures.with_label_values(&refs(&l)).inc();
    }

    /// Drops every series of a namespace no longer watched (the `netns` bound).
    pub fn forget(&mut self, netns: u32) {
        let ns = netns.to_string();
        let m = &self.metrics;
        for name in STAT_NAMES {
            let _ = m.conntrack.remove_label_values(&[ns.as_str(), name]);
        }
        for p in crate::event::Proto::ALL {
            let _ = m.allocations.remove_label_values(&[ns.as_str(), p.name()]);
        }
        for source in ["configured", "kernel-default"] {
            let _ = m.range_ports.remove_label_values(&[ns.as_str(), source]);
        }
        let _ = m.lost.remove_label_values(&[ns.as_str()]);
        for l in self.shown.remove(&netns).unwrap_or_default() {
            let l = refs(&l);
            let _ = m.in_use.remove_label_values(&l);
            let _ = m.pressure.remove_label_values(&l);
            let _ = m.exhaustion.remove_label_values(&l);
        }
        self.failure_spaces.retain(|l| {
            let mine = l[0] == ns;
            if mine {
                let _ = m.failures.remove_label_values(&refs(l));
            }
            !mine
        });
        self.stats.remove(&netns);
        self.rates.retain(|(n, _), _| *n != netns);
    }

    fn drop_idlest_rate(&mut self) {
        if let Some(k) = self
            .rates
            .iter()
            .min_by_key(|(_, r)| r.newest_ns())
            .map(|(k, _)| *k)
        {
            self.rates.remove(&k);
        }
    }

    fn status(
        &mut self,
        netns: u32,
        stats: &CpuStats,
        range: &NatRange,
        top: &[(SpaceKey, u32)],
        lost: u64,
        now_ns: u64,
    ) {
        let ns = netns.to_string();
        let before = self.stats.insert(netns, *stats);
        for ((name, now), was) in STAT_NAMES
            .iter()
            .zip(stats.values())
            .zip(before.map(|b| b.values()).unwrap_or([0; 9]))
        {
            // Counted from the namespace's own totals; a value that went down (the
            // namespace was recreated under the same inode) starts over.
            let delta = if now >= was { now - was } else { now };
            self.metrics
                .conntrack
                .with_label_values(&[ns.as_str(), name])
                .inc_by(delta);
        }
        let source = match range.source {
            crate::event::NatRangeSource::Configured => "configured",
            crate::event::NatRangeSource::KernelDefault => "kernel-default",
        };
        self.metrics
            .range_ports
            .with_label_values(&[ns.as_str(), source])
            .set(i64::from(range.size()));
        self.metrics
            .lost
            .with_label_values(&[ns.as_str()])
            .set(i64::try_from(lost).unwrap_or(i64::MAX));

        let now: Vec<Labels> = top.iter().map(|(k, _)| labels(netns, k)).collect();
        for old in self.shown.remove(&netns).unwrap_or_default() {
            if !now.contains(&old) {
                let l = refs(&old);
                let _ = self.metrics.in_use.remove_label_values(&l);
                let _ = self.metrics.pressure.remove_label_values(&l);
                let _ = self.metrics.exhaustion.remove_label_values(&l);
            }
        }
        for ((k, in_use), l) in top.iter().zip(&now) {
            let l = refs(l);
            self.metrics
                .in_use
                .with_label_values(&l)
                .set(i64::from(*in_use));
            let size = range.size();
            self.metrics
                .pressure
                .with_label_values(&l)
                .set(f64::from(*in_use) / f64::from(size));
            let rate = self
                .rates
                .get(&(netns, *k))
                .map_or(0.0, |r| r.rate(now_ns, RATE_WINDOW_NS));
            let occ = Occupancy {
                usable: size,
                held: *in_use,
                releases_s: Vec::new(),
            };
            let secs = time_to_exhaustion(&occ, rate, NAT_HOLD_SECS).unwrap_or(f64::INFINITY);
            self.metrics.exhaustion.with_label_values(&l).set(secs);
        }
        self.shown.insert(netns, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Errno, NatInfo, NatRangeSource, Outcome, Proto, test_event};
    use std::net::Ipv4Addr;

    #[test]
    fn failure_labels_stay_bounded() {
        let registry = Registry::new();
        let mut a = NatAggregator::new(&registry).unwrap();
        for port in 0..(MAX_FAILURE_SPACES as u16 + 50) {
            let dest = Some((Ipv4Addr::new(198, 51, 100, 2), port));
            let mut e = test_event(
                Op::Nat,
                Proto::Tcp,
                0,
                dest,
                Outcome::Err(Errno(libc::EADDRNOTAVAIL)),
                0,
            );
            e.nat = Some(NatInfo {
                orig_saddr: None,
                orig_sport: None,
                orig_daddr: None,
                orig_dport: None,
                in_use: 10,
                range: NatRange {
                    low: 1,
                    high: 10,
                    source: NatRangeSource::Configured,
                },
            });
            a.apply(&NatUpdate::Event(e), 0);
        }
        let families = registry.gather();
        let failures = families
            .iter()
            .find(|f| f.name() == "port_trace_nat_failures_total")
            .unwrap();
        assert_eq!(failures.get_metric().len(), MAX_FAILURE_SPACES + 1);
    }
}
