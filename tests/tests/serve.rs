//! `port-trace serve` against ground truth: scrape /metrics after a workload in a namespace,
//! check the values, lint the scrape with promtool, and let a real Prometheus scrape it and
//! evaluate the dashboard's and the alert rules' expressions.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use port_trace_tests::{
    Netns, SERIAL, TraceProcess, require_root,
    scrape::{Prometheus, expressions_without_data, get, has_data, metric_names, repo, value},
};
use socket2::{Domain, SockAddr, Socket, Type};

/// Scrapes until `ready` holds (the daemon refreshes its gauges on a timer). This waits for a
/// state, it does not time anything: the bound only keeps a broken daemon from hanging CI.
fn scrape_until(addr: SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    for _ in 0..600 {
        let (status, body) = get(addr, "/metrics").expect("the daemon answers");
        assert_eq!(status, 200);
        if ready(&body) {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the daemon never reported the expected state");
}

struct Daemon {
    tracer: Option<TraceProcess>,
    addr: SocketAddr,
}

impl Daemon {
    fn start() -> Self {
        Self::start_with(&["--top-destinations", "5"])
    }

    fn start_with(extra: &[&str]) -> Self {
        let (tracer, addr) = TraceProcess::serve(extra).expect("start port-trace serve");
        Self {
            tracer: Some(tracer),
            addr,
        }
    }

    fn stop(mut self) -> String {
        let (_, stderr) = self
            .tracer
            .take()
            .unwrap()
            .stop_with(nix::sys::signal::Signal::SIGTERM)
            .expect("serve exits 0 on SIGTERM");
        stderr
    }

    fn hup(&self) {
        self.tracer
            .as_ref()
            .unwrap()
            .signal(nix::sys::signal::Signal::SIGHUP)
            .unwrap();
    }
}

/// A namespace whose range toward 127.0.0.1:5000 is exhausted: 4 connects, 1 EADDRNOTAVAIL.
fn exhausted_namespace() -> (Netns, Vec<Socket>) {
    let ns = Netns::new().unwrap();
    ns.set_port_range(40000, 40003).unwrap();
    let (keep, _) = ns
        .run("pt-serve", || {
            let dest = SocketAddr::from((Ipv4Addr::LOCALHOST, 5000));
            let mut keep = vec![Socket::from(TcpListener::bind(dest).unwrap())];
            loop {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                match s.connect(&SockAddr::from(dest)) {
                    Ok(()) => keep.push(s),
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL));
                        break;
                    }
                }
            }
            keep
        })
        .unwrap();
    (ns, keep)
}

#[test]
fn metrics_match_ground_truth_and_pass_promtool() {
    if !require_root("metrics_match_ground_truth_and_pass_promtool") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let daemon = Daemon::start();
    assert_eq!(get(daemon.addr, "/healthz").unwrap().0, 200);
    assert_eq!(get(daemon.addr, "/nope").unwrap().0, 404);
    // Idle and malformed clients neither stall nor crash it.
    let idle: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(daemon.addr).unwrap())
        .collect();
    let mut bad = TcpStream::connect(daemon.addr).unwrap();
    bad.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = bad.read_to_string(&mut reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    assert_eq!(get(daemon.addr, "/healthz").unwrap().0, 200);
    drop(idle);
    let (ns, keep) = exhausted_namespace();
    let n = ns.inode.to_string();
    let scrape = scrape_until(daemon.addr, |s| {
        value(s, &format!("port_trace_range_low{{netns=\"{n}\"}}")).is_some()
    });
    let v = |series: String| value(&scrape, &series);
    assert_eq!(
        v(format!("port_trace_range_low{{netns=\"{n}\"}}")),
        Some(40000.0)
    );
    assert_eq!(
        v(format!("port_trace_range_high{{netns=\"{n}\"}}")),
        Some(40003.0)
    );
    assert_eq!(
        v(format!("port_trace_range_usable_ports{{netns=\"{n}\"}}")),
        Some(4.0)
    );
    assert_eq!(
        v(format!(
            "port_trace_ports_in_use{{netns=\"{n}\",proto=\"tcp\",state=\"established\"}}"
        )),
        Some(4.0)
    );
    assert_eq!(
        v(format!("port_trace_pressure_max_ratio{{netns=\"{n}\"}}")),
        Some(1.0)
    );
    assert_eq!(
        v(format!(
            "port_trace_destination_pressure_ratio{{daddr=\"127.0.0.1\",dport=\"5000\",netns=\"{n}\"}}"
        )),
        Some(1.0)
    );
    assert_eq!(
        v("port_trace_failures_total{errno=\"EADDRNOTAVAIL\",family=\"ipv4\",op=\"connect\",proto=\"tcp\"}".into()),
        Some(1.0)
    );
    assert!(
        v("port_trace_assignments_total{family=\"ipv4\",op=\"connect\",proto=\"tcp\"}".into())
            .unwrap()
            >= 4.0
    );
    assert_eq!(v("port_trace_events_lost_total".into()), Some(0.0));
    assert!(scrape.contains("port_trace_hook_info{hook_set=\"cgroup\""));

    // promtool lints the exposition format and naming conventions.
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    lint.stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(keep);
    drop(ns);
    let stderr = daemon.stop();
    assert!(stderr.contains("stopped"), "{stderr}");
}

#[test]
fn series_stay_bounded_with_10000_destinations() {
    if !require_root("series_stay_bounded_with_10000_destinations") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let daemon = Daemon::start();
    let ns = Netns::new().unwrap();
    const DESTINATIONS: u32 = 10_000;
    let started = std::time::Instant::now();
    // 10,000 distinct destinations (127.0.x.y:7000), each a connect() to a listener on the
    // wildcard address; the client sockets stay open so every destination holds a port.
    let (keep, _) = ns
        .run("pt-many", || {
            let l = TcpListener::bind("0.0.0.0:7000").unwrap();
            // Accept as they come (threads made here inherit this namespace) so the backlog
            // never overflows, and close the server side: the client sockets keep their
            // ports (in CLOSE_WAIT) within the sandbox's descriptor limit.
            let acceptor = std::thread::spawn(move || {
                for _ in 0..DESTINATIONS {
                    drop(l.accept().unwrap());
                }
            });
            let mut keep = Vec::new();
            for i in 0..DESTINATIONS {
                let d = Ipv4Addr::from(0x7f00_0000 + 0x100 + i);
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.connect(&SockAddr::from(SocketAddr::from((d, 7000))))
                    .unwrap();
                keep.push(s);
            }
            acceptor.join().unwrap();
            keep
        })
        .unwrap();
    eprintln!("workload done at {:?}", started.elapsed());
    let n = ns.inode.to_string();
    let scrape = scrape_until(daemon.addr, |s| {
        let state = |st: &str| {
            value(
                s,
                &format!("port_trace_ports_in_use{{netns=\"{n}\",proto=\"tcp\",state=\"{st}\"}}"),
            )
            .unwrap_or(0.0)
        };
        state("established") + state("close_wait") == DESTINATIONS as f64
    });
    let series: Vec<&str> = scrape.lines().filter(|l| !l.starts_with('#')).collect();
    let dest_series = series
        .iter()
        .filter(|l| l.starts_with("port_trace_destination_pressure_ratio{"))
        .count();
    assert_eq!(dest_series, 5, "top-N destinations only");
    eprintln!(
        "series after {DESTINATIONS} destinations: {} (scraped at {:?})",
        series.len(),
        started.elapsed()
    );
    assert!(series.len() < 400, "{} series", series.len());
    drop(keep);
    drop(ns);
    daemon.stop();
}

/// Starts Prometheus on loopback scraping `target` every second, with the repository's alert
/// rules (their `for:` durations set to 0s: the durations themselves are covered by
/// `promtool test rules`).
fn start_prometheus(target: SocketAddr) -> Prometheus {
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let rules: String = rules
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for:") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}for: 0s")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    Prometheus::start("serve", target, &rules)
}

#[test]
fn prometheus_evaluates_dashboard_and_alerts() {
    if !require_root("prometheus_evaluates_dashboard_and_alerts") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let daemon = Daemon::start();
    let prom = start_prometheus(daemon.addr);
    // Prometheus must have scraped the daemon before the failure, so increase() sees it. It
    // answers 503 until its storage is open, slowly on a loaded machine: wait for /-/ready.
    for _ in 0..600 {
        if has_data(&prom.query("port_trace_build_info")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        has_data(&prom.query("port_trace_build_info")),
        "Prometheus never scraped the daemon"
    );
    let (ns, keep) = exhausted_namespace();
    let n = ns.inode.to_string();
    // A TCP bind(0) in another namespace: the bind-space forecast is set only where bind()
    // takes ports.
    let bind_ns = Netns::new().unwrap();
    let (bound, _) = bind_ns
        .run("pt-bind", || {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.bind(&SockAddr::from(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))))
                .unwrap();
            s
        })
        .unwrap();
    let b = bind_ns.inode.to_string();
    scrape_until(daemon.addr, |s| {
        value(
            s,
            &format!("port_trace_pressure_max_ratio{{netns=\"{n}\"}}"),
        ) == Some(1.0)
            && value(
                s,
                &format!("port_trace_bind_exhaustion_seconds{{netns=\"{b}\",proto=\"tcp\"}}"),
            )
            .is_some()
    });
    // Wait until Prometheus has scraped the exhausted state and evaluated the rules.
    let mut fired = Vec::new();
    // The workload the failure alert names: the one this test process's cgroup stands for.
    let mut named = Vec::new();
    for _ in 0..600 {
        let (status, body) = get(prom.addr, "/api/v1/alerts").unwrap_or((0, String::new()));
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            fired = v["data"]["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["state"] == "firing")
                .map(|a| a["labels"]["alertname"].as_str().unwrap_or("").to_string())
                .collect();
            named = v["data"]["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["labels"]["alertname"] == "PortAllocationFailuresByWorkload")
                .map(|a| a["labels"]["workload"].as_str().unwrap_or("").to_string())
                .collect();
            if fired.iter().any(|a| a == "PortRangeExhaustionImminent")
                && fired.iter().any(|a| a == "PortAllocationFailures")
                && !named.is_empty()
            {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("firing: {fired:?}; failures named: {named:?}");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let label = port_trace::attribution::classify(own).label(Some(own));
    assert!(named.contains(&label), "{named:?} names {label} ({own})");
    assert!(
        fired.iter().any(|a| a == "PortRangeExhaustionImminent"),
        "{fired:?}"
    );
    assert!(
        fired.iter().any(|a| a == "PortAllocationFailures"),
        "{fired:?}"
    );

    // Dashboard queries must return data as written. An alert's expression must evaluate,
    // and every metric it reads must have data; whether a threshold is crossed (or whether
    // `pattern="sequential"` exists on this kernel) is the alert's business.
    // NAT series need NAT: tests/tests/nat.rs checks those expressions.
    let empty = expressions_without_data(&prom, |e| !e.contains("port_trace_nat_"));
    assert!(
        empty.is_empty(),
        "expressions without data:\n{}",
        empty.join("\n")
    );
    drop(keep);
    drop(ns);
    drop(bound);
    drop(bind_ns);
    daemon.stop();
}

#[test]
fn bad_config_is_refused_with_its_line() {
    let f = std::env::temp_dir().join(format!("pt-bad-{}.toml", std::process::id()));
    std::fs::write(
        &f,
        "listen = \"127.0.0.1:9864\"\ntop_destinations = \"ten\"\n",
    )
    .unwrap();
    let out = Command::new(port_trace_tests::port_trace_bin())
        .args(["serve", "--config", f.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&f);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

fn dest_series(scrape: &str) -> usize {
    scrape
        .lines()
        .filter(|l| l.starts_with("port_trace_destination_pressure_ratio{"))
        .count()
}

#[test]
fn sighup_rereads_the_config() {
    if !require_root("sighup_rereads_the_config") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = std::env::temp_dir().join(format!("pt-hup-{}.toml", std::process::id()));
    std::fs::write(&f, "top_destinations = 5\n").unwrap();
    let daemon = Daemon::start_with(&["--config", f.to_str().unwrap()]);
    // Three destinations hold ports in a namespace.
    let ns = Netns::new().unwrap();
    let (keep, _) = ns
        .run("pt-hup", || {
            let l = TcpListener::bind("0.0.0.0:7000").unwrap();
            let mut keep = vec![Socket::from(l)];
            for last in 1..=3u8 {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.connect(&SockAddr::from(SocketAddr::from(([127, 0, 0, last], 7000))))
                    .unwrap();
                keep.push(s);
            }
            keep
        })
        .unwrap();
    scrape_until(daemon.addr, |s| dest_series(s) >= 3);
    std::fs::write(&f, "top_destinations = \"many\"\n").unwrap();
    daemon.hup();
    std::fs::write(&f, "top_destinations = 1\n").unwrap();
    daemon.hup();
    scrape_until(daemon.addr, |s| dest_series(s) == 1);
    drop(keep);
    drop(ns);
    let _ = std::fs::remove_file(&f);
    let stderr = daemon.stop();
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
}

#[test]
fn metric_names_in_expressions() {
    assert_eq!(
        metric_names("increase(port_trace_failures_total[5m]) > 0 or up{job=\"x\"} == 0"),
        vec!["port_trace_failures_total", "up"]
    );
}
