//! The aggregator: counters fed by every event, a bounded window of recent events for the
//! refresh, and the gauges a refresh computed.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::{
    metrics::Metrics,
    refresh::{Computed, RefreshInput},
    window::{Seen, Window},
    workloads::WorkloadRates,
};
use crate::{
    analysis::{DEFAULT_RANGE, StreamKey},
    event::{Event, Op, Proto},
    netns::NetnsState,
    pressure::{Allocations, CLOSE_WINDOW_NS, RATE_WINDOW_NS, Recent},
};

/// Beyond the no-collision maximum of Linux's connect() (+2..16) a step means skipped ports.
const MAX_NO_COLLISION_STEP: u32 = 16;
/// Bound on per-stream "last port" memory for step sizes, and on remembered chosen ports.
const MAX_KEYS: usize = 65_536;
/// Bound on destinations whose recent allocations are counted (~300 bytes each).
const MAX_RATE_KEYS: usize = 16_384;

/// Recent allocations per destination and per namespace, fed at ingest (so the rates do not
/// depend on how many events the window keeps).
#[derive(Default)]
struct Rates {
    /// TCP connect() per (netns, destination).
    dest: HashMap<(u32, IpAddr, u16), Box<Recent>>,
    /// Every TCP allocation per namespace (connect, bind, listen): the bind space.
    tcp: HashMap<u32, Box<Recent>>,
    /// TCP bind()/listen() per namespace: is anything drawing from the bind space itself?
    bind: HashMap<u32, Box<Recent>>,
}

/// Boxed: a table of 272-byte values doubles them in empty slots.
fn count<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Box<Recent>>, key: K, ts: u64) {
    if map.len() >= MAX_RATE_KEYS && !map.contains_key(&key) {
        // Forget what has been idle for a minute; if that is not enough, start over.
        map.retain(|_, r| r.newest_ns() + CLOSE_WINDOW_NS >= ts);
        if map.len() >= MAX_RATE_KEYS {
            map.clear();
        }
    }
    map.entry(key)
        .or_insert_with(|| Box::new(Recent::new(ts)))
        .add(ts);
}

fn allocations(r: &Recent, now: u64) -> Allocations {
    Allocations {
        rate_per_s: r.rate(now, RATE_WINDOW_NS),
        last_minute: r.count(now, CLOSE_WINDOW_NS),
    }
}

/// Feeds events into counters and keeps the recent ones for pattern analysis.
pub struct Aggregator {
    pub metrics: Metrics,
    window: Window,
    /// The newest event of each namespace (where to find a process inside it), pruned at each
    /// refresh to the namespaces in the window.
    newest: HashMap<u32, Event>,
    /// The previous port of each stream, for step sizes.
    /// Keyed by a 64-bit fingerprint of the stream, a sixth of the key's size: two streams
    /// sharing one (odds of 2^-64 per pair) would cost a step sample.
    last_port: HashMap<u64, u16>,
    fingerprint: foldhash::quality::RandomState,
    /// Range span per namespace, from the last refresh (steps wrap around the range).
    spans: HashMap<u32, u32>,
    lost_seen: u64,
    unresolved_seen: u64,
    /// Events arrived since the last pattern analysis.
    dirty: bool,
    /// Ports the kernel chose for TCP bind/listen (not hazards when listened on).
    chosen: HashSet<(u32, u16)>,
    rates: Rates,
    /// Recent allocations and failures per workload.
    workloads: WorkloadRates,
    pub top_destinations: usize,
}

pub(super) fn netns_label(n: u32) -> String {
    n.to_string()
}

impl Aggregator {
    pub fn new(window_cap: usize, top_destinations: usize) -> Self {
        Self {
            metrics: Metrics::new(),
            window: Window::new(window_cap),
            newest: HashMap::new(),
            last_port: HashMap::new(),
            fingerprint: foldhash::quality::RandomState::default(),
            spans: HashMap::new(),
            lost_seen: 0,
            unresolved_seen: 0,
            dirty: false,
            chosen: HashSet::new(),
            rates: Rates::default(),
            workloads: WorkloadRates::default(),
            top_destinations,
        }
    }

    pub fn set_window(&mut self, cap: usize) {
        self.window.set_cap(cap);
    }

    pub fn ingest(&mut self, e: Event) {
        self.workloads.ingest(&e);
        if e.is_ok() {
            self.observe_step(&e);
            self.count_allocation(&e);
        }
        let m = &self.metrics.events;
        let (proto, family, op) = (e.proto.name(), e.family.name(), e.op.name());
        if e.is_ok() {
            m.assignments.with_label_values(&[proto, family, op]).inc();
            if e.is_self_connect() {
                m.self_connects.inc();
            }
            if e.is_kernel_chosen_listen_port() {
                if self.chosen.len() >= MAX_KEYS {
                    self.chosen.clear();
                }
                self.chosen.insert((e.netns, e.port));
            }
        } else {
            m.failures
                .with_label_values(&[proto, family, op, &e.result.name()])
                .inc();
        }
        if let Some(ns) = e.latency_ns {
            let result = if e.is_ok() { "ok" } else { "failed" };
            m.search
                .with_label_values(&[proto, op, result])
                .observe(ns as f64 / 1e9);
        }
        m.last_event.set(e.ts_ns as f64 / 1e9);
        self.window.push(Seen::of(&e));
        self.newest.insert(e.netns, e);
        self.dirty = true;
    }

    /// Recent-allocation counts for the forecasts (TCP only: UDP has no TIME_WAIT).
    fn count_allocation(&mut self, e: &Event) {
        if e.proto != Proto::Tcp {
            return;
        }
        count(&mut self.rates.tcp, e.netns, e.ts_ns);
        match e.op {
            Op::Connect => {
                if let Some((daddr, dport)) = e.canonical_destination() {
                    count(&mut self.rates.dest, (e.netns, daddr, dport), e.ts_ns);
                }
            }
            Op::Bind | Op::Listen => count(&mut self.rates.bind, e.netns, e.ts_ns),
            // NAT events have their own metrics (exporter::nat).
            Op::Autobind | Op::Nat => {}
        }
    }

    /// Step from the stream's previous port: the histogram, and skips of occupied ports.
    fn observe_step(&mut self, e: &Event) {
        let key = std::hash::BuildHasher::hash_one(&self.fingerprint, StreamKey::of(e));
        if self.last_port.len() >= MAX_KEYS && !self.last_port.contains_key(&key) {
            self.last_port.clear();
        }
        let span = *self
            .spans
            .get(&e.netns)
            .unwrap_or(&((DEFAULT_RANGE.1 - DEFAULT_RANGE.0) as u32 + 1));
        let Some(prev) = self.last_port.insert(key, e.port) else {
            return;
        };
        // Forward distance within the range: the kernel's counters wrap around it.
        let step = (e.port as i64 - prev as i64).rem_euclid(span as i64) as u32;
        let labels = [e.proto.name(), e.op.name()];
        let m = &self.metrics.events;
        m.step_size.with_label_values(&labels).observe(step as f64);
        if e.op == Op::Connect
            && step > MAX_NO_COLLISION_STEP
            && step <= (span / 16).max(MAX_NO_COLLISION_STEP)
        {
            m.skips.with_label_values(&labels).inc();
        }
    }

    /// Kernel-side drop counter (cumulative) and the ring buffer fill at the last drain.
    pub fn set_health(&mut self, lost_total: u64, unresolved_total: u64, fill: f64) {
        let h = &self.metrics.health;
        if lost_total > self.lost_seen {
            h.events_lost.inc_by(lost_total - self.lost_seen);
            self.lost_seen = lost_total;
        }
        if unresolved_total > self.unresolved_seen {
            h.unresolved.inc_by(unresolved_total - self.unresolved_seen);
            self.unresolved_seen = unresolved_total;
        }
        h.ring_fill.set(fill);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        h.last_drain.set(now);
    }

    /// What a refresh needs from the aggregator, taken under its lock (cheap): the event
    /// window, shared, only when it changed since the last pattern analysis.
    pub fn refresh_input(&mut self, now_ns: u64) -> RefreshInput {
        let window = self.window.snapshot();
        let in_window: HashSet<u32> = window.iter().map(|s| s.key.netns).collect();
        self.newest.retain(|netns, _| in_window.contains(netns));
        let events = self.dirty.then_some(window);
        self.dirty = false;
        RefreshInput {
            events,
            newest_per_netns: self.newest.values().cloned().collect(),
            dest_allocs: {
                let mut m: HashMap<u32, HashMap<(IpAddr, u16), Allocations>> = HashMap::new();
                for (&(netns, daddr, dport), r) in &self.rates.dest {
                    let a = allocations(r, now_ns);
                    if a.last_minute > 0 {
                        m.entry(netns).or_default().insert((daddr, dport), a);
                    }
                }
                m
            },
            tcp_allocs: self
                .rates
                .tcp
                .iter()
                .map(|(&netns, r)| (netns, allocations(r, now_ns)))
                .collect(),
            bind_active: self
                .rates
                .bind
                .iter()
                .filter(|(_, r)| r.count(now_ns, CLOSE_WINDOW_NS) > 0)
                .map(|(&netns, _)| netns)
                .collect(),
            chosen: self.chosen.clone(),
            top_destinations: self.top_destinations,
        }
    }

    /// Sets every gauge from a computed refresh (cheap; under the lock).
    pub fn apply(&mut self, c: &Computed) {
        for ns in &c.namespaces {
            self.spans.insert(ns.netns, ns.range.span());
        }
        c.apply(&self.metrics);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let rows = self.workloads.rows(now, &c.destination_pressures());
        self.metrics.workloads.set(&rows, &c.netns_owners());
    }

    /// Compute and apply in one go (tests, small windows).
    pub fn refresh(&mut self, namespaces: &[NetnsState]) {
        let now = self.window.newest_ns().unwrap_or(0);
        let input = self.refresh_input(now);
        let computed = super::refresh::compute(input, namespaces.to_vec());
        self.apply(&computed);
    }
}
