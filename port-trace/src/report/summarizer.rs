//! The summary from events fed one at a time, in time order. Per stream it keeps what the
//! summary shows (successful allocations, failures by errno, the busiest commands, recent
//! allocations and the verdict's state), per namespace its recent TCP allocations: memory grows
//! with the number of streams, never with the number of events.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use super::{Hazards, SelfConnect, StreamSummary, Summary, Verdicts, workloads::Workloads};
use crate::{
    analysis::{StreamAnalysis, StreamKey},
    event::{Event, Op, Outcome, Proto},
    netns::NetnsState,
    pressure::{
        self, Allocations, CLOSE_WINDOW_NS, DestForecast, Forecast, RATE_WINDOW_NS, Recent,
        SocketRecord, UsableRange, bind_forecast, each_connect_forecast, listener_hazards,
    },
};

/// Commands listed per stream.
const TOP_COMMS: usize = 3;
/// Distinct command names counted exactly per stream (a process name is at most 15 bytes);
/// beyond, the least counted name makes room (Space-Saving), so a stream's memory stays
/// bounded whatever its processes are called.
pub const MAX_COMMS: usize = 64;
/// Self-connects listed in the hazards; the rest are counted.
pub const MAX_SELF_CONNECTS: usize = 1000;

/// Command names shared by the streams: a busy host has a few dozen names and a hundred
/// thousand streams. At most [`MAX_NAMES`] are shared; further names are each stream's own.
#[derive(Debug, Default)]
struct Names(HashSet<Arc<str>, foldhash::fast::RandomState>);

/// Distinct command names shared.
const MAX_NAMES: usize = 65_536;

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        match self.shared(name) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = Arc::from(name);
                if self.0.len() < MAX_NAMES {
                    self.0.insert(n.clone());
                }
                n
            }
        }
    }

    /// The shared copy of `name`, if it has one.
    fn shared(&self, name: &str) -> Option<&Arc<str>> {
        self.0.get(name)
    }
}

/// Counts per command name, at most [`MAX_COMMS`] of them (a short list: a stream has few).
#[derive(Debug, Default)]
struct Commands(Vec<(Arc<str>, u64)>);

impl Commands {
    fn add(&mut self, comm: &str, names: &mut Names) {
        // A shared name is the same copy in every stream: comparing pointers spares reading
        // each listed name (a cache miss apiece with 100,000 streams).
        let found = match names.shared(comm) {
            Some(shared) => self.0.iter_mut().find(|(c, _)| Arc::ptr_eq(c, shared)),
            None => self.0.iter_mut().find(|(c, _)| &**c == comm),
        };
        if let Some((_, n)) = found {
            *n += 1;
            return;
        }
        let mut n = 1;
        if self.0.len() >= MAX_COMMS {
            // Space-Saving: the newcomer inherits the smallest count, an upper bound of its own.
            let least = (0..self.0.len()).min_by(|&a, &b| {
                let (a, b) = (&self.0[a], &self.0[b]);
                a.1.cmp(&b.1).then(b.0.cmp(&a.0))
            });
            if let Some(i) = least {
                n += self.0.swap_remove(i).1;
            }
        }
        self.0.push((names.get(comm), n));
    }

    /// The busiest, most first (ties by name), at most [`TOP_COMMS`].
    fn top(&self) -> Vec<(String, u64)> {
        let mut top: Vec<(String, u64)> = self.0.iter().map(|(c, n)| (c.to_string(), *n)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(TOP_COMMS);
        top
    }
}

/// What one stream's row needs besides its verdict.
#[derive(Debug, Default)]
struct Tally {
    /// By outcome, named only in the row: a name per stream would cost more than the count.
    failures: BTreeMap<Outcome, u64>,
    comms: Commands,
    /// Successful allocations over the last minute, for the rate.
    recent: Option<Recent>,
}

pub struct Summarizer {
    /// Each stream's verdict state and its [`Tally`], in one entry.
    verdicts: Verdicts<Tally>,
    names: Names,
    /// Successful TCP allocations of any kind per namespace: the bind space's rate.
    tcp_allocs: HashMap<u32, Recent, foldhash::fast::RandomState>,
    last_event: u64,
    events: u64,
    /// Ports the kernel chose for TCP bind(0)/listen(): not hazards when listened on.
    chosen: HashSet<(u32, u16), foldhash::fast::RandomState>,
    self_connects: Vec<SelfConnect>,
    self_connects_not_listed: u64,
    out_of_order: u64,
    /// The per-workload view.
    workloads: Workloads,
    /// NAT events: their own port spaces, not the namespace's ephemeral range.
    nat: super::nat::NatSummarizer,
}

impl Summarizer {
    /// See [`Verdicts::new`] for the ranges.
    pub fn new(
        ranges: HashMap<u32, UsableRange>,
        default_range: UsableRange,
        connect_netns: Option<u32>,
    ) -> Self {
        Summarizer {
            verdicts: Verdicts::with_extra(ranges, default_range, connect_netns),
            names: Names::default(),
            tcp_allocs: HashMap::default(),
            last_event: 0,
            events: 0,
            chosen: HashSet::default(),
            self_connects: Vec::new(),
            self_connects_not_listed: 0,
            out_of_order: 0,
            workloads: Workloads::default(),
            nat: Default::default(),
        }
    }

    /// The next event, in time order.
    pub fn push(&mut self, e: &Event) {
        self.events += 1;
        self.last_event = self.last_event.max(e.ts_ns);
        if e.op == Op::Nat {
            self.nat.push(e);
            return;
        }
        let key = StreamKey::of(e);
        let ok = e.is_ok();
        self.workloads.push(e);
        let t = self.verdicts.push(&key, e.port, ok);
        if ok {
            t.recent
                .get_or_insert_with(|| Recent::new(e.ts_ns))
                .add(e.ts_ns);
        } else {
            *t.failures.entry(e.result).or_default() += 1;
        }
        t.comms.add(&e.comm, &mut self.names);
        if ok && e.proto == Proto::Tcp {
            self.tcp_allocs
                .entry(e.netns)
                .or_insert_with(|| Recent::new(e.ts_ns))
                .add(e.ts_ns);
        }
        if e.is_kernel_chosen_listen_port() {
            self.chosen.insert((e.netns, e.port));
        }
        if e.is_self_connect() {
            if self.self_connects.len() < MAX_SELF_CONNECTS {
                self.self_connects.push(SelfConnect {
                    ts_ns: e.ts_ns,
                    pid: e.pid,
                    comm: e.comm.clone(),
                    addr: e.saddr,
                    port: e.port,
                });
            } else {
                self.self_connects_not_listed += 1;
            }
        }
    }

    /// Events pushed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// How many events the caller could not put in time order (see [`Summary::out_of_order`]).
    pub fn set_out_of_order(&mut self, n: u64) {
        self.out_of_order = n;
    }

    /// The summary, with each namespace's socket table (read when the events ended). Each
    /// stream's state is dropped once its row is made.
    pub fn finish(self, namespaces: Vec<NetnsState>) -> Summary {
        let Summarizer {
            verdicts,
            tcp_allocs,
            last_event,
            chosen,
            self_connects,
            self_connects_not_listed,
            out_of_order,
            workloads,
            nat,
            ..
        } = self;
        let ns: HashMap<u32, &NetnsState> = namespaces.iter().map(|n| (n.netns, n)).collect();
        let mut dest_allocs: HashMap<u32, HashMap<(IpAddr, u16), Allocations>> = HashMap::new();
        for (k, t) in verdicts.extras() {
            if let (Op::Connect, Proto::Tcp, Some(daddr), Some(dport), Some(r)) =
                (k.op, k.proto, k.daddr, k.dport, &t.recent)
            {
                dest_allocs
                    .entry(k.netns)
                    .or_default()
                    .insert((daddr, dport), allocations(r, last_event));
            }
        }
        let mut spaces = Spaces {
            ns: &ns,
            last_event,
            dest_allocs,
            tcp_allocs: &tcp_allocs,
            by_netns: HashMap::new(),
        };
        let mut rows = Vec::with_capacity(verdicts.streams());
        let global = verdicts.finish_with(|key, samples, verdict, range, tally| {
            rows.push(summarize_stream(
                key,
                samples,
                verdict,
                Some(&tally),
                range,
                &mut spaces,
            ));
        });
        sort_most_pressing_first(&mut rows);
        let workloads = workloads.finish(&rows);
        let mut hazards = Hazards {
            self_connects,
            self_connects_not_listed,
            ..Default::default()
        };
        for n in &namespaces {
            if let (Some(r), Some(s)) = (&n.range, &n.sockets) {
                for l in listener_hazards(n.netns, r, s, &chosen) {
                    hazards.listeners_in_range.push((n.netns, l));
                }
            }
        }
        Summary {
            streams: rows,
            global,
            hazards,
            namespaces,
            out_of_order,
            workloads,
            nat: nat.finish(),
        }
    }
}

/// Recent allocations up to the end of the recording (its last event): the socket table is
/// read after tracing stopped, and the seconds in between saw no events.
fn allocations(r: &Recent, last_event: u64) -> Allocations {
    Allocations {
        rate_per_s: r.rate(last_event, RATE_WINDOW_NS),
        last_minute: r.count(last_event, CLOSE_WINDOW_NS),
    }
}

/// Per namespace, computed once and shared by its streams: recent allocations per
/// destination and for all of TCP, and the per-destination connect() forecasts. Forecasts
/// count from the namespace's snapshot (TIME_WAIT expiries are relative to it).
struct Spaces<'a> {
    ns: &'a HashMap<u32, &'a NetnsState>,
    last_event: u64,
    dest_allocs: HashMap<u32, HashMap<(IpAddr, u16), Allocations>>,
    tcp_allocs: &'a HashMap<u32, Recent, foldhash::fast::RandomState>,
    by_netns: HashMap<u32, HashMap<(IpAddr, u16), DestForecast>>,
}

impl<'a> Spaces<'a> {
    fn allocations(&self, recent: Option<&Recent>) -> Allocations {
        recent
            .map(|r| allocations(r, self.last_event))
            .unwrap_or_default()
    }

    fn sockets(&self, netns: u32) -> Option<&'a [SocketRecord]> {
        self.ns.get(&netns).and_then(|s| s.sockets.as_deref())
    }

    /// The connect() forecast toward one destination.
    fn dest(
        &mut self,
        netns: u32,
        dest: (IpAddr, u16),
        range: &UsableRange,
    ) -> Option<DestForecast> {
        let sockets = self.sockets(netns)?;
        if !self.by_netns.contains_key(&netns) {
            let allocs = self.dest_allocs.remove(&netns).unwrap_or_default();
            let tcp = self.ns.get(&netns).and_then(|n| n.tcp).unwrap_or_default();
            // Straight into the table: a sorted list of them all first would cost as much again.
            // Every destination with allocations has a forecast: no growing on the way.
            let mut by_dest = HashMap::with_capacity(allocs.len());
            each_connect_forecast(range, sockets, &tcp, &allocs, |d| {
                by_dest.insert((d.daddr, d.dport), d);
            });
            self.by_netns.insert(netns, by_dest);
        }
        self.by_netns[&netns]
            .get(&(dest.0.to_canonical(), dest.1))
            .cloned()
    }

    /// The forecast of the namespace's TCP bind space.
    fn bind(&self, netns: u32, range: &UsableRange) -> Option<Forecast> {
        let sockets = self.sockets(netns)?;
        let alloc = self.allocations(self.tcp_allocs.get(&netns));
        Some(bind_forecast(range, sockets, alloc))
    }
}

/// One stream's row: verdict, failures, busiest commands, pressure, rate and forecast.
fn summarize_stream(
    key: &StreamKey,
    samples: usize,
    a: StreamAnalysis,
    tally: Option<&Tally>,
    range: &UsableRange,
    spaces: &mut Spaces,
) -> StreamSummary {
    let sockets = spaces.sockets(key.netns);
    let dest = if key.proto == Proto::Tcp && key.op == Op::Connect {
        key.daddr.zip(key.dport)
    } else {
        None
    };
    let mut forecast = None;
    let (pressure, in_use, usable) = match (sockets, dest) {
        (Some(_), Some(d)) => {
            let (i, u) = match spaces.dest(key.netns, d, range) {
                Some(f) => {
                    forecast = Some(f.forecast);
                    (f.in_use, f.usable)
                }
                None => (0, range.usable),
            };
            (Some(pressure::ratio(i, u)), Some(i), Some(u))
        }
        (Some(socks), None) => {
            let p = pressure::bind_pressure(range, socks, key.proto);
            let usable = range.usable;
            if key.proto == Proto::Tcp && !key.has_destination() {
                forecast = spaces.bind(key.netns, range);
            }
            (
                Some(p),
                Some((p * usable as f64).round() as u32),
                Some(usable),
            )
        }
        (None, _) => (None, None, None),
    };
    let rate_per_s = spaces
        .allocations(tally.and_then(|t| t.recent.as_ref()))
        .rate_per_s;
    StreamSummary {
        key: key.clone(),
        samples,
        pattern: a.pattern,
        counter_scope: a.counter_scope,
        predictability: a.predictability,
        median_step: a.median_step,
        mode_step: a.mode_step,
        share_small_steps: a.share_small_steps,
        parity: a.parity,
        skips: a.skips,
        pressure,
        in_use,
        usable,
        failures: tally.map(failure_names).unwrap_or_default(),
        rate_per_s,
        forecast,
        top_comms: tally.map(|t| t.comms.top()).unwrap_or_default(),
        reason: a.reason,
    }
}

/// Failures by errno name.
fn failure_names(t: &Tally) -> BTreeMap<String, u64> {
    let mut named = BTreeMap::new();
    for (outcome, n) in &t.failures {
        *named.entry(outcome.name().into_owned()).or_default() += n;
    }
    named
}

/// Highest pressure first, then most failures, then most samples.
fn sort_most_pressing_first(streams: &mut [StreamSummary]) {
    let failures = |s: &StreamSummary| s.failures.values().sum::<u64>();
    streams.sort_by(|a, b| {
        b.pressure
            .unwrap_or(0.0)
            .total_cmp(&a.pressure.unwrap_or(0.0))
            .then(failures(b).cmp(&failures(a)))
            .then(b.samples.cmp(&a.samples))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Outcome, test_event};
    use std::net::Ipv4Addr;

    /// Issue 10: one stream's events, however many, are one entry; self-connects are listed up
    /// to a bound and counted beyond it.
    #[test]
    fn many_events_of_one_stream_are_one_entry() {
        let range = UsableRange::new(32768, 60999, vec![]);
        let mut s = Summarizer::new(HashMap::new(), range, None);
        for i in 0..5000u64 {
            let port = 40000 + (i % 1000) as u16;
            let dest = Some((Ipv4Addr::LOCALHOST, port));
            s.push(&test_event(
                Op::Connect,
                Proto::Tcp,
                port,
                dest,
                Outcome::Ok,
                i,
            ));
        }
        assert_eq!(s.verdicts.streams(), 1000);
        let mut s = Summarizer::new(HashMap::new(), s.verdicts.range(7).clone(), None);
        for i in 0..5000u64 {
            let dest = Some((Ipv4Addr::LOCALHOST, 5000));
            s.push(&test_event(
                Op::Connect,
                Proto::Tcp,
                40000,
                dest,
                Outcome::Ok,
                i,
            ));
        }
        assert_eq!(s.verdicts.streams(), 1);
        assert_eq!(s.self_connects.len(), 0);
        let summary = s.finish(Vec::new());
        assert_eq!(summary.streams[0].samples, 5000);
        assert_eq!(summary.hazards.self_connects_not_listed, 0);
    }

    /// Issue 10: a recording twice as long, of the same streams (Linux-like per-destination
    /// counters to 200 destinations), holds as many streams, and each keeps its verdict with
    /// twice the samples.
    #[test]
    fn twice_as_long_keeps_the_streams_and_their_verdicts() {
        let summarize = |rounds: u64| {
            let range = UsableRange::new(32768, 60999, vec![]);
            let mut s = Summarizer::new(HashMap::new(), range, None);
            let mut counters: Vec<u64> = (0..200u64).map(|d| d * 7919).collect();
            let mut ts = 0;
            for r in 0..rounds {
                for (d, c) in counters.iter_mut().enumerate() {
                    *c += 2 + 2 * ((r * 31 + d as u64 * 17) % 8);
                    let port = 32768 + (*c % 28232) as u16;
                    let dest = Some((Ipv4Addr::new(10, 0, (d / 256) as u8, d as u8), 443));
                    ts += 1000;
                    s.push(&test_event(
                        Op::Connect,
                        Proto::Tcp,
                        port,
                        dest,
                        Outcome::Ok,
                        ts,
                    ));
                }
            }
            (s.verdicts.streams(), s.finish(Vec::new()))
        };
        let (n_short, short) = summarize(20);
        let (n_long, long) = summarize(40);
        assert_eq!((n_short, n_long), (200, 200));
        assert_eq!(short.global.pattern, long.global.pattern);
        assert_eq!(short.global.counter_scope, long.global.counter_scope);
        let long: HashMap<&StreamKey, &StreamSummary> =
            long.streams.iter().map(|s| (&s.key, s)).collect();
        for s in &short.streams {
            let l = long[&s.key];
            assert_eq!(
                s.pattern,
                crate::analysis::Pattern::Sequential,
                "{}",
                s.reason
            );
            assert_eq!((l.pattern, l.counter_scope), (s.pattern, s.counter_scope));
            assert_eq!(l.samples, 2 * s.samples);
        }
    }

    #[test]
    fn self_connects_are_listed_up_to_a_bound() {
        let range = UsableRange::new(32768, 60999, vec![]);
        let mut s = Summarizer::new(HashMap::new(), range, None);
        for i in 0..(MAX_SELF_CONNECTS as u64 + 5) {
            let dest = Some((Ipv4Addr::LOCALHOST, 40000));
            s.push(&test_event(
                Op::Connect,
                Proto::Tcp,
                40000,
                dest,
                Outcome::Ok,
                i,
            ));
        }
        let summary = s.finish(Vec::new());
        assert_eq!(summary.hazards.self_connects.len(), MAX_SELF_CONNECTS);
        assert_eq!(summary.hazards.self_connects_not_listed, 5);
        assert!(super::super::render_table(&summary).contains("5 more self-connects"));
    }

    #[test]
    fn command_counts_stay_bounded_and_exact_when_few() {
        let (mut c, mut names) = (Commands::default(), Names::default());
        for (name, n) in [("curl", 5), ("nginx", 3), ("envoy", 3)] {
            for _ in 0..n {
                c.add(name, &mut names);
            }
        }
        assert_eq!(
            c.top(),
            vec![("curl".into(), 5), ("envoy".into(), 3), ("nginx".into(), 3)]
        );
        // A flood of names: the count stays bounded and the busy name stays on top.
        for i in 0..10_000 {
            c.add(&format!("p{i}"), &mut names);
            c.add("curl", &mut names);
        }
        assert!(c.0.len() <= MAX_COMMS);
        assert_eq!(c.top()[0], ("curl".into(), 10_005));
    }
}
