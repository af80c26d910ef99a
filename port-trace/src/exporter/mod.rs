//! Prometheus metrics: counters fed by every event, gauges recomputed on each refresh from the
//! recent events, the namespaces' ranges and their socket tables.
//!
//! * [`metrics`]: the metric families (names and labels in docs/metrics.md; every label set is
//!   bounded).
//! * [`aggregate`]: the aggregator that events are fed into.
//! * [`refresh`]: the periodic, off-the-event-loop computation of pressure, forecasts and
//!   patterns.
//! * [`http`]: the `/metrics` and `/healthz` endpoint.
//! * [`connections`]: its connection table: deadlines, and eviction when full.
//! * [`web_config`]: `--web.config.file` (exporter-toolkit format), with [`tls`] (rustls) and
//!   [`auth`] (bcrypt basic auth).
//! * [`window`]: the recent events a refresh analyses, shared with it rather than copied.
//! * [`workloads`]: the top workloads (units, containers, pods) and namespace owners.

pub mod aggregate;
pub mod auth;
pub mod connections;
pub mod http;
pub mod metrics;
pub mod nat;
pub mod refresh;
pub mod tls;
pub mod web_config;
pub mod window;
pub mod workloads;

pub use aggregate::Aggregator;
pub use metrics::Metrics;
pub use refresh::{Computed, RefreshInput, compute};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Event, Op, Outcome, Proto, failed, test_event},
        netns::NetnsState,
        pressure::{Family, SockState, SocketRecord, UsableRange},
    };
    use std::net::{IpAddr, Ipv4Addr};

    fn ev(op: Op, port: u16, dest: Option<(Ipv4Addr, u16)>, result: Outcome, ts: u64) -> Event {
        test_event(op, Proto::Tcp, port, dest, result, ts)
    }

    /// The value of the one series named exactly `series` (name and labels).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(name, _)| *name == series)
            .and_then(|(_, v)| v.parse().ok())
    }

    #[test]
    fn counters_steps_and_skips() {
        let mut a = Aggregator::new(100, 3);
        let d = Some((Ipv4Addr::LOCALHOST, 80));
        for (i, p) in [40000u16, 40002, 40004, 40100].into_iter().enumerate() {
            a.ingest(ev(Op::Connect, p, d, Outcome::Ok, i as u64));
        }
        a.ingest(ev(Op::Connect, 0, d, failed(libc::EADDRNOTAVAIL), 9));
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
                time_wait_ms: None,
            });
            a.ingest(ev(
                Op::Connect,
                40000 + (i % 10_000) as u16,
                Some((d, 443)),
                Outcome::Ok,
                i as u64,
            ));
        }
        let ns = NetnsState {
            netns: 7,
            range: Some(range),
            sockets: Some(sockets),
            note: None,
            ..Default::default()
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
