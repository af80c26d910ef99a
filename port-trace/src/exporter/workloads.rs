//! Who allocates, as metrics: the top workloads (units, containers, pods) by failures and then
//! allocations over the last minute, the rest summed under `workload="(other)"`, and each
//! traced namespace's owner. Bounds in docs/metrics.md.

use std::{collections::HashMap, net::IpAddr};

use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};

use crate::{
    attribution::NetnsOwner,
    event::Event,
    pressure::{CLOSE_WINDOW_NS, Recent},
};

/// Workloads exported by name; the others are summed under [`OTHER`].
pub const TOP_WORKLOADS: usize = 10;
/// Workloads tracked at once (about 700 bytes each); beyond, after dropping those idle for a
/// minute, newcomers are counted under [`OTHER`] until some go idle.
pub const MAX_TRACKED: usize = 4_096;
/// Destinations remembered per workload, for the pressure it draws on.
const DESTS_PER_WORKLOAD: usize = 16;
/// The `workload` label of the sum of the workloads not exported by name.
pub const OTHER: &str = "(other)";

/// The metric families (registered on the daemon's registry).
pub struct WorkloadMetrics {
    pub rate: GaugeVec,
    pub failures: GaugeVec,
    pub pressure: GaugeVec,
    pub netns_owner: IntGaugeVec,
}

impl WorkloadMetrics {
    pub fn register(registry: &Registry) -> Self {
        let labels = &["workload", "kind"];
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("metric names are unique");
            g
        };
        let netns_owner = IntGaugeVec::new(
            Opts::new(
                "port_trace_netns_workload_info",
                "The workload whose processes hold each traced network namespace.",
            ),
            &["netns", "workload", "kind"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(netns_owner.clone()))
            .expect("metric names are unique");
        Self {
            rate: gauges(
                "port_trace_workload_allocation_rate",
                "Top workloads: ports the kernel handed out per second, over the last minute.",
                labels,
            ),
            failures: gauges(
                "port_trace_workload_failures_last_minute",
                "Top workloads: failures to get a port in the last minute.",
                labels,
            ),
            pressure: gauges(
                "port_trace_workload_pressure_ratio",
                "Top workloads: the highest pressure among the top destinations it connected to in the last minute.",
                labels,
            ),
            netns_owner,
        }
    }
}

struct Tracked {
    kind: &'static str,
    allocations: Recent,
    failures: Recent,
    /// (netns, destination, newest use), newest last.
    dests: Vec<(u32, IpAddr, u16, u64)>,
}

impl Tracked {
    fn new(kind: &'static str, ts: u64) -> Self {
        Self {
            kind,
            allocations: Recent::new(ts),
            failures: Recent::new(ts),
            dests: Vec::new(),
        }
    }

    fn newest(&self) -> u64 {
        self.allocations.newest_ns().max(self.failures.newest_ns())
    }
}

/// One exported row.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadRow {
    pub workload: String,
    pub kind: &'static str,
    pub allocations_last_minute: u64,
    pub failures_last_minute: u64,
    pub pressure: Option<f64>,
}

/// Recent allocations and failures per workload, fed at ingest.
#[derive(Default)]
pub struct WorkloadRates {
    tracked: HashMap<String, Tracked>,
}

impl WorkloadRates {
    pub fn ingest(&mut self, e: &Event) {
        let Some(w) = &e.workload else { return };
        let mut label = w.label(e.cgroup.as_deref());
        if !self.tracked.contains_key(&label) && self.tracked.len() >= MAX_TRACKED {
            self.tracked
                .retain(|_, t| t.newest() + CLOSE_WINDOW_NS >= e.ts_ns);
            if self.tracked.len() >= MAX_TRACKED {
                label = OTHER.into();
            }
        }
        let kind = if label == OTHER { "other" } else { w.kind() };
        let t = self
            .tracked
            .entry(label)
            .or_insert_with(|| Tracked::new(kind, e.ts_ns));
        if e.is_ok() {
            t.allocations.add(e.ts_ns);
        } else {
            t.failures.add(e.ts_ns);
        }
        if let Some((daddr, dport)) = e.canonical_destination() {
            t.dests
                .retain(|d| (d.0, d.1, d.2) != (e.netns, daddr, dport));
            if t.dests.len() >= DESTS_PER_WORKLOAD {
                t.dests.remove(0);
            }
            t.dests.push((e.netns, daddr, dport, e.ts_ns));
        }
    }

    /// The top [`TOP_WORKLOADS`] by failures then allocations in the minute before `now_ns`,
    /// and the rest summed as [`OTHER`]; `pressure` maps (netns, destination) to its pressure.
    pub fn rows(
        &mut self,
        now_ns: u64,
        pressure: &HashMap<(u32, IpAddr, u16), f64>,
    ) -> Vec<WorkloadRow> {
        self.tracked
            .retain(|_, t| t.newest() + CLOSE_WINDOW_NS >= now_ns);
        let mut rows: Vec<WorkloadRow> = self
            .tracked
            .iter()
            .map(|(label, t)| WorkloadRow {
                workload: label.clone(),
                kind: t.kind,
                allocations_last_minute: t.allocations.count(now_ns, CLOSE_WINDOW_NS),
                failures_last_minute: t.failures.count(now_ns, CLOSE_WINDOW_NS),
                pressure: t
                    .dests
                    .iter()
                    .filter(|d| d.3 + CLOSE_WINDOW_NS >= now_ns)
                    .filter_map(|d| pressure.get(&(d.0, d.1, d.2)).copied())
                    .max_by(f64::total_cmp),
            })
            .filter(|r| r.allocations_last_minute + r.failures_last_minute > 0)
            .collect();
        rows.sort_by(|a, b| {
            (b.failures_last_minute, b.allocations_last_minute)
                .cmp(&(a.failures_last_minute, a.allocations_last_minute))
                .then_with(|| a.workload.cmp(&b.workload))
        });
        // The tail, and anything already counted under OTHER, become one row.
        let (mut rest, named): (Vec<_>, Vec<_>) =
            rows.into_iter().partition(|r| r.workload == OTHER);
        let mut out = named;
        if out.len() > TOP_WORKLOADS {
            rest.extend(out.drain(TOP_WORKLOADS..));
        }
        if !rest.is_empty() {
            let other = rest.into_iter().fold(
                WorkloadRow {
                    workload: OTHER.into(),
                    kind: "other",
                    allocations_last_minute: 0,
                    failures_last_minute: 0,
                    pressure: None,
                },
                |mut acc, r| {
                    acc.allocations_last_minute += r.allocations_last_minute;
                    acc.failures_last_minute += r.failures_last_minute;
                    acc.pressure = match (acc.pressure, r.pressure) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    acc
                },
            );
            out.push(other);
        }
        out
    }
}

impl WorkloadMetrics {
    /// Replaces every series with `rows` and the namespaces' owners.
    pub fn set(&self, rows: &[WorkloadRow], owners: &[(u32, NetnsOwner)]) {
        self.rate.reset();
        self.failures.reset();
        self.pressure.reset();
        for r in rows {
            let labels = [r.workload.as_str(), r.kind];
            self.rate
                .with_label_values(&labels)
                .set(r.allocations_last_minute as f64 / (CLOSE_WINDOW_NS as f64 / 1e9));
            self.failures
                .with_label_values(&labels)
                .set(r.failures_last_minute as f64);
            if let Some(p) = r.pressure {
                self.pressure.with_label_values(&labels).set(p);
            }
        }
        self.netns_owner.reset();
        for (netns, owner) in owners {
            let kind = match owner {
                NetnsOwner::One(w) => w.kind(),
                NetnsOwner::Shared { .. } => "shared",
            };
            self.netns_owner
                .with_label_values(&[&netns.to_string(), &owner.label(), kind])
                .set(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attribution::classify,
        event::{Op, Outcome, Proto, failed, test_event},
    };
    use std::net::Ipv4Addr;

    const S: u64 = 1_000_000_000;

    fn ev(unit: &str, ok: bool, ts: u64) -> Event {
        let result = if ok {
            Outcome::Ok
        } else {
            failed(libc::EADDRNOTAVAIL)
        };
        let dest = Some((Ipv4Addr::LOCALHOST, 80));
        let mut e = test_event(Op::Connect, Proto::Tcp, 40000, dest, result, ts);
        let path = format!("/system.slice/{unit}");
        e.workload = Some(classify(&path).into());
        e.cgroup = Some(path.into());
        e
    }

    #[test]
    fn failing_workloads_rank_first_and_the_tail_is_summed() {
        let mut w = WorkloadRates::default();
        for i in 0..30 {
            for _ in 0..=i {
                w.ingest(&ev(&format!("u{i}.service"), true, 100 * S));
            }
        }
        w.ingest(&ev("quiet.service", false, 100 * S));
        let pressure = HashMap::from([((7, IpAddr::V4(Ipv4Addr::LOCALHOST), 80), 0.5)]);
        let rows = w.rows(101 * S, &pressure);
        assert_eq!(rows.len(), TOP_WORKLOADS + 1);
        assert_eq!(rows[0].workload, "quiet.service");
        assert_eq!(rows[0].failures_last_minute, 1);
        assert_eq!(rows[0].pressure, Some(0.5));
        assert_eq!(rows[1].workload, "u29.service");
        let other = rows.last().unwrap();
        assert_eq!(other.workload, OTHER);
        // The sum of every row is every event.
        let total: u64 = rows
            .iter()
            .map(|r| r.allocations_last_minute + r.failures_last_minute)
            .sum();
        assert_eq!(total, (1..=30).sum::<u64>() + 1);
        // A minute later, nothing is left.
        assert!(w.rows(200 * S, &pressure).is_empty());
    }

    /// Series stay bounded however many workloads there are.
    #[test]
    fn series_are_bounded() {
        let mut w = WorkloadRates::default();
        for i in 0..(MAX_TRACKED + 500) {
            w.ingest(&ev(&format!("u{i}.service"), true, 100 * S));
        }
        assert!(w.tracked.len() <= MAX_TRACKED + 1);
        let rows = w.rows(100 * S, &HashMap::new());
        assert_eq!(rows.len(), TOP_WORKLOADS + 1);
        let registry = Registry::new();
        let m = WorkloadMetrics::register(&registry);
        m.set(&rows, &[]);
        let series = registry
            .gather()
            .iter()
            .map(|f| f.get_metric().len())
            .sum::<usize>();
        assert_eq!(
            series,
            2 * (TOP_WORKLOADS + 1),
            "rate and failures, no pressure"
        );
    }
}
