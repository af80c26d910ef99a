//! A refresh: the expensive part of the daemon's work (namespace socket tables, pressure,
//! forecasts, pattern analysis), computed off the event loop from a snapshot of the aggregator
//! and applied to the gauges in one cheap step.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use super::{aggregate::netns_label, metrics::Metrics, window::Snapshot};
use crate::{
    analysis::{CounterScope, DEFAULT_RANGE, Pattern, StreamAnalysis},
    event::{Event, Op, Proto},
    netns::NetnsState,
    pressure::{
        self, Allocations, DestForecast, Forecast, SockState, UsableRange, bind_forecast,
        each_connect_forecast, forecast_order, listener_hazards,
    },
    report::Verdicts,
};

/// See [`super::Aggregator::refresh_input`].
pub struct RefreshInput {
    /// The event window, when it changed since the last pattern analysis.
    pub(super) events: Option<Snapshot>,
    /// One recent event per namespace: where to find a process inside it.
    pub newest_per_netns: Vec<Event>,
    /// Recent TCP connect() allocations per namespace and destination.
    pub(super) dest_allocs: HashMap<u32, HashMap<(IpAddr, u16), Allocations>>,
    /// Recent TCP allocations of any kind per namespace.
    pub(super) tcp_allocs: HashMap<u32, Allocations>,
    /// Namespaces where TCP bind()/listen() took a port in the last minute.
    pub(super) bind_active: HashSet<u32>,
    pub(super) chosen: HashSet<(u32, u16)>,
    pub(super) top_destinations: usize,
}

/// A refresh's results, computed off the event loop.
pub struct Computed {
    /// Namespaces whose range could be read.
    pub(super) namespaces: Vec<NsGauges>,
    netns_errors: u64,
    /// When the socket tables were read (wall-clock ns), if any was.
    taken_ns: Option<u64>,
    /// None when no event arrived since the last analysis: keep the current verdicts.
    patterns: Option<Vec<PatternRow>>,
    /// The most pressed destinations across namespaces, at most `top_destinations`.
    top: Vec<TopDest>,
    /// Who holds each namespace (`serve` reads /proc after computing; empty otherwise).
    pub netns_owners: HashMap<u32, crate::attribution::NetnsOwner>,
}

pub(super) struct NsGauges {
    pub(super) netns: u32,
    pub(super) range: UsableRange,
    sockets: Option<SocketGauges>,
}

/// What the socket table says about one namespace's range.
struct SocketGauges {
    in_use: BTreeMap<(Proto, SockState), i64>,
    bind_pressure: [(Proto, f64); 2],
    pressure_max: f64,
    listeners_in_range: i64,
    /// When TCP bind(0)/listen() runs out, when something uses them.
    bind_forecast: Option<Forecast>,
}

struct TopDest {
    netns: u32,
    dest: DestForecast,
}

struct PatternRow {
    netns: u32,
    proto: Proto,
    op: Op,
    pattern: Pattern,
    /// For `sequential`: the scope carrying the most samples among the sequential streams.
    scope: Option<CounterScope>,
    predictability: Option<f64>,
}

/// The expensive part of a refresh: socket tables, pressure, rates, and pattern analysis (only
/// when events arrived).
pub fn compute(input: RefreshInput, namespaces: Vec<NetnsState>) -> Computed {
    let mut dests = Vec::new();
    let gauges: Vec<NsGauges> = namespaces
        .iter()
        .filter_map(|ns| {
            let range = ns.range.clone()?;
            let sockets = socket_gauges(ns, &range, &input, &mut dests);
            Some(NsGauges {
                netns: ns.netns,
                range,
                sockets,
            })
        })
        .collect();
    let top = top_destinations(dests, input.top_destinations);
    let patterns = input.events.map(|window| patterns(&window, &namespaces));
    Computed {
        netns_errors: namespaces.iter().filter(|n| n.note.is_some()).count() as u64,
        taken_ns: namespaces.iter().filter_map(|n| n.taken_ns).min(),
        namespaces: gauges,
        patterns,
        top,
        netns_owners: HashMap::new(),
    }
}

/// Ports in use by state, bind pressure, per-destination forecasts and listener hazards of one
/// namespace (O(sockets)). Appends its destinations to `dests`.
fn socket_gauges(
    ns: &NetnsState,
    range: &UsableRange,
    input: &RefreshInput,
    dests: &mut Vec<(u32, DestForecast)>,
) -> Option<SocketGauges> {
    let sockets = ns.sockets.as_ref()?;
    let mut in_use: BTreeMap<(Proto, SockState), i64> = BTreeMap::new();
    for s in sockets.iter().filter(|s| range.contains(s.local_port)) {
        *in_use.entry((s.proto, s.state)).or_default() += 1;
    }
    let tcp = ns.tcp.unwrap_or_default();
    let empty = HashMap::new();
    let allocs = input.dest_allocs.get(&ns.netns).unwrap_or(&empty);
    // The namespace's most pressed destinations, at most `top_destinations` held at a time:
    // the rest can never make the top (one `usable` per namespace, so this order agrees with
    // [`top_destinations`]).
    let keep = input.top_destinations.max(1);
    let mut top: Vec<DestForecast> = Vec::new();
    let mut pressure_max: f64 = 0.0;
    each_connect_forecast(range, sockets, &tcp, allocs, |d| {
        pressure_max = pressure_max.max(pressure::ratio(d.in_use, d.usable));
        top.push(d);
        if top.len() >= 2 * keep {
            top.sort_by(forecast_order);
            top.truncate(keep);
        }
    });
    top.sort_by(forecast_order);
    top.truncate(input.top_destinations);
    dests.extend(top.into_iter().map(|d| (ns.netns, d)));
    let bind_forecast = input.bind_active.contains(&ns.netns).then(|| {
        let alloc = input.tcp_allocs.get(&ns.netns).copied().unwrap_or_default();
        bind_forecast(range, sockets, alloc)
    });
    Some(SocketGauges {
        in_use,
        bind_pressure: [Proto::Tcp, Proto::Udp]
            .map(|p| (p, pressure::bind_pressure(range, sockets, p))),
        pressure_max,
        listeners_in_range: listener_hazards(ns.netns, range, sockets, &input.chosen).len() as i64,
        bind_forecast,
    })
}

/// The `top` destinations: soonest exhaustion first, then most pressed.
fn top_destinations(mut dests: Vec<(u32, DestForecast)>, top: usize) -> Vec<TopDest> {
    dests.sort_by(|a, b| {
        pressure::forecast::soonest(&a.1.forecast, &b.1.forecast).then(
            pressure::ratio(b.1.in_use, b.1.usable)
                .total_cmp(&pressure::ratio(a.1.in_use, a.1.usable)),
        )
    });
    dests.truncate(top);
    dests
        .into_iter()
        .map(|(netns, dest)| TopDest { netns, dest })
        .collect()
}

/// One (namespace, protocol, operation)'s streams, folded one at a time.
#[derive(Default)]
struct Group {
    /// Samples behind each decided pattern.
    weight: BTreeMap<Pattern, usize>,
    /// Samples behind each counter scope of the sequential streams.
    scopes: BTreeMap<CounterScope, usize>,
    /// Sample-weighted predictability: sum and weight.
    predictability: (f64, usize),
}

impl Group {
    fn add(&mut self, samples: usize, a: &StreamAnalysis) {
        if a.pattern != Pattern::InsufficientData {
            *self.weight.entry(a.pattern).or_default() += samples;
        }
        if a.pattern == Pattern::Sequential {
            let scope = a.counter_scope.unwrap_or(CounterScope::Undetermined);
            *self.scopes.entry(scope).or_default() += samples;
        }
        if let Some(p) = a.predictability {
            self.predictability.0 += p * samples as f64;
            self.predictability.1 += samples;
        }
    }

    /// The verdict carrying the most samples, its scope, and the weighted predictability.
    fn row(self, (netns, proto, op): (u32, Proto, Op)) -> PatternRow {
        let pattern = self
            .weight
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(p, _)| *p)
            .unwrap_or(Pattern::InsufficientData);
        let scope = (pattern == Pattern::Sequential)
            .then(|| self.scopes.iter().max_by_key(|(_, n)| **n).map(|(c, _)| *c))
            .flatten();
        let (sum, n) = self.predictability;
        PatternRow {
            netns,
            proto,
            op,
            pattern,
            scope,
            predictability: (n > 0).then(|| sum / n as f64),
        }
    }
}

/// Per namespace, protocol and operation: the verdict carrying the most samples, and the
/// sample-weighted predictability. Streams' verdicts are folded as they come: what is held is
/// each stream's classifier state, never every verdict (100,000 destinations are 100,000).
fn patterns(window: &Snapshot, namespaces: &[NetnsState]) -> Vec<PatternRow> {
    let default = UsableRange::new(DEFAULT_RANGE.0, DEFAULT_RANGE.1, vec![]);
    let ranges = namespaces
        .iter()
        .filter_map(|n| Some((n.netns, n.range.clone()?)))
        .collect();
    let connect_netns = window
        .iter()
        .find(|s| s.key.op == Op::Connect && s.ok)
        .map(|s| s.key.netns);
    let mut verdicts = Verdicts::new(ranges, default, connect_netns);
    let mut order: Vec<_> = window.iter().collect();
    // Stable: events of one nanosecond keep their order.
    order.sort_by_key(|s| s.ts_ns);
    for s in order {
        verdicts.push(&s.key, s.port, s.ok);
    }
    let mut groups: BTreeMap<(u32, Proto, Op), Group> = BTreeMap::new();
    verdicts.finish(|key, samples, a, _| {
        groups
            .entry((key.netns, key.proto, key.op))
            .or_default()
            .add(samples, &a);
    });
    groups.into_iter().map(|(k, g)| g.row(k)).collect()
}

impl Computed {
    /// Sets every gauge (cheap; under the aggregator's lock).
    /// The top destinations' pressure, by (netns, address, port).
    pub(super) fn destination_pressures(&self) -> HashMap<(u32, IpAddr, u16), f64> {
        self.top
            .iter()
            .map(|t| {
                let p = pressure::ratio(t.dest.in_use, t.dest.usable);
                ((t.netns, t.dest.daddr, t.dest.dport), p)
            })
            .collect()
    }

    /// The owners of the namespaces this refresh read, in namespace order.
    pub(super) fn netns_owners(&self) -> Vec<(u32, crate::attribution::NetnsOwner)> {
        let mut v: Vec<_> = self
            .namespaces
            .iter()
            .filter_map(|n| Some((n.netns, self.netns_owners.get(&n.netns)?.clone())))
            .collect();
        v.sort_by_key(|(n, _)| *n);
        v
    }

    pub(super) fn apply(&self, m: &Metrics) {
        m.namespaces.reset();
        m.destinations.reset();
        m.health.netns_errors.inc_by(self.netns_errors);
        if let Some(t) = self.taken_ns {
            m.health.last_refresh.set(t as f64 / 1e9);
        }
        for ns in &self.namespaces {
            ns.apply(m);
        }
        for t in &self.top {
            t.apply(m);
        }
        if let Some(patterns) = &self.patterns {
            m.patterns.info.reset();
            m.patterns.predictability.reset();
            for p in patterns {
                p.apply(m);
            }
        }
    }
}

impl NsGauges {
    fn apply(&self, m: &Metrics) {
        let n = &m.namespaces;
        let label = netns_label(self.netns);
        let range = &self.range;
        n.range_low
            .with_label_values(&[&label])
            .set(range.low as i64);
        n.range_high
            .with_label_values(&[&label])
            .set(range.high as i64);
        n.range_usable
            .with_label_values(&[&label])
            .set(range.usable as i64);
        n.range_reserved
            .with_label_values(&[&label])
            .set(range.span() as i64 - range.usable as i64);
        let Some(socks) = &self.sockets else { return };
        for ((proto, state), count) in &socks.in_use {
            n.ports_in_use
                .with_label_values(&[&label, proto.name(), state.name()])
                .set(*count);
        }
        for (proto, p) in &socks.bind_pressure {
            n.bind_pressure
                .with_label_values(&[&label, proto.name()])
                .set(*p);
        }
        n.pressure_max
            .with_label_values(&[&label])
            .set(socks.pressure_max);
        n.listeners_in_range
            .with_label_values(&[&label])
            .set(socks.listeners_in_range);
        if let Some(f) = &socks.bind_forecast {
            n.bind_exhaustion
                .with_label_values(&[&label, Proto::Tcp.name()])
                .set(f.seconds_to_exhaustion.unwrap_or(f64::INFINITY));
        }
    }
}

impl TopDest {
    fn apply(&self, m: &Metrics) {
        let d = &m.destinations;
        let labels = [
            netns_label(self.netns),
            self.dest.daddr.to_string(),
            self.dest.dport.to_string(),
        ];
        let labels: [&str; 3] = [&labels[0], &labels[1], &labels[2]];
        let f = &self.dest.forecast;
        d.pressure
            .with_label_values(&labels)
            .set(pressure::ratio(self.dest.in_use, self.dest.usable));
        d.rate.with_label_values(&labels).set(f.rate_per_s);
        d.sustainable
            .with_label_values(&labels)
            .set(f.sustainable_rate);
        d.exhaustion
            .with_label_values(&labels)
            .set(f.seconds_to_exhaustion.unwrap_or(f64::INFINITY));
        d.time_wait_share
            .with_label_values(&labels)
            .set(f.time_wait_share);
    }
}

impl PatternRow {
    fn apply(&self, m: &Metrics) {
        let label = netns_label(self.netns);
        let (proto, op) = (self.proto.name(), self.op.name());
        m.patterns
            .info
            .with_label_values(&[
                &label,
                proto,
                op,
                self.pattern.as_str(),
                CounterScope::label(self.scope),
            ])
            .set(1);
        if let Some(v) = self.predictability {
            m.patterns
                .predictability
                .with_label_values(&[&label, proto, op])
                .set(v);
        }
    }
}
