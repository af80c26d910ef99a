//! Prometheus metrics: counters fed by every event, gauges recomputed on each refresh from the
//! recent events, the namespaces' ranges and their socket tables. Metric names and labels are
//! documented in docs/metrics.md; every label set is bounded.

pub mod http;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::IpAddr,
};

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::{
    analysis::{DEFAULT_RANGE, Pattern},
    event::Event,
    hooks::PathCoverage,
    pressure::{self, Proto, SockState, UsableRange, connect_pressure, listeners_in_range},
    report::{self, NetnsState},
};

/// Beyond the no-collision maximum of Linux's connect() (+2..16) a step means skipped ports.
const MAX_NO_COLLISION_STEP: u32 = 16;
/// Bound on per-stream "last port" memory for step sizes.
const MAX_STEP_KEYS: usize = 65_536;

pub struct Metrics {
    pub registry: Registry,
    assignments: IntCounterVec,
    failures: IntCounterVec,
    range_low: IntGaugeVec,
    range_high: IntGaugeVec,
    range_reserved: IntGaugeVec,
    range_usable: IntGaugeVec,
    ports_in_use: IntGaugeVec,
    pressure_max: GaugeVec,
    bind_pressure: GaugeVec,
    dest_pressure: GaugeVec,
    dest_exhaustion: GaugeVec,
    dest_rate: GaugeVec,
    dest_sustainable: GaugeVec,
    pattern_info: IntGaugeVec,
    predictability: GaugeVec,
    step_size: HistogramVec,
    skips: IntCounterVec,
    search: HistogramVec,
    listeners_in_range: IntGaugeVec,
    self_connects: IntCounter,
    events_lost: IntCounter,
    unresolved: IntCounter,
    ring_fill: Gauge,
    hook_info: IntGaugeVec,
    last_event: Gauge,
    last_drain: Gauge,
    netns_errors: IntCounter,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let cv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
            )
        };
        let igv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        let gv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        let dest = &["netns", "daddr", "dport"];
        let m = Self {
            assignments: cv(
                "port_trace_assignments_total",
                "Ports the kernel handed out.",
                &["proto", "family", "op"],
            ),
            failures: cv(
                "port_trace_failures_total",
                "Failures to get a port.",
                &["proto", "family", "op", "errno"],
            ),
            range_low: igv(
                "port_trace_range_low",
                "ip_local_port_range low end.",
                &["netns"],
            ),
            range_high: igv(
                "port_trace_range_high",
                "ip_local_port_range high end.",
                &["netns"],
            ),
            range_reserved: igv(
                "port_trace_range_reserved_ports",
                "Ports of the range in ip_local_reserved_ports.",
                &["netns"],
            ),
            range_usable: igv(
                "port_trace_range_usable_ports",
                "Range size minus reserved ports.",
                &["netns"],
            ),
            ports_in_use: igv(
                "port_trace_ports_in_use",
                "Sockets holding a local port inside the range, by state.",
                &["netns", "proto", "state"],
            ),
            pressure_max: gv(
                "port_trace_pressure_max_ratio",
                "Worst destination's connect() pressure in the namespace.",
                &["netns"],
            ),
            bind_pressure: gv(
                "port_trace_bind_pressure_ratio",
                "Share of the usable range held by sockets of the protocol.",
                &["netns", "proto"],
            ),
            dest_pressure: gv(
                "port_trace_destination_pressure_ratio",
                "Top destinations: ports in use toward it / ports connect() may use.",
                dest,
            ),
            dest_exhaustion: gv(
                "port_trace_destination_exhaustion_seconds",
                "Top destinations: estimated seconds to exhaustion at the current rate (+Inf: not at this rate).",
                dest,
            ),
            dest_rate: gv(
                "port_trace_destination_allocation_rate",
                "Top destinations: connect() allocations per second over the last minute.",
                dest,
            ),
            dest_sustainable: gv(
                "port_trace_destination_sustainable_rate",
                "Top destinations: usable ports / TIME_WAIT seconds.",
                dest,
            ),
            pattern_info: igv(
                "port_trace_allocation_pattern_info",
                "Allocation pattern per namespace, protocol and operation.",
                &["netns", "proto", "op", "pattern"],
            ),
            predictability: gv(
                "port_trace_predictability_ratio",
                "Share of ports a simple predictor guessed.",
                &["netns", "proto", "op"],
            ),
            step_size: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "port_trace_step_size",
                        "Distance between consecutive ports of a stream.",
                    )
                    .buckets(vec![
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0,
                        65536.0,
                    ]),
                    &["proto", "op"],
                )
                .expect("valid histogram"),
            ),
            search: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "port_trace_port_search_seconds",
                        "Time the kernel spent choosing a port (fexit/kprobe hook sets only).",
                    )
                    .buckets(prometheus::exponential_buckets(1e-6, 4.0, 12).expect("valid")),
                    &["proto", "op", "result"],
                )
                .expect("valid histogram"),
            ),
            skips: cv(
                "port_trace_skips_total",
                "Steps larger than the no-collision maximum: occupied ports skipped.",
                &["proto", "op"],
            ),
            listeners_in_range: igv(
                "port_trace_listeners_in_range",
                "TCP listeners on a port inside the ephemeral range the kernel did not choose.",
                &["netns"],
            ),
            self_connects: reg(
                &r,
                IntCounter::new(
                    "port_trace_self_connects_total",
                    "TCP connects whose local address:port equals the destination.",
                )
                .expect("valid"),
            ),
            unresolved: reg(
                &r,
                IntCounter::new(
                    "port_trace_unresolved_events_total",
                    "Port choices seen whose socket could not be read back (kernel layout).",
                )
                .expect("valid"),
            ),
            events_lost: reg(
                &r,
                IntCounter::new(
                    "port_trace_events_lost_total",
                    "Events dropped because the ring buffer was full.",
                )
                .expect("valid"),
            ),
            ring_fill: reg(
                &r,
                Gauge::new(
                    "port_trace_ring_buffer_fill_ratio",
                    "Ring buffer fill at the last drain.",
                )
                .expect("valid"),
            ),
            hook_info: igv(
                "port_trace_hook_info",
                "Which programs serve each capture path.",
                &["hook_set", "path", "hooks"],
            ),
            last_drain: reg(
                &r,
                Gauge::new(
                    "port_trace_last_drain_timestamp_seconds",
                    "Wall-clock time the ring buffer was last drained.",
                )
                .expect("valid"),
            ),
            netns_errors: reg(
                &r,
                IntCounter::new(
                    "port_trace_netns_refresh_errors_total",
                    "Namespace refreshes that could not read the range or the socket table.",
                )
                .expect("valid"),
            ),
            last_event: reg(
                &r,
                Gauge::new(
                    "port_trace_last_event_timestamp_seconds",
                    "Wall-clock time of the newest event.",
                )
                .expect("valid"),
            ),
            registry: r,
        };
        // Known label sets start at 0, so increase() sees the first failure too.
        for family in ["ipv4", "ipv6"] {
            for (proto, op, errno) in [
                ("tcp", "connect", "EADDRNOTAVAIL"),
                ("tcp", "bind", "EADDRINUSE"),
                ("udp", "bind", "EADDRINUSE"),
                ("tcp", "listen", "EADDRINUSE"),
                ("udp", "autobind", "EAGAIN"),
            ] {
                m.failures.with_label_values(&[proto, family, op, errno]);
                m.assignments.with_label_values(&[proto, family, op]);
            }
        }
        m.skips.with_label_values(&["tcp", "connect"]);
        let build = IntGaugeVec::new(
            Opts::new("port_trace_build_info", "Build information."),
            &["version"],
        )
        .expect("valid gauge");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let _ = m.registry.register(Box::new(build));
        #[cfg(target_os = "linux")]
        let _ = m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        m
    }

    pub fn set_hooks(&self, hook_set: &str, rows: &[PathCoverage]) {
        self.hook_info.reset();
        for r in rows.iter().filter(|r| r.seen) {
            self.hook_info
                .with_label_values(&[hook_set, r.path, r.hooks])
                .set(1);
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the previous port of a stream was, for step sizes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum StepKey {
    Dest(u32, IpAddr, u16),
    Local(u32, String, String, String),
}

/// Feeds events into counters and keeps the recent ones for pattern analysis.
pub struct Aggregator {
    pub metrics: Metrics,
    window: VecDeque<Event>,
    window_cap: usize,
    last_port: HashMap<StepKey, u16>,
    spans: HashMap<u32, u32>,
    lost_seen: u64,
    unresolved_seen: u64,
    /// Events arrived since the last pattern analysis.
    dirty: bool,
    /// Ports the kernel chose for TCP bind/listen (not hazards when listened on).
    chosen: HashSet<(u32, u16)>,
    pub top_destinations: usize,
}

fn netns_label(n: u32) -> String {
    n.to_string()
}

impl Aggregator {
    pub fn new(window_cap: usize, top_destinations: usize) -> Self {
        Self {
            metrics: Metrics::new(),
            window: VecDeque::new(),
            window_cap: window_cap.max(1),
            last_port: HashMap::new(),
            spans: HashMap::new(),
            lost_seen: 0,
            unresolved_seen: 0,
            dirty: false,
            chosen: HashSet::new(),
            top_destinations,
        }
    }

    pub fn set_window(&mut self, cap: usize) {
        self.window_cap = cap.max(1);
        while self.window.len() > self.window_cap {
            self.window.pop_front();
        }
    }

    pub fn ingest(&mut self, e: Event) {
        let m = &self.metrics;
        if e.is_ok() {
            m.assignments
                .with_label_values(&[&e.proto, &e.family, &e.op])
                .inc();
            self.observe_step(&e);
            if e.op == "connect" && e.daddr == Some(e.saddr) && e.dport == Some(e.port) {
                self.metrics.self_connects.inc();
            }
            if e.proto == "tcp" && e.op != "connect" {
                if self.chosen.len() >= MAX_STEP_KEYS {
                    self.chosen.clear();
                }
                self.chosen.insert((e.netns, e.port));
            }
        } else {
            m.failures
                .with_label_values(&[&e.proto, &e.family, &e.op, &e.result])
                .inc();
        }
        if let Some(ns) = e.latency_ns {
            let result = if e.is_ok() { "ok" } else { "failed" };
            self.metrics
                .search
                .with_label_values(&[&e.proto, &e.op, result])
                .observe(ns as f64 / 1e9);
        }
        self.metrics.last_event.set(e.ts_ns as f64 / 1e9);
        if self.window.len() >= self.window_cap {
            self.window.pop_front();
        }
        self.window.push_back(e);
        self.dirty = true;
    }

    fn observe_step(&mut self, e: &Event) {
        let key = match (e.op.as_str(), e.daddr, e.dport) {
            ("connect", Some(d), Some(p)) => StepKey::Dest(e.netns, d, p),
            _ => StepKey::Local(e.netns, e.proto.clone(), e.op.clone(), e.family.clone()),
        };
        if self.last_port.len() >= MAX_STEP_KEYS && !self.last_port.contains_key(&key) {
            self.last_port.clear();
        }
        let span = *self
            .spans
            .get(&e.netns)
            .unwrap_or(&((DEFAULT_RANGE.1 - DEFAULT_RANGE.0) as u32 + 1));
        if let Some(prev) = self.last_port.insert(key, e.port) {
            // Forward distance within the range: the kernel's counters wrap around it.
            let step = (e.port as i64 - prev as i64).rem_euclid(span as i64) as u32;
            self.metrics
                .step_size
                .with_label_values(&[&e.proto, &e.op])
                .observe(step as f64);
            if e.op == "connect"
                && step > MAX_NO_COLLISION_STEP
                && step <= (span / 16).max(MAX_NO_COLLISION_STEP)
            {
                self.metrics
                    .skips
                    .with_label_values(&[&e.proto, &e.op])
                    .inc();
            }
        }
    }

    /// Kernel-side drop counter (cumulative) and the ring buffer fill at the last drain.
    pub fn set_health(&mut self, lost_total: u64, unresolved_total: u64, fill: f64) {
        if lost_total > self.lost_seen {
            self.metrics.events_lost.inc_by(lost_total - self.lost_seen);
            self.lost_seen = lost_total;
        }
        if unresolved_total > self.unresolved_seen {
            self.metrics
                .unresolved
                .inc_by(unresolved_total - self.unresolved_seen);
            self.unresolved_seen = unresolved_total;
        }
        self.metrics.ring_fill.set(fill);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.metrics.last_drain.set(now);
    }

    /// What a refresh needs from the aggregator, taken under its lock (cheap): the event
    /// window only when it changed since the last pattern analysis.
    pub fn refresh_input(&mut self, now_ns: u64) -> RefreshInput {
        let events = self.dirty.then(|| self.window.iter().cloned().collect());
        self.dirty = false;
        let mut newest: HashMap<u32, Event> = HashMap::new();
        for e in self.window.iter().rev() {
            newest.entry(e.netns).or_insert_with(|| e.clone());
        }
        RefreshInput {
            events,
            newest_per_netns: newest.into_values().collect(),
            connects: self
                .window
                .iter()
                .filter(|e| e.op == "connect" && e.is_ok())
                .filter_map(|e| Some((e.netns, e.daddr?, e.dport?, e.ts_ns)))
                .collect(),
            chosen: self.chosen.clone(),
            now_ns,
            top_destinations: self.top_destinations,
        }
    }

    /// Sets every gauge from a computed refresh (cheap; under the lock).
    pub fn apply(&mut self, c: &Computed) {
        let m = &self.metrics;
        for g in [
            &m.range_low,
            &m.range_high,
            &m.range_reserved,
            &m.range_usable,
        ] {
            g.reset();
        }
        for g in [
            &m.pressure_max,
            &m.bind_pressure,
            &m.dest_pressure,
            &m.dest_exhaustion,
            &m.dest_rate,
            &m.dest_sustainable,
        ] {
            g.reset();
        }
        m.ports_in_use.reset();
        m.listeners_in_range.reset();

        m.netns_errors.inc_by(c.netns_errors);
        for ns in &c.namespaces {
            let label = netns_label(ns.netns);
            let range = &ns.range;
            self.spans.insert(ns.netns, range.span());
            m.range_low
                .with_label_values(&[&label])
                .set(range.low as i64);
            m.range_high
                .with_label_values(&[&label])
                .set(range.high as i64);
            m.range_usable
                .with_label_values(&[&label])
                .set(range.usable as i64);
            m.range_reserved
                .with_label_values(&[&label])
                .set(range.span() as i64 - range.usable as i64);
            let Some(socks) = &ns.sockets else { continue };
            for ((proto, state), n) in &socks.in_use {
                m.ports_in_use
                    .with_label_values(&[&label, proto, state])
                    .set(*n);
            }
            for (proto, p) in &socks.bind_pressure {
                m.bind_pressure
                    .with_label_values(&[label.as_str(), proto])
                    .set(*p);
            }
            m.pressure_max
                .with_label_values(&[&label])
                .set(socks.pressure_max);
            m.listeners_in_range
                .with_label_values(&[&label])
                .set(socks.listeners_in_range);
        }
        for t in &c.top {
            let labels = [
                netns_label(t.netns),
                t.dest.daddr.to_string(),
                t.dest.dport.to_string(),
            ];
            let labels: [&str; 3] = [&labels[0], &labels[1], &labels[2]];
            m.dest_pressure
                .with_label_values(&labels)
                .set(t.dest.pressure);
            m.dest_rate.with_label_values(&labels).set(t.rate);
            m.dest_sustainable
                .with_label_values(&labels)
                .set(t.forecast.sustainable_rate);
            m.dest_exhaustion
                .with_label_values(&labels)
                .set(t.forecast.seconds_to_exhaustion.unwrap_or(f64::INFINITY));
        }
        if let Some(patterns) = &c.patterns {
            m.pattern_info.reset();
            m.predictability.reset();
            for p in patterns {
                let label = netns_label(p.netns);
                m.pattern_info
                    .with_label_values(&[&label, &p.proto, &p.op, p.pattern])
                    .set(1);
                if let Some(v) = p.predictability {
                    m.predictability
                        .with_label_values(&[&label, &p.proto, &p.op])
                        .set(v);
                }
            }
        }
    }

    /// Compute and apply in one go (tests, small windows).
    pub fn refresh(&mut self, namespaces: &[NetnsState]) {
        let now = self.window.back().map(|e| e.ts_ns).unwrap_or(0);
        let input = self.refresh_input(now);
        let computed = compute(input, namespaces.to_vec());
        self.apply(&computed);
    }
}

/// See [`Aggregator::refresh_input`].
pub struct RefreshInput {
    events: Option<Vec<Event>>,
    /// One recent event per namespace: where to find a process inside it.
    pub newest_per_netns: Vec<Event>,
    connects: Vec<(u32, IpAddr, u16, u64)>,
    chosen: HashSet<(u32, u16)>,
    now_ns: u64,
    top_destinations: usize,
}

/// A refresh's results, computed off the event loop.
pub struct Computed {
    /// Namespaces whose range could be read.
    namespaces: Vec<NsGauges>,
    netns_errors: u64,
    /// None when no event arrived since the last analysis: keep the current verdicts.
    patterns: Option<Vec<PatternRow>>,
    /// The most pressed destinations across namespaces, at most `top_destinations`.
    top: Vec<TopDest>,
}

struct NsGauges {
    netns: u32,
    range: UsableRange,
    sockets: Option<SocketGauges>,
}

/// What the socket table says about one namespace's range.
struct SocketGauges {
    in_use: BTreeMap<(String, String), i64>,
    bind_pressure: [(&'static str, f64); 2],
    pressure_max: f64,
    listeners_in_range: i64,
}

struct TopDest {
    netns: u32,
    dest: pressure::DestPressure,
    rate: f64,
    forecast: pressure::Forecast,
}

/// Ports in use by state, bind pressure, per-destination pressure and listener hazards of one
/// namespace (O(sockets); off the event loop). Appends its destinations to `dests`.
fn socket_gauges(
    ns: &NetnsState,
    range: &UsableRange,
    chosen: &HashSet<(u32, u16)>,
    dests: &mut Vec<(u32, pressure::DestPressure)>,
) -> Option<SocketGauges> {
    let sockets = ns.sockets.as_ref()?;
    let mut in_use: BTreeMap<(String, String), i64> = BTreeMap::new();
    for s in sockets.iter().filter(|s| range.contains(s.local_port)) {
        let proto = if s.proto == Proto::Tcp { "tcp" } else { "udp" };
        *in_use
            .entry((proto.into(), state_name(s.state)))
            .or_default() += 1;
    }
    let per_dest = connect_pressure(range, sockets);
    let pressure_max = per_dest.first().map(|d| d.pressure).unwrap_or(0.0);
    dests.extend(per_dest.into_iter().map(|d| (ns.netns, d)));
    // Listeners on a port inside the range that the kernel did not hand out: a client may take
    // that port first (or connect to itself).
    let listeners = listeners_in_range(range, sockets)
        .into_iter()
        .filter(|l| {
            l.proto == Proto::Tcp
                && l.state == SockState::Listen
                && !chosen.contains(&(ns.netns, l.local_port))
        })
        .count();
    Some(SocketGauges {
        in_use,
        bind_pressure: [
            ("tcp", pressure::bind_pressure(range, sockets, Proto::Tcp)),
            ("udp", pressure::bind_pressure(range, sockets, Proto::Udp)),
        ],
        pressure_max,
        listeners_in_range: listeners as i64,
    })
}

struct PatternRow {
    netns: u32,
    proto: String,
    op: String,
    pattern: &'static str,
    predictability: Option<f64>,
}

/// The expensive part of a refresh: pattern analysis (only when events arrived) and rates.
pub fn compute(input: RefreshInput, namespaces: Vec<NetnsState>) -> Computed {
    // connect() allocations per destination over the last minute before now.
    let from = input.now_ns.saturating_sub(60_000_000_000);
    let mut counts: HashMap<(u32, IpAddr, u16), u64> = HashMap::new();
    let mut oldest = input.now_ns;
    for &(netns, d, p, ts) in &input.connects {
        oldest = oldest.min(ts);
        if ts >= from {
            *counts.entry((netns, d, p)).or_default() += 1;
        }
    }
    let window = ((input.now_ns - from.max(oldest)) as f64 / 1e9).max(1.0);
    let rates: HashMap<(u32, IpAddr, u16), f64> = counts
        .into_iter()
        .map(|(k, n)| (k, n as f64 / window))
        .collect();

    let mut dests = Vec::new();
    let gauges: Vec<NsGauges> = namespaces
        .iter()
        .filter_map(|ns| {
            let range = ns.range.clone()?;
            let sockets = socket_gauges(ns, &range, &input.chosen, &mut dests);
            Some(NsGauges {
                netns: ns.netns,
                range,
                sockets,
            })
        })
        .collect();
    dests.sort_by(|a, b| b.1.pressure.total_cmp(&a.1.pressure));
    dests.truncate(input.top_destinations);
    let top = dests
        .into_iter()
        .map(|(netns, dest)| {
            let rate = rates
                .get(&(netns, dest.daddr, dest.dport))
                .copied()
                .unwrap_or(0.0);
            let forecast = pressure::forecast(
                dest.in_use,
                dest.usable,
                rate,
                pressure::DEFAULT_TIME_WAIT_SECS,
            );
            TopDest {
                netns,
                dest,
                rate,
                forecast,
            }
        })
        .collect();

    let patterns = input.events.map(|events| {
        let default = UsableRange::new(DEFAULT_RANGE.0, DEFAULT_RANGE.1, vec![]);
        let summary = report::summarize(&events, &namespaces, &default);
        // Per namespace/protocol/operation: the verdict carrying the most samples.
        let mut groups: BTreeMap<(u32, String, String), Vec<&report::StreamSummary>> =
            BTreeMap::new();
        for s in &summary.streams {
            groups
                .entry((s.key.netns, s.key.proto.clone(), s.key.op.clone()))
                .or_default()
                .push(s);
        }
        groups
            .into_iter()
            .map(|((netns, proto, op), streams)| {
                let mut weight: BTreeMap<&'static str, usize> = BTreeMap::new();
                for s in &streams {
                    if s.pattern != Pattern::InsufficientData {
                        *weight.entry(s.pattern.as_str()).or_default() += s.samples;
                    }
                }
                let pattern = weight
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(p, _)| *p)
                    .unwrap_or(Pattern::InsufficientData.as_str());
                let (sum, n) = streams
                    .iter()
                    .filter_map(|s| s.predictability.map(|p| (p * s.samples as f64, s.samples)))
                    .fold((0.0, 0usize), |a, b| (a.0 + b.0, a.1 + b.1));
                PatternRow {
                    netns,
                    proto,
                    op,
                    pattern,
                    predictability: (n > 0).then(|| sum / n as f64),
                }
            })
            .collect()
    });
    Computed {
        netns_errors: namespaces.iter().filter(|n| n.note.is_some()).count() as u64,
        namespaces: gauges,
        patterns,
        top,
    }
}

fn state_name(s: SockState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "other".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pressure::{Family, SocketRecord};
    use std::net::Ipv4Addr;

    fn ev(op: &str, port: u16, dest: Option<(Ipv4Addr, u16)>, result: &str, ts: u64) -> Event {
        crate::event::test_event(op, "tcp", port, dest, result, ts)
    }

    fn value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counters_steps_and_skips() {
        let mut a = Aggregator::new(100, 3);
        let d = Some((Ipv4Addr::LOCALHOST, 80));
        for (i, p) in [40000u16, 40002, 40004, 40100].into_iter().enumerate() {
            a.ingest(ev("connect", p, d, "ok", i as u64));
        }
        a.ingest(ev("connect", 0, d, "EADDRNOTAVAIL", 9));
        let t = a.metrics.render();
        assert_eq!(
            value(
                &t,
                "port_trace_assignments_total{family=\"ipv4\",op=\"connect\",proto=\"tcp\"}"
            ),
            Some(4.0)
        );
        assert_eq!(
            value(
                &t,
                "port_trace_failures_total{errno=\"EADDRNOTAVAIL\",family=\"ipv4\",op=\"connect\",proto=\"tcp\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &t,
                "port_trace_step_size_count{op=\"connect\",proto=\"tcp\"}"
            ),
            Some(3.0)
        );
        assert_eq!(
            value(
                &t,
                "port_trace_step_size_bucket{op=\"connect\",proto=\"tcp\",le=\"2\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            value(&t, "port_trace_skips_total{op=\"connect\",proto=\"tcp\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn lost_events_are_added_as_deltas() {
        let mut a = Aggregator::new(10, 3);
        a.set_health(5, 0, 0.25);
        a.set_health(7, 2, 0.5);
        let t = a.metrics.render();
        assert_eq!(value(&t, "port_trace_events_lost_total"), Some(7.0));
        assert_eq!(value(&t, "port_trace_unresolved_events_total"), Some(2.0));
        assert_eq!(value(&t, "port_trace_ring_buffer_fill_ratio"), Some(0.5));
    }

    #[test]
    fn destination_gauges_stay_bounded() {
        let mut a = Aggregator::new(100_000, 5);
        let range = UsableRange::new(40000, 49999, vec![]);
        let mut sockets = Vec::new();
        for i in 0..10_000u32 {
            let d = Ipv4Addr::from(0x0a00_0000 + i);
            sockets.push(SocketRecord {
                proto: Proto::Tcp,
                family: Family::V4,
                state: SockState::Established,
                local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                local_port: 40000 + (i % 10_000) as u16,
                remote_addr: IpAddr::V4(d),
                remote_port: 443,
            });
            a.ingest(ev(
                "connect",
                40000 + (i % 10_000) as u16,
                Some((d, 443)),
                "ok",
                i as u64,
            ));
        }
        let ns = NetnsState {
            netns: 7,
            range: Some(range),
            sockets: Some(sockets),
            note: None,
        };
        a.refresh(&[ns]);
        let t = a.metrics.render();
        let series = |name: &str| t.lines().filter(|l| l.starts_with(name)).count();
        assert_eq!(series("port_trace_destination_pressure_ratio{"), 5);
        assert_eq!(series("port_trace_destination_exhaustion_seconds{"), 5);
        assert_eq!(
            value(&t, "port_trace_range_usable_ports{netns=\"7\"}"),
            Some(10_000.0)
        );
        assert_eq!(
            value(
                &t,
                "port_trace_ports_in_use{netns=\"7\",proto=\"tcp\",state=\"established\"}"
            ),
            Some(10_000.0)
        );
        assert!(t.contains("port_trace_allocation_pattern_info{netns=\"7\",op=\"connect\""));
    }
}
