//! The metric families, registered once, grouped by what they describe. Names and labels are
//! documented in docs/metrics.md; every label set is bounded.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::{
    event::{Family, Op, Outcome, Proto},
    hook_set::PathCoverage,
};

/// Labels of the per-destination gauges.
const DESTINATION: &[&str] = &["netns", "daddr", "dport"];

/// Buckets of the step-size histogram: powers of two up to the whole port space.
const STEP_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

/// Every metric family of the daemon.
pub struct Metrics {
    pub registry: Registry,
    pub events: EventMetrics,
    pub namespaces: NamespaceMetrics,
    pub destinations: DestinationMetrics,
    pub patterns: PatternMetrics,
    pub health: HealthMetrics,
    /// Who allocates (exporter/workloads.rs).
    pub workloads: super::workloads::WorkloadMetrics,
}

/// Fed by every event.
pub struct EventMetrics {
    pub assignments: IntCounterVec,
    pub failures: IntCounterVec,
    pub step_size: HistogramVec,
    pub skips: IntCounterVec,
    pub search: HistogramVec,
    pub self_connects: IntCounter,
    pub last_event: Gauge,
}

/// Per network namespace, from its sysctls and socket table at each refresh.
pub struct NamespaceMetrics {
    pub range_low: IntGaugeVec,
    pub range_high: IntGaugeVec,
    pub range_reserved: IntGaugeVec,
    pub range_usable: IntGaugeVec,
    pub ports_in_use: IntGaugeVec,
    pub pressure_max: GaugeVec,
    pub bind_pressure: GaugeVec,
    pub listeners_in_range: IntGaugeVec,
    pub bind_exhaustion: GaugeVec,
}

/// The top-N destinations by pressure, at each refresh.
pub struct DestinationMetrics {
    pub pressure: GaugeVec,
    pub exhaustion: GaugeVec,
    pub rate: GaugeVec,
    pub sustainable: GaugeVec,
    pub time_wait_share: GaugeVec,
}

/// Allocation pattern verdicts, recomputed when events arrived.
pub struct PatternMetrics {
    pub info: IntGaugeVec,
    pub predictability: GaugeVec,
}

/// The tracer's own health.
pub struct HealthMetrics {
    pub events_lost: IntCounter,
    pub unresolved: IntCounter,
    pub ring_fill: Gauge,
    pub hook_info: IntGaugeVec,
    pub last_drain: Gauge,
    pub last_refresh: Gauge,
    pub netns_errors: IntCounter,
}

/// Registers metric families on one registry; names are unique by construction.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn add<T: prometheus::core::Collector + Clone + 'static>(&self, c: T) -> T {
        self.0
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"))
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid counter"))
    }

    fn int_gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
    }

    fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(name, help).expect("valid gauge"))
    }

    fn histograms(
        &self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
        labels: &[&str],
    ) -> HistogramVec {
        self.add(
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid histogram"),
        )
    }
}

impl EventMetrics {
    fn register(r: &Registrar) -> Self {
        let m = Self {
            assignments: r.counters(
                "port_trace_assignments_total",
                "Ports the kernel handed out.",
                &["proto", "family", "op"],
            ),
            failures: r.counters(
                "port_trace_failures_total",
                "Failures to get a port.",
                &["proto", "family", "op", "errno"],
            ),
            step_size: r.histograms(
                "port_trace_step_size",
                "Distance between consecutive ports of a stream.",
                STEP_BUCKETS.to_vec(),
                &["proto", "op"],
            ),
            search: r.histograms(
                "port_trace_port_search_seconds",
                "Time the kernel spent choosing a port (fexit/kprobe hook sets only).",
                prometheus::exponential_buckets(1e-6, 4.0, 12).expect("valid"),
                &["proto", "op", "result"],
            ),
            skips: r.counters(
                "port_trace_skips_total",
                "Steps larger than the no-collision maximum: occupied ports skipped.",
                &["proto", "op"],
            ),
            self_connects: r.counter(
                "port_trace_self_connects_total",
                "TCP connects whose local address:port equals the destination.",
            ),
            last_event: r.gauge(
                "port_trace_last_event_timestamp_seconds",
                "Wall-clock time of the newest event.",
            ),
        };
        m.start_known_series_at_zero();
        m
    }

    /// Known label sets start at 0, so that increase() sees the first failure too.
    fn start_known_series_at_zero(&self) {
        for family in Family::ALL {
            for (proto, op, errno) in [
                (Proto::Tcp, Op::Connect, libc::EADDRNOTAVAIL),
                (Proto::Tcp, Op::Bind, libc::EADDRINUSE),
                (Proto::Udp, Op::Bind, libc::EADDRINUSE),
                (Proto::Tcp, Op::Listen, libc::EADDRINUSE),
                (Proto::Udp, Op::Autobind, libc::EAGAIN),
            ] {
                let errno = Outcome::from_errno(errno).name();
                self.failures
                    .with_label_values(&[proto.name(), family.name(), op.name(), &errno]);
                self.assignments
                    .with_label_values(&[proto.name(), family.name(), op.name()]);
            }
        }
        self.skips
            .with_label_values(&[Proto::Tcp.name(), Op::Connect.name()]);
    }
}

impl NamespaceMetrics {
    fn register(r: &Registrar) -> Self {
        Self {
            range_low: r.int_gauges(
                "port_trace_range_low",
                "ip_local_port_range low end.",
                &["netns"],
            ),
            range_high: r.int_gauges(
                "port_trace_range_high",
                "ip_local_port_range high end.",
                &["netns"],
            ),
            range_reserved: r.int_gauges(
                "port_trace_range_reserved_ports",
                "Ports of the range in ip_local_reserved_ports.",
                &["netns"],
            ),
            range_usable: r.int_gauges(
                "port_trace_range_usable_ports",
                "Range size minus reserved ports.",
                &["netns"],
            ),
            ports_in_use: r.int_gauges(
                "port_trace_ports_in_use",
                "Sockets holding a local port inside the range, by state.",
                &["netns", "proto", "state"],
            ),
            pressure_max: r.gauges(
                "port_trace_pressure_max_ratio",
                "Worst destination's connect() pressure in the namespace.",
                &["netns"],
            ),
            bind_pressure: r.gauges(
                "port_trace_bind_pressure_ratio",
                "Share of the usable range held by sockets of the protocol.",
                &["netns", "proto"],
            ),
            listeners_in_range: r.int_gauges(
                "port_trace_listeners_in_range",
                "TCP listeners on a port inside the ephemeral range the kernel did not choose.",
                &["netns"],
            ),
            bind_exhaustion: r.gauges(
                "port_trace_bind_exhaustion_seconds",
                "Seconds until TCP bind(0)/listen() in the namespace runs out of ports at the current rate (+Inf: never); set while bind()/listen() take ports.",
                &["netns", "proto"],
            ),
        }
    }

    /// Clears every series: a namespace that went away must not keep its last values.
    pub fn reset(&self) {
        for g in [
            &self.range_low,
            &self.range_high,
            &self.range_reserved,
            &self.range_usable,
            &self.ports_in_use,
            &self.listeners_in_range,
        ] {
            g.reset();
        }
        self.pressure_max.reset();
        self.bind_pressure.reset();
        self.bind_exhaustion.reset();
    }
}

impl DestinationMetrics {
    fn register(r: &Registrar) -> Self {
        Self {
            pressure: r.gauges(
                "port_trace_destination_pressure_ratio",
                "Top destinations: ports in use toward it / ports connect() may use.",
                DESTINATION,
            ),
            exhaustion: r.gauges(
                "port_trace_destination_exhaustion_seconds",
                "Top destinations: seconds until connect() toward it runs out of ports, projected from the ports held now, their TIME_WAIT expiries and the current rate (+Inf: never at this rate).",
                DESTINATION,
            ),
            rate: r.gauges(
                "port_trace_destination_allocation_rate",
                "Top destinations: connect() allocations per second over the last 5 seconds.",
                DESTINATION,
            ),
            sustainable: r.gauges(
                "port_trace_destination_sustainable_rate",
                "Top destinations: connect() rate sustainable forever: ports not held by open connections / seconds a closed connection keeps its port.",
                DESTINATION,
            ),
            time_wait_share: r.gauges(
                "port_trace_destination_time_wait_share_ratio",
                "Top destinations: share of the connections closed in the last minute that left a TIME_WAIT socket here (RST or peer-first closes do not).",
                DESTINATION,
            ),
        }
    }

    /// Clears every series: the top-N changes between refreshes.
    pub fn reset(&self) {
        for g in [
            &self.pressure,
            &self.exhaustion,
            &self.rate,
            &self.sustainable,
            &self.time_wait_share,
        ] {
            g.reset();
        }
    }
}

impl PatternMetrics {
    fn register(r: &Registrar) -> Self {
        Self {
            info: r.int_gauges(
                "port_trace_allocation_pattern_info",
                "Allocation pattern per namespace, protocol and operation, and for a sequential \
                 pattern the counter's scope (global, per-destination, undetermined; none otherwise).",
                &["netns", "proto", "op", "pattern", "scope"],
            ),
            predictability: r.gauges(
                "port_trace_predictability_ratio",
                "Share of ports a simple predictor guessed.",
                &["netns", "proto", "op"],
            ),
        }
    }
}

impl HealthMetrics {
    fn register(r: &Registrar) -> Self {
        Self {
            unresolved: r.counter(
                "port_trace_unresolved_events_total",
                "Port choices seen whose socket could not be read back (kernel layout).",
            ),
            events_lost: r.counter(
                "port_trace_events_lost_total",
                "Events dropped because the ring buffer was full.",
            ),
            ring_fill: r.gauge(
                "port_trace_ring_buffer_fill_ratio",
                "Ring buffer fill at the last drain.",
            ),
            hook_info: r.int_gauges(
                "port_trace_hook_info",
                "Which programs serve each capture path.",
                &["hook_set", "path", "hooks"],
            ),
            last_drain: r.gauge(
                "port_trace_last_drain_timestamp_seconds",
                "Wall-clock time the ring buffer was last drained.",
            ),
            last_refresh: r.gauge(
                "port_trace_last_refresh_timestamp_seconds",
                "Wall-clock time the socket tables were last read: the moment pressure and forecasts describe.",
            ),
            netns_errors: r.counter(
                "port_trace_netns_refresh_errors_total",
                "Namespace refreshes that could not read the range or the socket table.",
            ),
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = Registrar(&registry);
        let m = Self {
            events: EventMetrics::register(&r),
            namespaces: NamespaceMetrics::register(&r),
            destinations: DestinationMetrics::register(&r),
            patterns: PatternMetrics::register(&r),
            health: HealthMetrics::register(&r),
            workloads: super::workloads::WorkloadMetrics::register(&registry),
            registry: registry.clone(),
        };
        let build = r.int_gauges("port_trace_build_info", "Build information.", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        let _ = m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        m
    }

    /// Which programs serve each capture path this hook set sees.
    pub fn set_hooks(&self, hook_set: &str, rows: &[PathCoverage]) {
        let info = &self.health.hook_info;
        info.reset();
        for r in rows.iter().filter(|r| r.seen) {
            info.with_label_values(&[hook_set, r.path, r.hooks]).set(1);
        }
    }

    /// The Prometheus text exposition.
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
