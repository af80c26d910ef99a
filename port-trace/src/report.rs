//! The per-stream summary: allocation pattern, pressure, failures, forecast and hazards, joined
//! from events, the namespace's range and its socket table. Pure: plain data in and out.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use crate::{
    analysis::{self, CounterScope, GlobalAnalysis, Parity, Pattern, Sample, StreamKey},
    event::{Event, Op},
    netns::NetnsState,
    pressure::{
        self, DEFAULT_TIME_WAIT_SECS, Forecast, SocketRecord, UsableRange, allocation_rate,
        connect_pressure, listener_hazards,
    },
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamSummary {
    pub key: StreamKey,
    /// Successful allocations.
    pub samples: usize,
    /// Sequential, random or insufficient data.
    pub pattern: Pattern,
    /// For `sequential`: global, per-destination or undetermined; `None` otherwise.
    #[serde(default)]
    pub counter_scope: Option<CounterScope>,
    pub predictability: Option<f64>,
    pub median_step: Option<u32>,
    pub mode_step: Option<u32>,
    pub share_small_steps: Option<f64>,
    pub parity: Parity,
    pub skips: usize,
    /// In use / usable for this destination (connect) or this protocol (bind-style).
    pub pressure: Option<f64>,
    pub in_use: Option<u32>,
    pub usable: Option<u32>,
    /// Failures by errno name.
    pub failures: BTreeMap<String, u64>,
    /// Allocations per second over the last minute of the stream.
    pub rate_per_s: f64,
    pub forecast: Option<Forecast>,
    /// Busiest commands, most first (bounded).
    pub top_comms: Vec<(String, u64)>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfConnect {
    pub ts_ns: u64,
    pub pid: u32,
    pub comm: String,
    pub addr: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hazards {
    /// TCP listeners on a port inside their namespace's ephemeral range that the kernel did
    /// not choose for them.
    pub listeners_in_range: Vec<(u32, SocketRecord)>,
    /// TCP connects whose local address:port equals the destination.
    pub self_connects: Vec<SelfConnect>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub streams: Vec<StreamSummary>,
    /// The unkeyed connect() stream across destinations.
    pub global: GlobalAnalysis,
    pub hazards: Hazards,
    pub namespaces: Vec<NetnsState>,
}

const TOP_COMMS: usize = 3;

fn range_of(ns: &HashMap<u32, &NetnsState>, netns: u32, fallback: &UsableRange) -> UsableRange {
    ns.get(&netns)
        .and_then(|s| s.range.clone())
        .unwrap_or_else(|| fallback.clone())
}

/// Builds the summary. `default_range` is used for namespaces whose range is unknown.
pub fn summarize(
    events: &[Event],
    namespaces: &[NetnsState],
    default_range: &UsableRange,
) -> Summary {
    let ns: HashMap<u32, &NetnsState> = namespaces.iter().map(|n| (n.netns, n)).collect();
    let mut groups: BTreeMap<StreamKey, Vec<&Event>> = BTreeMap::new();
    for e in events {
        groups.entry(StreamKey::of(e)).or_default().push(e);
    }
    let connects = analyze_connects(events, &ns, default_range);
    let verdicts: HashMap<&StreamKey, &analysis::StreamAnalysis> = connects
        .streams
        .iter()
        .map(|s| (&s.key, &s.analysis))
        .collect();
    let span = Span {
        first: events.iter().map(|e| e.ts_ns).min().unwrap_or(0),
        last: events.iter().map(|e| e.ts_ns).max().unwrap_or(0),
    };
    let mut dest_pressure = DestPressureCache::default();
    let mut streams: Vec<StreamSummary> = groups
        .iter()
        .map(|(key, evs)| {
            let range = range_of(&ns, key.netns, default_range);
            let sockets = ns.get(&key.netns).and_then(|s| s.sockets.as_deref());
            let verdict = verdicts.get(key).map(|a| (*a).clone());
            summarize_stream(key, evs, &range, sockets, verdict, span, &mut dest_pressure)
        })
        .collect();
    sort_most_pressing_first(&mut streams);
    Summary {
        streams,
        global: connects.global,
        hazards: hazards(events, namespaces),
        namespaces: namespaces.to_vec(),
    }
}

/// The first and last event of the recording.
#[derive(Debug, Clone, Copy)]
struct Span {
    first: u64,
    last: u64,
}

/// Pattern analysis of every successful connect, all destinations in time order: the
/// per-destination verdicts and the verdict on the unkeyed global stream.
fn analyze_connects(
    events: &[Event],
    ns: &HashMap<u32, &NetnsState>,
    default_range: &UsableRange,
) -> analysis::Report {
    let samples: Vec<Sample> = events
        .iter()
        .filter(|e| e.op == Op::Connect && e.is_ok())
        .map(|e| Sample {
            ts_ns: e.ts_ns,
            port: e.port,
            key: StreamKey::of(e),
        })
        .collect();
    let range = samples
        .first()
        .map(|s| range_of(ns, s.key.netns, default_range))
        .unwrap_or_else(|| default_range.clone());
    analysis::analyze(&samples, (range.low, range.high))
}

/// Per-destination connect() pressure of each namespace, computed once per namespace (one pass
/// over its socket table) and shared by its streams.
#[derive(Default)]
struct DestPressureCache {
    /// Per namespace: pressure by destination, and the ports connect() may use there.
    by_netns: HashMap<u32, (ByDestination, u32)>,
}

type ByDestination = HashMap<(IpAddr, u16), pressure::DestPressure>;

impl DestPressureCache {
    /// (pressure, in use, usable) toward one destination.
    fn get(
        &mut self,
        netns: u32,
        dest: Option<(IpAddr, u16)>,
        range: &UsableRange,
        sockets: &[SocketRecord],
    ) -> (f64, u32, u32) {
        let (per_dest, any_usable) = self.by_netns.entry(netns).or_insert_with(|| {
            let all = connect_pressure(range, sockets);
            let usable = all.first().map(|d| d.usable).unwrap_or(range.usable);
            let by_dest = all.into_iter().map(|d| ((d.daddr, d.dport), d)).collect();
            (by_dest, usable)
        });
        match dest.and_then(|k| per_dest.get(&k)) {
            Some(d) => (d.pressure, d.in_use, d.usable),
            None => (0.0, 0, *any_usable),
        }
    }
}

/// One stream's row: verdict, failures, busiest commands, pressure, rate and forecast.
fn summarize_stream(
    key: &StreamKey,
    evs: &[&Event],
    range: &UsableRange,
    sockets: Option<&[SocketRecord]>,
    verdict: Option<analysis::StreamAnalysis>,
    span: Span,
    dest_pressure: &mut DestPressureCache,
) -> StreamSummary {
    let ok: Vec<&Event> = evs.iter().copied().filter(|e| e.is_ok()).collect();
    let mut sorted: Vec<(u64, u16)> = ok.iter().map(|e| (e.ts_ns, e.port)).collect();
    sorted.sort();
    let ports: Vec<u16> = sorted.iter().map(|p| p.1).collect();
    let a = verdict.unwrap_or_else(|| analysis::classify_local(&ports, (range.low, range.high)));
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for e in evs.iter().filter(|e| !e.is_ok()) {
        *failures.entry(e.result.name().into_owned()).or_default() += 1;
    }
    let (pressure, in_use, usable) = match sockets {
        Some(socks) if key.has_destination() => {
            let (p, i, u) = dest_pressure.get(key.netns, key.daddr.zip(key.dport), range, socks);
            (Some(p), Some(i), Some(u))
        }
        Some(socks) => {
            let p = pressure::bind_pressure(range, socks, key.proto);
            let usable = range.usable;
            (
                Some(p),
                Some((p * usable as f64).round() as u32),
                Some(usable),
            )
        }
        None => (None, None, None),
    };
    let rate_per_s = allocation_rate(ok.iter().map(|e| e.ts_ns), span.first, span.last);
    // Only connect() ports linger in TIME_WAIT after use; bind-style ports free on close.
    let forecast = match (in_use, usable) {
        (Some(i), Some(u)) if key.has_destination() => {
            Some(pressure::forecast(i, u, rate_per_s, DEFAULT_TIME_WAIT_SECS))
        }
        _ => None,
    };
    StreamSummary {
        key: key.clone(),
        samples: ok.len(),
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
        failures,
        rate_per_s,
        forecast,
        top_comms: top_comms(evs),
        reason: a.reason,
    }
}

/// The busiest commands of a stream, most first, at most [`TOP_COMMS`].
fn top_comms(evs: &[&Event]) -> Vec<(String, u64)> {
    let mut comms: HashMap<&str, u64> = HashMap::new();
    for e in evs {
        *comms.entry(e.comm.as_str()).or_default() += 1;
    }
    let mut top: Vec<(String, u64)> = comms.into_iter().map(|(c, n)| (c.to_string(), n)).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(TOP_COMMS);
    top
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

/// Listeners inside the range that the kernel did not hand out, and self-connects.
fn hazards(events: &[Event], namespaces: &[NetnsState]) -> Hazards {
    let chosen: HashSet<(u32, u16)> = events
        .iter()
        .filter(|e| e.is_kernel_chosen_listen_port())
        .map(|e| (e.netns, e.port))
        .collect();
    let mut hazards = Hazards::default();
    for n in namespaces {
        if let (Some(r), Some(s)) = (&n.range, &n.sockets) {
            for l in listener_hazards(n.netns, r, s, &chosen) {
                hazards.listeners_in_range.push((n.netns, l));
            }
        }
    }
    for e in events.iter().filter(|e| e.is_self_connect()) {
        hazards.self_connects.push(SelfConnect {
            ts_ns: e.ts_ns,
            pid: e.pid,
            comm: e.comm.clone(),
            addr: e.saddr,
            port: e.port,
        });
    }
    hazards
}

fn key_text(k: &StreamKey) -> String {
    match (k.daddr, k.dport) {
        (Some(IpAddr::V6(a)), Some(p)) => format!("{} {} -> [{a}]:{p}", k.op, k.proto),
        (Some(a), Some(p)) => format!("{} {} -> {a}:{p}", k.op, k.proto),
        _ => format!("{} {} {}", k.op, k.proto, k.family),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// The human-readable summary table.
pub fn render_table(s: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:>10} {:>6} {:<17} {:<15} {:>7} {:>6} {:>5} {:>8} {:<18} TOP COMMS",
        "STREAM",
        "NETNS",
        "N",
        "PATTERN",
        "COUNTER",
        "PREDICT",
        "STEP",
        "SKIPS",
        "PRESSURE",
        "FAILURES"
    );
    for st in &s.streams {
        let failures = if st.failures.is_empty() {
            "-".to_string()
        } else {
            st.failures
                .iter()
                .map(|(k, v)| format!("{k}x{v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let comms = st
            .top_comms
            .iter()
            .map(|(c, n)| format!("{c}({n})"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "{:<34} {:>10} {:>6} {:<17} {:<15} {:>7} {:>6} {:>5} {:>8} {:<18} {}",
            key_text(&st.key),
            st.key.netns,
            st.samples,
            st.pattern.as_str(),
            st.counter_scope.map_or("-", CounterScope::as_str),
            pct(st.predictability),
            st.median_step
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            st.skips,
            pct(st.pressure),
            failures,
            comms
        );
        if let Some(f) = &st.forecast
            && let Some(secs) = f.seconds_to_exhaustion
        {
            let _ = writeln!(
                out,
                "    exhaustion in ~{secs:.0}s at {:.1}/s (sustainable {:.1}/s)",
                st.rate_per_s, f.sustainable_rate
            );
        }
    }
    let scope = s
        .global
        .counter_scope
        .map(|c| format!(", {c} counter"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "global connect stream: {}{scope} ({})",
        s.global.pattern.as_str(),
        s.global.reason
    );
    for (netns, l) in &s.hazards.listeners_in_range {
        let _ = writeln!(
            out,
            "hazard: {:?} {:?} socket on port {} inside the ephemeral range (netns {netns})",
            l.proto, l.state, l.local_port
        );
    }
    for sc in &s.hazards.self_connects {
        let _ = writeln!(
            out,
            "hazard: self-connect by {} (pid {}) on {}:{}",
            sc.comm, sc.pid, sc.addr, sc.port
        );
    }
    for n in &s.namespaces {
        if let Some(note) = &n.note {
            let _ = writeln!(out, "note: netns {}: {note}", n.netns);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Outcome, Proto, failed, test_event as ev};
    use crate::pressure::{Family, SockState};
    use std::net::Ipv4Addr;

    fn sock(state: SockState, lport: u16, remote: Option<(Ipv4Addr, u16)>) -> SocketRecord {
        SocketRecord {
            proto: Proto::Tcp,
            family: Family::V4,
            state,
            local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: lport,
            remote_addr: IpAddr::V4(remote.map(|r| r.0).unwrap_or(Ipv4Addr::UNSPECIFIED)),
            remote_port: remote.map(|r| r.1).unwrap_or(0),
        }
    }

    #[test]
    fn failures_and_pressure_go_to_the_right_destination() {
        let a = (Ipv4Addr::LOCALHOST, 5000);
        let b = (Ipv4Addr::new(127, 0, 0, 2), 5000);
        let mut events = Vec::new();
        for (i, p) in [40000, 40001, 40002, 40003].into_iter().enumerate() {
            events.push(ev(
                Op::Connect,
                Proto::Tcp,
                p,
                Some(a),
                Outcome::Ok,
                i as u64,
            ));
        }
        events.push(ev(
            Op::Connect,
            Proto::Tcp,
            0,
            Some(a),
            failed(libc::EADDRNOTAVAIL),
            10,
        ));
        events.push(ev(Op::Connect, Proto::Tcp, 40000, Some(b), Outcome::Ok, 11));
        let range = UsableRange::new(40000, 40003, vec![]);
        let mut socks: Vec<SocketRecord> = (40000..=40003)
            .map(|p| sock(SockState::Established, p, Some(a)))
            .collect();
        socks.push(sock(SockState::Established, 40000, Some(b)));
        socks.push(sock(SockState::Listen, 5000, None));
        let ns = NetnsState {
            netns: 7,
            range: Some(range.clone()),
            sockets: Some(socks),
            note: None,
        };
        let s = summarize(&events, &[ns], &range);
        let first = &s.streams[0];
        assert_eq!(first.key.daddr, Some(IpAddr::V4(a.0)));
        assert_eq!(first.pressure, Some(1.0));
        assert_eq!(first.failures.get("EADDRNOTAVAIL"), Some(&1));
        assert_eq!(first.samples, 4);
        let second = &s.streams[1];
        assert_eq!(second.key.daddr, Some(IpAddr::V4(b.0)));
        assert_eq!(second.pressure, Some(0.25));
        assert!(second.failures.is_empty());
        let table = render_table(&s);
        assert!(table.contains("EADDRNOTAVAILx1"), "{table}");
    }

    #[test]
    fn listeners_in_range_and_self_connects_are_hazards() {
        let range = UsableRange::new(40000, 40003, vec![]);
        let ns = NetnsState {
            netns: 7,
            range: Some(range.clone()),
            sockets: Some(vec![sock(SockState::Listen, 40001, None)]),
            note: None,
        };
        let events = vec![ev(
            Op::Connect,
            Proto::Tcp,
            40002,
            Some((Ipv4Addr::LOCALHOST, 40002)),
            Outcome::Ok,
            1,
        )];
        let s = summarize(&events, &[ns], &range);
        assert_eq!(s.hazards.listeners_in_range.len(), 1);
        assert_eq!(s.hazards.listeners_in_range[0].1.local_port, 40001);
        assert_eq!(s.hazards.self_connects.len(), 1);
        assert!(render_table(&s).contains("self-connect"));
    }

    #[test]
    fn ipv4_mapped_destination_is_the_ipv4_stream() {
        let a = (Ipv4Addr::LOCALHOST, 6000);
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let mut events = Vec::new();
        for i in 0..12u16 {
            let mut e = ev(
                Op::Connect,
                Proto::Tcp,
                40000 + 2 * i,
                Some(a),
                Outcome::Ok,
                u64::from(i),
            );
            if i % 2 == 1 {
                // An AF_INET6 socket connecting to ::ffff:127.0.0.1, as the kernel reports it.
                e.family = crate::event::Family::Inet6;
                e.saddr = "::ffff:127.0.0.1".parse().unwrap();
                e.daddr = Some(mapped);
            }
            events.push(e);
        }
        let range = UsableRange::new(40000, 40099, vec![]);
        let mut socks: Vec<SocketRecord> = (0..6u16)
            .map(|i| sock(SockState::Established, 40000 + 4 * i, Some(a)))
            .collect();
        socks.extend((0..6u16).map(|i| SocketRecord {
            family: Family::V6,
            remote_addr: mapped,
            ..sock(SockState::Established, 40002 + 4 * i, Some(a))
        }));
        let ns = NetnsState {
            netns: 7,
            range: Some(range.clone()),
            sockets: Some(socks),
            note: None,
        };
        let s = summarize(&events, &[ns], &range);
        assert_eq!(s.streams.len(), 1, "{:#?}", s.streams);
        let st = &s.streams[0];
        assert_eq!(st.key.daddr, Some(IpAddr::V4(a.0)));
        assert_eq!(st.key.family, crate::event::Family::Inet);
        assert_eq!(st.samples, 12);
        assert_eq!(st.in_use, Some(12));
        assert_eq!(s.global.destinations, 1);
        assert!(!render_table(&s).contains("ffff"));
    }

    #[test]
    fn without_a_socket_table_pressure_is_unknown() {
        let range = UsableRange::new(32768, 60999, vec![]);
        let events = vec![ev(Op::Bind, Proto::Udp, 40000, None, Outcome::Ok, 1)];
        let s = summarize(&events, &[], &range);
        assert_eq!(s.streams[0].pressure, None);
        assert_eq!(s.streams[0].pattern, Pattern::InsufficientData);
        assert_eq!(s.streams[0].counter_scope, None);
    }
}
