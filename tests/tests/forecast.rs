//! Forecast accuracy against reality. Several workload shapes run at once, each in its own
//! network namespace with a small ephemeral range, until the kernel refuses a port or their
//! time is up. The forecasts port-trace gave before that moment (scraped from `serve`, and
//! from `analyze` of a recording) are compared with the real time of the first
//! EADDRNOTAVAIL/EADDRINUSE; a real Prometheus evaluates the alert rules meanwhile.
//!
//! Targets: within ±25 % of the remaining time once at least 10 % of the range is in use; no
//! exhaustion forecast (and no alert) for a shape that does not run out; the exhaustion alert
//! fires before the first failure of the TIME_WAIT ramp.
//!
//! A plain `main` (harness = false) so that the accuracy table is printed by `cargo xtask
//! test` whether the test passes or not; it ends with a libtest-style result line.

use std::{
    collections::BTreeMap,
    io::Read,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use port_trace_tests::{
    Netns, TraceProcess, analyze, analyze_json, port_trace_bin, require_root,
    scrape::{Prometheus, get, repo, value},
};
use serde_json::Value;
use socket2::{Domain, SockAddr, Socket, Type};

/// How long each shape runs (seconds from the common start).
const DURATION_S: f64 = 24.0;
/// When the daemon is scraped (seconds from the start).
const SCRAPES: [f64; 4] = [4.0, 8.0, 10.0, 12.0];
/// When the recorder is stopped: its snapshot is the moment `analyze` forecasts from.
const RECORD_STOP_S: f64 = 6.0;
/// Accuracy target, and the share of the range that must be in use before it applies.
const MAX_ERROR: f64 = 0.25;
const MIN_PRESSURE: f64 = 0.10;

#[derive(Clone, Copy, PartialEq)]
enum Close {
    /// The client closes first: its port sits in TIME_WAIT for 60 s.
    Fin,
    /// `SO_LINGER {1, 0}`: close sends RST, no TIME_WAIT.
    Rst,
    /// The server closes first; the client reads the end, then closes (CLOSE_WAIT, LAST_ACK):
    /// the TIME_WAIT is on the server's side.
    Peer,
}

#[derive(Clone)]
struct Stream {
    dests: Vec<SocketAddr>,
    rate: f64,
    count: Option<u64>,
    close: Close,
    /// bind(0) before connect() (without IP_BIND_ADDRESS_NO_PORT): the port comes from the
    /// namespace-wide bind space.
    bind_first: bool,
}

struct Shape {
    name: &'static str,
    range: (u16, u16),
    tw_reuse: u8,
    /// Extra local addresses (on lo) the streams connect to.
    addrs: Vec<Ipv4Addr>,
    ports: Vec<u16>,
    streams: Vec<Stream>,
    /// Which streams must run out (the shape is broken otherwise).
    exhausts: Vec<bool>,
    /// Forecasts before this (s from the start) are shown but not judged: a burst reads as
    /// a rate while it is inside the 5 s rate window (plus a one-second bucket).
    judge_from: f64,
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn net(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, host)
}

fn fin(dest: SocketAddr, rate: f64) -> Stream {
    Stream {
        dests: vec![dest],
        rate,
        count: None,
        close: Close::Fin,
        bind_first: false,
    }
}

fn shapes() -> Vec<Shape> {
    let many: Vec<Ipv4Addr> = (1..=20).map(net).collect();
    vec![
        // The case: 1,000 ports, 50/s, client closes first: runs out at ~20 s.
        Shape {
            name: "time_wait_ramp",
            range: (40000, 40999),
            tw_reuse: 0,
            addrs: vec![],
            ports: vec![5000],
            streams: vec![fin(lo(5000), 50.0)],
            exhausts: vec![true],
            judge_from: 0.0,
        },
        // 10/s holds at most 600 of 1,000 ports: never runs out.
        Shape {
            name: "steady_below",
            range: (40000, 40999),
            tw_reuse: 0,
            addrs: vec![],
            ports: vec![5000],
            streams: vec![fin(lo(5000), 10.0)],
            exhausts: vec![false],
            judge_from: 0.0,
        },
        // 4,096 connects in 0.3 s closed with RST: no TIME_WAIT, nothing runs out.
        Shape {
            name: "rst_close",
            range: (40000, 40999),
            tw_reuse: 0,
            addrs: vec![],
            ports: vec![5000],
            streams: vec![Stream {
                dests: vec![lo(5000)],
                rate: 4096.0 / 0.3,
                count: Some(4096),
                close: Close::Rst,
                bind_first: false,
            }],
            exhausts: vec![false],
            judge_from: 0.0,
        },
        // 100/s on 400 ports, the server closing first: the TIME_WAIT sockets are the
        // server's (port 5000), the client's ports free at once. Nothing runs out.
        Shape {
            name: "peer_closes_first",
            range: (40000, 40399),
            tw_reuse: 0,
            addrs: vec![],
            ports: vec![5000],
            streams: vec![Stream {
                dests: vec![lo(5000)],
                rate: 100.0,
                count: None,
                close: Close::Peer,
                bind_first: false,
            }],
            exhausts: vec![false],
            judge_from: 0.0,
        },
        // 100/s on 400 ports would run out in 4 s; tcp_tw_reuse = 1 (to a non-loopback
        // address, where the default 2 would not apply) frees TIME_WAIT ports after ~1 s.
        Shape {
            name: "tw_reuse_1",
            range: (40000, 40399),
            tw_reuse: 1,
            addrs: vec![net(1)],
            ports: vec![5000],
            streams: vec![fin(SocketAddr::from((net(1), 5000)), 100.0)],
            exhausts: vec![false],
            judge_from: 0.0,
        },
        // bind(0) then connect() to 20 destinations, 20/s: the bind space (400 ports) runs
        // out at ~20 s although no destination has more than 20 ports.
        Shape {
            name: "bind_before_connect",
            range: (40000, 40399),
            tw_reuse: 0,
            addrs: many.clone(),
            ports: vec![5000],
            streams: vec![Stream {
                dests: many.iter().map(|a| SocketAddr::from((*a, 5000))).collect(),
                rate: 20.0,
                count: None,
                close: Close::Fin,
                bind_first: true,
            }],
            exhausts: vec![true],
            judge_from: 0.0,
        },
        // One destination at 50/s runs out at ~20 s; the other at 10/s never does.
        Shape {
            name: "two_destinations",
            range: (40000, 40999),
            tw_reuse: 0,
            addrs: vec![],
            ports: vec![5000, 5001],
            streams: vec![fin(lo(5000), 50.0), fin(lo(5001), 10.0)],
            exhausts: vec![true, false],
            judge_from: 0.0,
        },
        // 600 connects in 0.5 s, then idle: 60 % of the range in TIME_WAIT, draining.
        Shape {
            name: "burst_then_idle",
            range: (40000, 40999),
            tw_reuse: 0,
            addrs: vec![],
            ports: vec![5000],
            streams: vec![Stream {
                dests: vec![lo(5000)],
                rate: 1200.0,
                count: Some(600),
                close: Close::Fin,
                bind_first: false,
            }],
            exhausts: vec![false],
            judge_from: 6.0,
        },
    ]
}

/// What a stream's syscalls said.
#[derive(Debug, Clone, Default)]
struct Truth {
    ok: u64,
    /// Seconds from the start to the first refused port, and the errno.
    failure: Option<(f64, i32)>,
}

/// A shape's namespace, listeners and acceptor threads.
struct Live {
    ns: Netns,
    listeners: Vec<TcpListener>,
    /// The server closes as soon as it accepts.
    server_first: bool,
}

fn prepare(shape: &Shape) -> Live {
    let ns = Netns::new().expect("create network namespace");
    ns.set_port_range(shape.range.0, shape.range.1)
        .expect("set ip_local_port_range");
    ns.sysctl("net.ipv4.tcp_tw_reuse", &shape.tw_reuse.to_string())
        .expect("set tcp_tw_reuse");
    for a in &shape.addrs {
        ns.exec(&["ip", "addr", "add", &format!("{a}/32"), "dev", "lo"])
            .expect("add address");
    }
    let ports = shape.ports.clone();
    let listeners = ns
        .within(move || {
            ports
                .iter()
                .map(|p| {
                    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                    s.set_reuse_address(true).unwrap();
                    s.bind(&SockAddr::from(SocketAddr::from((
                        Ipv4Addr::UNSPECIFIED,
                        *p,
                    ))))
                    .unwrap();
                    s.listen(4096).unwrap();
                    s.set_nonblocking(true).unwrap();
                    TcpListener::from(s)
                })
                .collect::<Vec<_>>()
        })
        .expect("namespace thread");
    Live {
        ns,
        listeners,
        server_first: shape.streams.iter().any(|s| s.close == Close::Peer),
    }
}

/// Accepts and reads each connection to its end, then closes it: the client has closed
/// first (or reset), so the server side never holds the client's port in TIME_WAIT.
fn accept_until(l: &TcpListener, server_first: bool, stop: &AtomicBool, end: Instant) {
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        match l.accept() {
            Ok((c, _)) if server_first => drop(c),
            Ok((mut c, _)) => {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 64];
                let _ = c.read(&mut buf);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Connects at `rate` until a port is refused, `count` is reached or the time is up; then
/// stays alive until `end` (the recorder finds the namespace through this thread).
fn run_stream(s: &Stream, t0: Instant, end: Instant) -> Truth {
    let mut truth = Truth::default();
    let mut i: u64 = 0;
    loop {
        if s.count.is_some_and(|c| i >= c) {
            break;
        }
        let at = t0 + Duration::from_secs_f64(i as f64 / s.rate);
        if at >= end {
            break;
        }
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let dest = s.dests[(i % s.dests.len() as u64) as usize];
        i += 1;
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let failed =
            |e: std::io::Error| (t0.elapsed().as_secs_f64(), e.raw_os_error().unwrap_or(0));
        if s.bind_first
            && let Err(e) = sock.bind(&SockAddr::from(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                0,
            ))))
        {
            truth.failure = Some(failed(e));
            break;
        }
        match sock.connect_timeout(&SockAddr::from(dest), Duration::from_secs(2)) {
            Ok(()) => {
                truth.ok += 1;
                match s.close {
                    Close::Fin => {}
                    Close::Rst => sock.set_linger(Some(Duration::ZERO)).unwrap(),
                    Close::Peer => {
                        // Wait for the server's FIN, then close.
                        let mut c = TcpStream::from(sock);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 16];
                        let _ = c.read(&mut buf);
                        continue;
                    }
                }
            }
            Err(e) => {
                truth.failure = Some(failed(e));
                break;
            }
        }
    }
    if let Some(d) = end.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
    truth
}

/// Runs every shape at once from a common start; `during` runs alongside with the start
/// (Instant and wall-clock ns). Returns each stream's truth, per shape.
fn run_all<R: Send>(
    shapes: &[Shape],
    live: &[Live],
    during: impl FnOnce(Instant, u64) -> R + Send,
) -> (Vec<Vec<Truth>>, R) {
    let t0 = Instant::now() + Duration::from_millis(500);
    let t0_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        + 500_000_000;
    let end = t0 + Duration::from_secs_f64(DURATION_S);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for l in live {
            for listener in &l.listeners {
                let stop = &stop;
                let first = l.server_first;
                scope.spawn(move || {
                    accept_until(listener, first, stop, end + Duration::from_secs(1))
                });
            }
        }
        let handles: Vec<Vec<_>> = shapes
            .iter()
            .zip(live)
            .map(|(shape, l)| {
                shape
                    .streams
                    .iter()
                    .map(|s| {
                        let ns = &l.ns;
                        scope.spawn(move || ns.within(|| run_stream(s, t0, end)).unwrap())
                    })
                    .collect()
            })
            .collect();
        let r = during(t0, t0_wall);
        let truths = handles
            .into_iter()
            .map(|hs| hs.into_iter().map(|h| h.join().unwrap()).collect())
            .collect();
        stop.store(true, Ordering::Relaxed);
        (truths, r)
    })
}

// ---------------------------------------------------------------------------- HTTP helpers

/// Prometheus on loopback with the repository's alert rules exactly as written (their `for:`
/// included), scraping and evaluating every second.
fn start_prometheus(target: SocketAddr) -> Prometheus {
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml"))
        .expect("deploy/prometheus/alerts.yml");
    Prometheus::start("forecast", target, &rules)
}

// ---------------------------------------------------------------------------- the table

/// One forecast compared with the truth.
struct Row {
    shape: &'static str,
    stream: String,
    source: &'static str,
    /// Seconds from the start at which the forecast was taken.
    at: f64,
    pressure: f64,
    /// Seconds to exhaustion; None = "none".
    forecast: Option<f64>,
    /// Seconds from `at` to the first failure; None = never failed.
    truth: Option<f64>,
    judged: bool,
}

impl Row {
    fn error(&self) -> Option<f64> {
        match (self.forecast, self.truth) {
            (Some(f), Some(t)) if t > 0.0 => Some((f - t) / t),
            _ => None,
        }
    }

    /// Meets the targets: "none" when nothing runs out; within ±25 % once 10 % is in use.
    fn verdict(&self) -> Result<(), String> {
        if !self.judged {
            return Ok(());
        }
        match (self.forecast, self.truth) {
            (None, None) => Ok(()),
            (Some(f), None) => Err(format!(
                "forecast exhaustion in {f:.1}s, but nothing ran out"
            )),
            (_, Some(t)) if t <= 0.0 => Ok(()),
            (_, Some(_)) if self.pressure < MIN_PRESSURE => Ok(()),
            (None, Some(t)) => Err(format!("forecast none, ran out {t:.1}s later")),
            (Some(_), Some(_)) => match self.error() {
                Some(e) if e.abs() <= MAX_ERROR => Ok(()),
                e => Err(format!("error {:+.0}%", e.unwrap_or(f64::NAN) * 100.0)),
            },
        }
    }

    fn text(&self) -> String {
        let secs = |v: Option<f64>| v.map(|s| format!("{s:.1}s")).unwrap_or("none".into());
        let err = self
            .error()
            .map(|e| format!("{:+.1}%", e * 100.0))
            .unwrap_or("-".into());
        let ok = match self.verdict() {
            Ok(()) if !self.judged => "(burst in rate window)",
            Ok(()) if self.truth.is_some() && self.pressure < MIN_PRESSURE => "(<10% in use)",
            Ok(()) => "ok",
            Err(_) => "FAIL",
        };
        format!(
            "{:<20} {:<26} {:<7} {:>5.1}s {:>6.1}% {:>9} {:>9} {:>8}  {ok}",
            self.shape,
            self.stream,
            self.source,
            self.at,
            self.pressure * 100.0,
            secs(self.forecast),
            secs(self.truth),
            err
        )
    }
}

fn stream_label(s: &Stream) -> String {
    if s.bind_first {
        format!("bind(0)+connect x{}", s.dests.len())
    } else {
        format!("connect {}", s.dests[0])
    }
}

/// Remaining seconds from `at` to the stream's first failure.
fn remaining(t: &Truth, at: f64) -> Option<f64> {
    t.failure.map(|(f, _)| f - at)
}

// ---------------------------------------------------------------------------- phase 1: serve

/// First firing time (s from start) per (alertname, netns, daddr:dport).
type Firing = BTreeMap<(String, String, String), f64>;

struct ServeRun {
    rows: Vec<Row>,
    /// The ramp's series at the 10-s scrape.
    ramp_scrape: String,
    alerts: Firing,
    truths: Vec<Vec<Truth>>,
    inodes: Vec<u64>,
}

fn serve_phase(shapes: &[Shape]) -> ServeRun {
    let live: Vec<Live> = shapes.iter().map(prepare).collect();
    let (daemon, addr) =
        TraceProcess::serve(&["--top-destinations", "200"]).expect("start port-trace serve");
    let prom = start_prometheus(addr);
    // Prometheus must be scraping the daemon before the shapes start, so that the alert's
    // `for:` is all that stands between the forecast and the alert.
    for _ in 0..300 {
        let up = get(prom.addr, "/api/v1/query?query=port_trace_build_info")
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
            .is_some_and(|v| {
                v["data"]["result"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
            });
        if up {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let alerts: Arc<Mutex<Firing>> = Default::default();
    let (truths, (t0_wall, scrapes)) = run_all(shapes, &live, |t0, t0_wall| {
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let poller = {
                let (alerts, prom, done) = (alerts.clone(), &prom, &done);
                scope.spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        if let Some((200, body)) = get(prom.addr, "/api/v1/alerts") {
                            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                            let now = t0.elapsed().as_secs_f64();
                            for a in v["data"]["alerts"].as_array().into_iter().flatten() {
                                if a["state"] != "firing" {
                                    continue;
                                }
                                let l = &a["labels"];
                                let s = |k: &str| l[k].as_str().unwrap_or("").to_string();
                                let dest = format!("{}:{}", s("daddr"), s("dport"));
                                alerts
                                    .lock()
                                    .unwrap()
                                    .entry((s("alertname"), s("netns"), dest))
                                    .or_insert(now);
                            }
                        }
                        std::thread::sleep(Duration::from_millis(250));
                    }
                })
            };
            let mut scrapes = Vec::new();
            for at in SCRAPES {
                let when = t0 + Duration::from_secs_f64(at);
                if let Some(d) = when.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                let body = get(addr, "/metrics").map(|r| r.1).unwrap_or_default();
                scrapes.push((t0.elapsed().as_secs_f64(), body));
            }
            // The alerts keep being watched until the shapes end.
            let end = t0 + Duration::from_secs_f64(DURATION_S);
            if let Some(d) = end.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            done.store(true, Ordering::Relaxed);
            poller.join().unwrap();
            (t0_wall, scrapes)
        })
    });
    drop(prom);
    let _ = TraceProcess::stop_with(daemon, nix::sys::signal::Signal::SIGTERM);

    let mut rows = Vec::new();
    let mut ramp_scrape = String::new();
    for ((shape, l), truth) in shapes.iter().zip(&live).zip(&truths) {
        let n = l.ns.inode.to_string();
        for (s, t) in shape.streams.iter().zip(truth) {
            for (scraped, body) in &scrapes {
                // The forecast describes the moment the daemon read the socket tables.
                let at = value(body, "port_trace_last_refresh_timestamp_seconds")
                    .map(|t| (t * 1e9 - t0_wall as f64) / 1e9)
                    .unwrap_or(*scraped);
                let (forecast, pressure) = if s.bind_first {
                    (
                        value(
                            body,
                            &format!(
                                "port_trace_bind_exhaustion_seconds{{netns=\"{n}\",proto=\"tcp\"}}"
                            ),
                        ),
                        value(
                            body,
                            &format!(
                                "port_trace_bind_pressure_ratio{{netns=\"{n}\",proto=\"tcp\"}}"
                            ),
                        ),
                    )
                } else {
                    let d = s.dests[0];
                    let labels = format!(
                        "{{daddr=\"{}\",dport=\"{}\",netns=\"{n}\"}}",
                        d.ip(),
                        d.port()
                    );
                    (
                        value(
                            body,
                            &format!("port_trace_destination_exhaustion_seconds{labels}"),
                        ),
                        value(
                            body,
                            &format!("port_trace_destination_pressure_ratio{labels}"),
                        ),
                    )
                };
                rows.push(Row {
                    shape: shape.name,
                    stream: stream_label(s),
                    source: "serve",
                    at,
                    pressure: pressure.unwrap_or(0.0),
                    // A missing series (no ports held, no recent connects) is "none".
                    forecast: forecast.filter(|f| f.is_finite()),
                    truth: remaining(t, at),
                    judged: at >= shape.judge_from,
                });
            }
        }
        if shape.name == "time_wait_ramp"
            && let Some((_, body)) = scrapes.iter().find(|(at, _)| *at >= 10.0)
        {
            ramp_scrape = body
                .lines()
                .filter(|line| line.contains(&format!("netns=\"{n}\"")))
                .collect::<Vec<_>>()
                .join("\n");
        }
    }
    let alerts = alerts.lock().unwrap().clone();
    ServeRun {
        rows,
        ramp_scrape,
        alerts,
        truths,
        inodes: live.iter().map(|l| l.ns.inode).collect(),
    }
}

// ---------------------------------------------------------------------------- phase 2: analyze

struct AnalyzeRun {
    rows: Vec<Row>,
    ramp_table: String,
    truths: Vec<Vec<Truth>>,
}

fn analyze_phase(shapes: &[Shape]) -> AnalyzeRun {
    let live: Vec<Live> = shapes.iter().map(prepare).collect();
    let file = std::env::temp_dir().join(format!("pt-forecast-{}.jsonl", std::process::id()));
    let path = file.to_string_lossy().to_string();
    let recorder = TraceProcess::spawn(&["record", &path]).expect("start port-trace record");
    let (truths, t0_wall) = run_all(shapes, &live, |t0, t0_wall| {
        let when = t0 + Duration::from_secs_f64(RECORD_STOP_S);
        if let Some(d) = when.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        recorder.stop().expect("record exits 0 on SIGINT");
        t0_wall
    });
    let summary = analyze_json(Path::new(&path));
    let table = analyze(Path::new(&path), "table");
    let _ = std::fs::remove_file(&file);

    let mut rows = Vec::new();
    let mut ramp_table = String::new();
    for ((shape, l), truth) in shapes.iter().zip(&live).zip(&truths) {
        let n = l.ns.inode;
        let taken = summary["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ns| ns["netns"].as_u64() == Some(n))
            .and_then(|ns| ns["taken_ns"].as_u64());
        let at = taken.map(|t| (t as f64 - t0_wall as f64) / 1e9);
        for (s, t) in shape.streams.iter().zip(truth) {
            let stream = summary["streams"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|st| {
                    let k = &st["key"];
                    k["netns"].as_u64() == Some(n)
                        && if s.bind_first {
                            k["op"] == "bind" && k["proto"] == "tcp"
                        } else {
                            k["op"] == "connect"
                                && k["daddr"].as_str() == Some(&s.dests[0].ip().to_string())
                                && k["dport"].as_u64() == Some(u64::from(s.dests[0].port()))
                        }
                });
            let at = at.unwrap_or(f64::NAN);
            rows.push(Row {
                shape: shape.name,
                stream: stream_label(s),
                source: "analyze",
                at,
                pressure: stream.and_then(|st| st["pressure"].as_f64()).unwrap_or(0.0),
                forecast: stream.and_then(|st| st["forecast"]["seconds_to_exhaustion"].as_f64()),
                truth: remaining(t, at),
                judged: at >= shape.judge_from,
            });
        }
        if shape.name == "time_wait_ramp" {
            let mut lines = table.lines();
            let header = lines.next().unwrap_or("");
            let mut keep = vec![header.to_string()];
            let mut take = false;
            for line in lines {
                if !line.starts_with(' ') {
                    take = line.contains(&format!(" {n} "));
                }
                if take {
                    keep.push(line.to_string());
                }
            }
            ramp_table = keep.join("\n");
        }
    }
    AnalyzeRun {
        rows,
        ramp_table,
        truths,
    }
}

fn main() -> ExitCode {
    // libtest-style filtering: `cargo test -- NAME` runs this only when NAME matches.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    const NAME: &str = "forecast_accuracy";
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        println!("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out");
        return ExitCode::SUCCESS;
    }
    if !require_root(NAME) {
        println!("test result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out");
        return ExitCode::SUCCESS;
    }
    let _ = port_trace_bin();
    let shapes = shapes();
    let mut failures: Vec<String> = Vec::new();

    println!(
        "forecast accuracy: {} shapes, {DURATION_S}s each, in parallel",
        shapes.len()
    );
    let serve = serve_phase(&shapes);
    let analyze = analyze_phase(&shapes);

    // Each shape must behave as designed, or the comparison means nothing.
    for (phase, truths) in [("serve", &serve.truths), ("analyze", &analyze.truths)] {
        for (shape, truth) in shapes.iter().zip(truths) {
            for ((s, t), exhausts) in shape.streams.iter().zip(truth).zip(&shape.exhausts) {
                let what = format!("{phase} {} {}", shape.name, stream_label(s));
                println!(
                    "  truth {what:<60} ok {:>5}  first failure {}",
                    t.ok,
                    t.failure
                        .map(|(at, e)| format!("{:?} at {at:.2}s", nix::errno::Errno::from_raw(e)))
                        .unwrap_or("none".into())
                );
                match (exhausts, t.failure) {
                    (true, None) => failures.push(format!("{what}: never ran out")),
                    (false, Some(_)) => failures.push(format!("{what}: ran out")),
                    (true, Some((_, e))) if e != libc::EADDRNOTAVAIL && e != libc::EADDRINUSE => {
                        failures.push(format!("{what}: failed with errno {e}"))
                    }
                    _ => {}
                }
            }
        }
    }

    println!(
        "\n{:<20} {:<26} {:<7} {:>6} {:>7} {:>9} {:>9} {:>8}",
        "SHAPE", "STREAM", "SOURCE", "AT", "IN USE", "FORECAST", "TRUTH", "ERROR"
    );
    for r in serve.rows.iter().chain(&analyze.rows) {
        println!("{}", r.text());
        if let Err(e) = r.verdict() {
            failures.push(format!(
                "{} {} {} at {:.1}s: {e}",
                r.shape, r.stream, r.source, r.at
            ));
        }
    }
    // Every exhausting stream was checked at least once with enough of the range in use.
    for shape in &shapes {
        for (s, exhausts) in shape.streams.iter().zip(&shape.exhausts) {
            let label = stream_label(s);
            for source in ["serve", "analyze"] {
                let checked = serve
                    .rows
                    .iter()
                    .chain(&analyze.rows)
                    .filter(|r| r.shape == shape.name && r.stream == label && r.source == source)
                    .filter(|r| {
                        !*exhausts
                            || (r.pressure >= MIN_PRESSURE && r.truth.is_some_and(|t| t > 0.0))
                    })
                    .count();
                if checked == 0 {
                    failures.push(format!(
                        "{} {label} {source}: no forecast checked",
                        shape.name
                    ));
                }
            }
        }
    }

    println!("\nTIME_WAIT ramp, scrape at 10 s:\n{}", serve.ramp_scrape);
    println!(
        "\nTIME_WAIT ramp, analyze at {RECORD_STOP_S} s:\n{}",
        analyze.ramp_table
    );

    // Alerts: the ramp's fires before its first failure; nothing fires for what did not run out.
    println!("\nalerts (first firing, s from start):");
    for ((name, netns, dest), at) in &serve.alerts {
        println!("  {name} netns={netns} {dest} at {at:.1}s");
    }
    for ((shape, truth), inode) in shapes.iter().zip(&serve.truths).zip(&serve.inodes) {
        let n = inode.to_string();
        for ((s, t), exhausts) in shape.streams.iter().zip(truth).zip(&shape.exhausts) {
            let (name, dest) = if s.bind_first {
                ("BindPortRangeExhaustionImminent", ":".to_string())
            } else {
                ("PortRangeExhaustionImminent", s.dests[0].to_string())
            };
            let fired = serve
                .alerts
                .get(&(name.to_string(), n.clone(), dest.clone()));
            match (exhausts, fired, t.failure) {
                (true, Some(at), Some((fail, _))) => {
                    println!(
                        "  {} {}: {name} fired {:.1}s before the first failure",
                        shape.name,
                        stream_label(s),
                        fail - at
                    );
                    if *at >= fail {
                        failures.push(format!(
                            "{} {name} fired at {at:.1}s, after the failure at {fail:.1}s",
                            shape.name
                        ));
                    }
                }
                (true, None, _) => failures.push(format!(
                    "{} {}: {name} never fired",
                    shape.name,
                    stream_label(s)
                )),
                (false, Some(at), _) => failures.push(format!(
                    "{} {}: false alarm {name} at {at:.1}s",
                    shape.name,
                    stream_label(s)
                )),
                _ => {}
            }
        }
    }

    if failures.is_empty() {
        println!("test forecast_accuracy ... ok");
        println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            println!("FAILED: {f}");
        }
        println!("test forecast_accuracy ... FAILED");
        println!("test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        ExitCode::FAILURE
    }
}
