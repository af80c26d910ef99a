//! A refresh: the expensive part of the daemon's work (namespace socket tables, pressure,
//! forecasts, pattern analysis), computed off the event loop from a snapshot of the aggregator
//! and applied to the gauges in one cheap step.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use super::{aggregate::netns_label, metrics::Metrics};
use crate::{
    analysis::{CounterScope, DEFAULT_RANGE, Pattern},
    event::{Event, Op, Proto},
    netns::NetnsState,
    pressure::{
        self, DEFAULT_TIME_WAIT_SECS, SockState, UsableRange, allocation_rate, connect_pressure,
        listener_hazards,
    },
    report,
};

/// See [`super::Aggregator::refresh_input`].
pub struct RefreshInput {
    /// The event window, when it changed since the last pattern analysis.
    pub(super) events: Option<Vec<Event>>,
    /// One recent event per namespace: where to find a process inside it.
    pub newest_per_netns: Vec<Event>,
    /// Successful connects in the window: (netns, destination, time).
    pub(super) connects: Vec<(u32, (IpAddr, u16), u64)>,
    pub(super) chosen: HashSet<(u32, u16)>,
    pub(super) now_ns: u64,
    pub(super) top_destinations: usize,
}

/// A refresh's results, computed off the event loop.
pub struct Computed {
    /// Namespaces whose range could be read.
    pub(super) namespaces: Vec<NsGauges>,
    netns_errors: u64,
    /// None when no event arrived since the last analysis: keep the current verdicts.
    patterns: Option<Vec<PatternRow>>,
    /// The most pressed destinations across namespaces, at most `top_destinations`.
    top: Vec<TopDest>,
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
}

struct TopDest {
    netns: u32,
    dest: pressure::DestPressure,
    rate: f64,
    forecast: pressure::Forecast,
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
            let sockets = socket_gauges(ns, &range, &input.chosen, &mut dests);
            Some(NsGauges {
                netns: ns.netns,
                range,
                sockets,
            })
        })
        .collect();
    let top = top_destinations(dests, &input);
    let patterns = input.events.map(|events| patterns(&events, &namespaces));
    Computed {
        netns_errors: namespaces.iter().filter(|n| n.note.is_some()).count() as u64,
        namespaces: gauges,
        patterns,
        top,
    }
}

/// Ports in use by state, bind pressure, per-destination pressure and listener hazards of one
/// namespace (O(sockets)). Appends its destinations to `dests`.
fn socket_gauges(
    ns: &NetnsState,
    range: &UsableRange,
    chosen: &HashSet<(u32, u16)>,
    dests: &mut Vec<(u32, pressure::DestPressure)>,
) -> Option<SocketGauges> {
    let sockets = ns.sockets.as_ref()?;
    let mut in_use: BTreeMap<(Proto, SockState), i64> = BTreeMap::new();
    for s in sockets.iter().filter(|s| range.contains(s.local_port)) {
        *in_use.entry((s.proto, s.state)).or_default() += 1;
    }
    let per_dest = connect_pressure(range, sockets);
    let pressure_max = per_dest.first().map(|d| d.pressure).unwrap_or(0.0);
    dests.extend(per_dest.into_iter().map(|d| (ns.netns, d)));
    Some(SocketGauges {
        in_use,
        bind_pressure: [Proto::Tcp, Proto::Udp]
            .map(|p| (p, pressure::bind_pressure(range, sockets, p))),
        pressure_max,
        listeners_in_range: listener_hazards(ns.netns, range, sockets, chosen).len() as i64,
    })
}

/// The `top_destinations` most pressed destinations, with their rate and forecast.
fn top_destinations(
    mut dests: Vec<(u32, pressure::DestPressure)>,
    input: &RefreshInput,
) -> Vec<TopDest> {
    dests.sort_by(|a, b| b.1.pressure.total_cmp(&a.1.pressure));
    dests.truncate(input.top_destinations);
    let oldest = input
        .connects
        .iter()
        .map(|c| c.2)
        .min()
        .unwrap_or(input.now_ns);
    let mut times: HashMap<(u32, (IpAddr, u16)), Vec<u64>> = HashMap::new();
    for &(netns, dest, ts) in &input.connects {
        times.entry((netns, dest)).or_default().push(ts);
    }
    dests
        .into_iter()
        .map(|(netns, dest)| {
            let ts = times
                .remove(&(netns, (dest.daddr, dest.dport)))
                .unwrap_or_default();
            let rate = allocation_rate(ts, oldest, input.now_ns);
            let forecast =
                pressure::forecast(dest.in_use, dest.usable, rate, DEFAULT_TIME_WAIT_SECS);
            TopDest {
                netns,
                dest,
                rate,
                forecast,
            }
        })
        .collect()
}

/// Per namespace, protocol and operation: the verdict carrying the most samples, and the
/// sample-weighted predictability.
fn patterns(events: &[Event], namespaces: &[NetnsState]) -> Vec<PatternRow> {
    let default = UsableRange::new(DEFAULT_RANGE.0, DEFAULT_RANGE.1, vec![]);
    let summary = report::summarize(events, namespaces, &default);
    let mut groups: BTreeMap<(u32, Proto, Op), Vec<&report::StreamSummary>> = BTreeMap::new();
    for s in &summary.streams {
        groups
            .entry((s.key.netns, s.key.proto, s.key.op))
            .or_default()
            .push(s);
    }
    groups
        .into_iter()
        .map(|((netns, proto, op), streams)| {
            let mut weight: BTreeMap<Pattern, usize> = BTreeMap::new();
            for s in streams
                .iter()
                .filter(|s| s.pattern != Pattern::InsufficientData)
            {
                *weight.entry(s.pattern).or_default() += s.samples;
            }
            let pattern = weight
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(p, _)| *p)
                .unwrap_or(Pattern::InsufficientData);
            let mut scopes: BTreeMap<CounterScope, usize> = BTreeMap::new();
            for s in streams.iter().filter(|s| s.pattern == Pattern::Sequential) {
                let scope = s.counter_scope.unwrap_or(CounterScope::Undetermined);
                *scopes.entry(scope).or_default() += s.samples;
            }
            let scope = (pattern == Pattern::Sequential)
                .then(|| scopes.iter().max_by_key(|(_, n)| **n).map(|(c, _)| *c))
                .flatten();
            let (sum, n) = streams
                .iter()
                .filter_map(|s| s.predictability.map(|p| (p * s.samples as f64, s.samples)))
                .fold((0.0, 0usize), |a, b| (a.0 + b.0, a.1 + b.1));
            PatternRow {
                netns,
                proto,
                op,
                pattern,
                scope,
                predictability: (n > 0).then(|| sum / n as f64),
            }
        })
        .collect()
}

impl Computed {
    /// Sets every gauge (cheap; under the aggregator's lock).
    pub(super) fn apply(&self, m: &Metrics) {
        m.namespaces.reset();
        m.destinations.reset();
        m.health.netns_errors.inc_by(self.netns_errors);
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
        d.pressure
            .with_label_values(&labels)
            .set(self.dest.pressure);
        d.rate.with_label_values(&labels).set(self.rate);
        d.sustainable
            .with_label_values(&labels)
            .set(self.forecast.sustainable_rate);
        d.exhaustion
            .with_label_values(&labels)
            .set(self.forecast.seconds_to_exhaustion.unwrap_or(f64::INFINITY));
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
