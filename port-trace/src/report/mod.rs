//! The per-stream summary: allocation pattern, pressure, failures, forecast and hazards, joined
//! from events, the namespace's range and its socket table. Pure: plain data in and out.
//!
//! * [`verdicts`]: each stream's pattern verdict, from events fed one at a time.
//! * [`summarizer`]: the rest of the summary, the same way: state per stream, not per event.
//! * [`workloads`]: the per-workload view (unit, container, pod), bounded the same way.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    analysis::{CounterScope, GlobalAnalysis, Parity, Pattern, StreamKey},
    event::{Event, Op},
    netns::NetnsState,
    pressure::{Forecast, SocketRecord, UsableRange},
};

pub mod nat;
pub mod summarizer;
pub mod verdicts;
pub mod workloads;

pub use summarizer::Summarizer;
pub use verdicts::Verdicts;
pub use workloads::WorkloadSummary;

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
    /// Allocations per second over the last 5 s of the recording.
    pub rate_per_s: f64,
    /// When the ports this stream draws from run out, as of the namespace's snapshot: per
    /// destination for TCP connect(), the namespace's TCP bind space for TCP bind()/listen().
    /// None without a socket table, and for UDP.
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
    /// TCP connects whose local address:port equals the destination (the first
    /// [`summarizer::MAX_SELF_CONNECTS`]).
    pub self_connects: Vec<SelfConnect>,
    /// Self-connects beyond those listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub self_connects_not_listed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub streams: Vec<StreamSummary>,
    /// The unkeyed connect() stream across destinations.
    pub global: GlobalAnalysis,
    pub hazards: Hazards,
    pub namespaces: Vec<NetnsState>,
    /// Events of a recording that came more than [`crate::sinks::reorder::REORDER_EVENTS`]
    /// events after a newer one, analysed where they came instead of in time order.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub out_of_order: u64,
    /// Who allocated: one row per workload, busiest first.
    #[serde(default)]
    pub workloads: Vec<WorkloadSummary>,
    /// NAT port spaces (docs/nat.md), most pressing first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat: Vec<nat::NatSpaceSummary>,
}

/// Builds the summary. `default_range` is used for namespaces whose range is unknown.
pub fn summarize(
    events: &[Event],
    namespaces: &[NetnsState],
    default_range: &UsableRange,
) -> Summary {
    let ranges = namespaces
        .iter()
        .filter_map(|n| Some((n.netns, n.range.clone()?)))
        .collect();
    let connect_netns = events
        .iter()
        .find(|e| e.op == Op::Connect && e.is_ok())
        .map(|e| e.netns);
    let mut s = Summarizer::new(ranges, default_range.clone(), connect_netns);
    let mut order: Vec<&Event> = events.iter().collect();
    // Stable: events of one nanosecond keep their order.
    order.sort_by_key(|e| e.ts_ns);
    for e in order {
        s.push(e);
    }
    s.finish(namespaces.to_vec())
}

fn key_text(k: &StreamKey) -> String {
    match (k.daddr, k.dport) {
        (Some(IpAddr::V6(a)), Some(p)) => format!("{} {} -> [{a}]:{p}", k.op, k.proto),
        (Some(a), Some(p)) => format!("{} {} -> {a}:{p}", k.op, k.proto),
        _ => format!("{} {} {}", k.op, k.proto, k.family),
    }
}

/// "exhaustion in ~10s" or "none", and what it rests on.
pub fn forecast_text(f: &Forecast) -> String {
    let when = match f.seconds_to_exhaustion {
        Some(s) if s <= 0.0 => "exhausted now".to_string(),
        Some(s) => format!("exhaustion in ~{s:.0}s"),
        None => "exhaustion: none".to_string(),
    };
    let hold = if f.tw_reuse {
        format!("closed ports held {:.0}s (tcp_tw_reuse)", f.hold_s)
    } else {
        format!(
            "closed ports held {:.0}s ({:.0}% left TIME_WAIT)",
            f.hold_s,
            f.time_wait_share * 100.0
        )
    };
    format!(
        "{when} at {:.1}/s; {hold}; sustainable {:.1}/s",
        f.rate_per_s, f.sustainable_rate
    )
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// The per-workload rows, under the streams.
fn render_workloads(out: &mut String, rows: &[WorkloadSummary]) {
    use std::fmt::Write;
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{:<64} {:<10} {:>7} {:>8} {:<18} {:>8} TOP STREAMS (its share, pressure)",
        "WORKLOAD", "KIND", "N", "RATE/S", "FAILURES", "PRESSURE"
    );
    for w in rows {
        let failures = if w.failures.is_empty() {
            "-".to_string()
        } else {
            w.failures
                .iter()
                .map(|(k, v)| format!("{k}x{v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let streams = w
            .top_streams
            .iter()
            .map(|s| {
                format!(
                    "{} ({}, {})",
                    key_text(&s.key),
                    pct(s.share),
                    pct(s.pressure)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let _ = writeln!(
            out,
            "{:<64} {:<10} {:>7} {:>8.1} {:<18} {:>8} {}",
            crate::sinks::print::printable(&w.label),
            w.workload.as_ref().map_or("-", |k| k.kind()),
            w.allocations,
            w.rate_per_s,
            failures,
            pct(w.worst_pressure),
            streams
        );
    }
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
        if let Some(f) = &st.forecast {
            let _ = writeln!(out, "    {}", forecast_text(f));
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
    if s.hazards.self_connects_not_listed > 0 {
        let _ = writeln!(
            out,
            "hazard: {} more self-connects not listed",
            s.hazards.self_connects_not_listed
        );
    }
    render_workloads(&mut out, &s.workloads);
    if s.out_of_order > 0 {
        let _ = writeln!(
            out,
            "note: {} events came more than {} events late and were analysed out of time order",
            s.out_of_order,
            crate::sinks::reorder::REORDER_EVENTS
        );
    }
    for n in &s.namespaces {
        if let Some(note) = &n.note {
            let _ = writeln!(out, "note: netns {}: {note}", n.netns);
        }
    }
    out.push_str(&nat::render(&s.nat));
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
            time_wait_ms: None,
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
            ..Default::default()
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
            ..Default::default()
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

    /// The two cases, offline: 4,096 RST-closed connects leave no TIME_WAIT and no
    /// forecast; a ramp whose ports sit in TIME_WAIT runs out when the range fills.
    #[test]
    fn forecasts_follow_the_socket_table() {
        let range = UsableRange::new(40000, 40999, vec![]);
        let a = (Ipv4Addr::LOCALHOST, 5000);
        let ms = 1_000_000;
        // RST: 4,096 connects in 0.3 s, nothing left in the table.
        let events: Vec<Event> = (0..4096u64)
            .map(|i| {
                ev(
                    Op::Connect,
                    Proto::Tcp,
                    40000 + (i % 1000) as u16,
                    Some(a),
                    Outcome::Ok,
                    i * 300 * ms / 4096,
                )
            })
            .collect();
        let ns = NetnsState {
            netns: 7,
            range: Some(range.clone()),
            sockets: Some(vec![]),
            taken_ns: Some(400 * ms),
            ..Default::default()
        };
        let s = summarize(&events, &[ns], &range);
        let f = s.streams[0].forecast.expect("a forecast");
        assert_eq!(f.seconds_to_exhaustion, None, "{f:?}");
        assert_eq!(f.time_wait_share, 0.0);
        assert!(
            render_table(&s).contains("exhaustion: none"),
            "{}",
            render_table(&s)
        );

        // Ramp: 50/s for 10 s, every port in TIME_WAIT (entered 0..10 s ago).
        let events: Vec<Event> = (0..500u64)
            .map(|i| {
                ev(
                    Op::Connect,
                    Proto::Tcp,
                    40000 + i as u16,
                    Some(a),
                    Outcome::Ok,
                    i * 20 * ms,
                )
            })
            .collect();
        let socks: Vec<SocketRecord> = (0..500u32)
            .map(|i| SocketRecord {
                time_wait_ms: Some(50_000 + i * 20),
                ..sock(SockState::TimeWait, 40000 + i as u16, Some(a))
            })
            .collect();
        let ns = NetnsState {
            netns: 7,
            range: Some(range.clone()),
            sockets: Some(socks),
            taken_ns: Some(10_000 * ms),
            // tcp_tw_reuse = 0 (the default 2 would free these loopback ports after ~1 s).
            tcp: Some(crate::netns::range::TcpSysctls {
                tw_reuse: 0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = summarize(&events, std::slice::from_ref(&ns), &range);
        let secs = s.streams[0]
            .forecast
            .unwrap()
            .seconds_to_exhaustion
            .unwrap();
        assert!((secs - 10.0).abs() < 0.5, "{secs}");
        assert!(
            render_table(&s).contains("exhaustion in ~10s"),
            "{}",
            render_table(&s)
        );
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
            ..Default::default()
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
