//! The per-workload view: who allocates, how fast, who fails, and which streams (destinations,
//! bind spaces) it draws from with their pressure. Fed one event at a time; bounded in the
//! number of workloads and of streams per workload.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
};

use serde::{Deserialize, Serialize};

use super::StreamSummary;
use crate::{
    analysis::StreamKey,
    attribution::Workload,
    event::{Event, Outcome},
    pressure::{RATE_WINDOW_NS, Recent},
};

/// Workloads told apart; events of further ones are counted under [`OVERFLOW_LABEL`].
pub const MAX_WORKLOADS: usize = 1_024;
/// Streams counted exactly per workload (Space-Saving beyond, like commands per stream).
pub const MAX_STREAMS: usize = 64;
/// Streams listed per workload.
pub const TOP_STREAMS: usize = 5;
/// The row that gathers workloads beyond [`MAX_WORKLOADS`].
pub const OVERFLOW_LABEL: &str = "(more workloads)";
/// The row of events that carry no workload (recordings made before attribution).
pub const UNRECORDED_LABEL: &str = "(not recorded)";

/// One stream a workload draws from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadStream {
    pub key: StreamKey,
    /// This workload's events in the stream (allocations and failures).
    pub events: u64,
    /// Its share of the stream's events (0 to 1).
    pub share: Option<f64>,
    /// The stream's pressure (ports in use / usable), as in the stream rows.
    pub pressure: Option<f64>,
}

/// One workload's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSummary {
    /// `nginx.service`, `pod:<uid>/containerd:<id>`, `docker:<id>`, a cgroup path, or
    /// [`OVERFLOW_LABEL`] / [`UNRECORDED_LABEL`].
    pub label: String,
    pub workload: Option<Workload>,
    /// A cgroup the workload's events came from (the first seen).
    pub cgroup: Option<String>,
    /// Successful allocations.
    pub allocations: u64,
    /// Allocations per second over the last 5 s of the recording.
    pub rate_per_s: f64,
    /// Failures by errno name.
    pub failures: BTreeMap<String, u64>,
    /// The highest pressure among the streams it draws from.
    pub worst_pressure: Option<f64>,
    /// Its busiest streams, most events first (at most [`TOP_STREAMS`]).
    pub top_streams: Vec<WorkloadStream>,
}

#[derive(Debug)]
struct Tally {
    workload: Option<Workload>,
    cgroup: Option<String>,
    allocations: u64,
    recent: Option<Recent>,
    failures: BTreeMap<Outcome, u64>,
    streams: Vec<(StreamKey, u64)>,
}

impl Tally {
    fn new(e: &Event) -> Self {
        Self {
            workload: e.workload.as_deref().cloned(),
            cgroup: e.cgroup.as_deref().map(str::to_string),
            allocations: 0,
            recent: None,
            failures: BTreeMap::new(),
            streams: Vec::new(),
        }
    }

    fn count_stream(&mut self, key: StreamKey) {
        if let Some((_, n)) = self.streams.iter_mut().find(|(k, _)| *k == key) {
            *n += 1;
            return;
        }
        let mut n = 1;
        if self.streams.len() >= MAX_STREAMS {
            // Space-Saving: the newcomer inherits the smallest count, an upper bound of its own.
            if let Some(i) = (0..self.streams.len()).min_by_key(|&i| self.streams[i].1) {
                n += self.streams.swap_remove(i).1;
            }
        }
        self.streams.push((key, n));
    }
}

/// Per-workload tallies, fed in time order.
#[derive(Debug, Default)]
pub struct Workloads {
    by_label: HashMap<String, Tally>,
    last_event: u64,
}

/// The label an event is counted under.
fn label(e: &Event) -> Cow<'static, str> {
    match &e.workload {
        Some(w) => w.label(e.cgroup.as_deref()).into(),
        None => UNRECORDED_LABEL.into(),
    }
}

impl Workloads {
    pub fn push(&mut self, e: &Event) {
        self.last_event = self.last_event.max(e.ts_ns);
        let l = label(e);
        let t = match self.by_label.get_mut(&*l) {
            // Looked up by reference: a label that is a constant needs no String.
            Some(t) => t,
            None => {
                let overflow = self.by_label.len() >= MAX_WORKLOADS;
                let l = if overflow { OVERFLOW_LABEL.into() } else { l };
                self.by_label.entry(l.into_owned()).or_insert_with(|| {
                    let mut t = Tally::new(e);
                    if overflow {
                        (t.workload, t.cgroup) = (None, None);
                    }
                    t
                })
            }
        };
        if e.is_ok() {
            t.allocations += 1;
            t.recent
                .get_or_insert_with(|| Recent::new(e.ts_ns))
                .add(e.ts_ns);
        } else {
            *t.failures.entry(e.result).or_default() += 1;
        }
        t.count_stream(StreamKey::of(e));
    }

    /// The rows, busiest first, joined with the stream rows for pressure and shares.
    pub fn finish(self, streams: &[StreamSummary]) -> Vec<WorkloadSummary> {
        let rows: HashMap<&StreamKey, &StreamSummary> =
            streams.iter().map(|s| (&s.key, s)).collect();
        let last = self.last_event;
        let mut out: Vec<WorkloadSummary> = self
            .by_label
            .into_iter()
            .map(|(label, mut t)| {
                t.streams.sort_by_key(|s| std::cmp::Reverse(s.1));
                t.streams.truncate(TOP_STREAMS);
                let top_streams: Vec<WorkloadStream> = t
                    .streams
                    .into_iter()
                    .map(|(key, events)| {
                        let row = rows.get(&key);
                        let total =
                            row.map(|r| r.samples as u64 + r.failures.values().sum::<u64>());
                        WorkloadStream {
                            share: total.filter(|&n| n > 0).map(|n| events as f64 / n as f64),
                            pressure: row.and_then(|r| r.pressure),
                            key,
                            events,
                        }
                    })
                    .collect();
                let worst_pressure = top_streams
                    .iter()
                    .filter_map(|s| s.pressure)
                    .max_by(f64::total_cmp);
                WorkloadSummary {
                    label,
                    workload: t.workload,
                    cgroup: t.cgroup,
                    allocations: t.allocations,
                    rate_per_s: t.recent.map_or(0.0, |r| r.rate(last, RATE_WINDOW_NS)),
                    failures: t
                        .failures
                        .iter()
                        .map(|(o, n)| (o.name().into_owned(), *n))
                        .collect(),
                    worst_pressure,
                    top_streams,
                }
            })
            .collect();
        let total = |w: &WorkloadSummary| w.allocations + w.failures.values().sum::<u64>();
        out.sort_by(|a, b| total(b).cmp(&total(a)).then_with(|| a.label.cmp(&b.label)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attribution::classify,
        event::{Op, Proto, failed, test_event},
        pressure::UsableRange,
        report::summarize,
    };
    use std::net::Ipv4Addr;

    fn ev(path: &str, port: u16, dest: u16, ok: bool, ts: u64) -> Event {
        let result = if ok {
            Outcome::Ok
        } else {
            failed(libc::EADDRNOTAVAIL)
        };
        let mut e = test_event(
            Op::Connect,
            Proto::Tcp,
            port,
            Some((Ipv4Addr::LOCALHOST, dest)),
            result,
            ts,
        );
        e.cgroup = Some(path.into());
        e.workload = Some(classify(path).into());
        e
    }

    #[test]
    fn rows_per_workload_with_shares_and_failures() {
        let mut events = Vec::new();
        for i in 0..30u16 {
            events.push(ev(
                "/system.slice/a.service",
                40000 + i,
                80,
                true,
                u64::from(i) * 1_000_000,
            ));
        }
        for i in 0..10u16 {
            events.push(ev(
                "/system.slice/b.service",
                41000 + i,
                80,
                true,
                u64::from(i) * 1_000_000,
            ));
        }
        events.push(ev("/system.slice/b.service", 0, 443, false, 20_000_000));
        let mut old = test_event(
            Op::Connect,
            Proto::Tcp,
            42000,
            Some((Ipv4Addr::LOCALHOST, 80)),
            Outcome::Ok,
            1,
        );
        old.workload = None;
        events.push(old);
        let s = summarize(&events, &[], &UsableRange::new(32768, 60999, vec![]));
        let labels: Vec<&str> = s.workloads.iter().map(|w| w.label.as_str()).collect();
        assert_eq!(labels, ["a.service", "b.service", UNRECORDED_LABEL]);
        let a = &s.workloads[0];
        assert_eq!(a.allocations, 30);
        assert_eq!(a.top_streams[0].events, 30);
        assert_eq!(a.top_streams[0].share, Some(30.0 / 41.0));
        assert_eq!(a.cgroup.as_deref(), Some("/system.slice/a.service"));
        let b = &s.workloads[1];
        assert_eq!(b.failures.get("EADDRNOTAVAIL"), Some(&1));
        assert_eq!(b.top_streams.len(), 2);
    }

    #[test]
    fn workloads_and_streams_stay_bounded() {
        let mut w = Workloads::default();
        for i in 0..(MAX_WORKLOADS as u16 + 50) {
            w.push(&ev(&format!("/s.slice/u{i}.service"), 40000, i, true, 1));
        }
        for d in 0..(MAX_STREAMS as u16 * 2) {
            w.push(&ev("/s.slice/u0.service", 40000, 10_000 + d, true, 1));
        }
        assert_eq!(w.by_label.len(), MAX_WORKLOADS + 1);
        assert!(w.by_label[OVERFLOW_LABEL].allocations == 50);
        assert!(w.by_label.values().all(|t| t.streams.len() <= MAX_STREAMS));
        let rows = w.finish(&[]);
        assert!(rows.iter().all(|r| r.top_streams.len() <= TOP_STREAMS));
    }
}
