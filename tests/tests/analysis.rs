//! Issue 3 on the real kernel: record a workload, analyze it offline, and check the verdicts,
//! pressure and failures against what the workload did.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    time::Duration,
};

use port_trace_tests::{
    Netns, SERIAL, TraceProcess, analyze_json, require_root,
    scrape::{get, value},
};
use serde_json::Value;
use socket2::{Domain, SockAddr, Socket, Type};

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(a), port))
}

/// Records `workload` in a fresh namespace and returns `analyze --format json` of it.
/// The workload's return value (its sockets) lives until the recording has ended, so the
/// socket table snapshot sees them.
fn record_and_analyze<T: Send + 'static>(
    test: &str,
    setup: impl FnOnce(&Netns),
    workload: impl FnOnce() -> T + Send + 'static,
) -> Option<Value> {
    record_and_analyze_events(test, setup, workload).map(|(v, _)| v)
}

/// [`record_and_analyze`], plus the recording's event lines as the tracer wrote them.
fn record_and_analyze_events<T: Send + 'static>(
    test: &str,
    setup: impl FnOnce(&Netns),
    workload: impl FnOnce() -> T + Send + 'static,
) -> Option<(Value, Vec<Value>)> {
    if !require_root(test) {
        return None;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new().expect("create network namespace");
    setup(&ns);
    let file = std::env::temp_dir().join(format!("{test}-{}.jsonl", std::process::id()));
    let path = file.to_str().unwrap().to_string();
    let tracer = TraceProcess::spawn(&["record", &path, "--netns", &ns.name]).expect("record");
    let (keep, _tid) = ns.run("pt-analyze", workload).expect("workload");
    let (_, stderr) = tracer.stop().expect("stop port-trace");
    assert!(stderr.contains("namespace snapshot"), "{stderr}");
    drop(keep);
    let summary = analyze_json(&file);
    let events: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("meta").is_none())
        .collect();
    let _ = std::fs::remove_file(&file);
    Some((summary, events))
}

fn stream<'a>(v: &'a Value, op: &str, proto: &str, dest: Option<SocketAddr>) -> &'a Value {
    v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            let k = &s["key"];
            k["op"] == op
                && k["proto"] == proto
                && match dest {
                    Some(d) => k["daddr"] == d.ip().to_string().as_str() && k["dport"] == d.port(),
                    None => k["daddr"].is_null(),
                }
        })
        .unwrap_or_else(|| panic!("no {op} {proto} {dest:?} stream in {v:#}"))
}

#[test]
fn live_patterns_on_this_kernel() {
    let dests: Vec<SocketAddr> = (0..3).map(|i| v4([127, 0, 0, 1], 5011 + i)).collect();
    let d = dests.clone();
    let Some(v) = record_and_analyze(
        "live_patterns_on_this_kernel",
        |_| {},
        move || {
            let mut keep: Vec<Socket> = d
                .iter()
                .map(|a| Socket::from(TcpListener::bind(a).unwrap()))
                .collect();
            // Irregular interleaving, as real clients do: it lets the classifier tell one shared
            // counter from one per destination.
            let mut x: u32 = 12345;
            for _ in 0..150 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let dest = d[(x >> 16) as usize % d.len()];
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.connect(&SockAddr::from(dest)).unwrap();
                keep.push(s);
            }
            for _ in 0..40 {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.bind(&SockAddr::from(v4([127, 0, 0, 1], 0))).unwrap();
                keep.push(s);
                let u = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
                u.send_to(b"x", &SockAddr::from(v4([127, 0, 0, 1], 9)))
                    .unwrap();
                // Closed while recorded: by default the cgroup set reports an autobind on
                // send when the socket closes.
                drop(u);
            }
            keep
        },
    ) else {
        return;
    };
    // Linux >= 5.12: a counter per destination.
    for dest in &dests {
        let s = stream(&v, "connect", "tcp", Some(*dest));
        assert_eq!(s["pattern"], "sequential", "{s:#}");
        assert_eq!(s["counter_scope"], "per-destination", "{s:#}");
        assert!(s["predictability"].as_f64().unwrap() > 0.5, "{s:#}");
    }
    assert_eq!(v["global"]["pattern"], "sequential", "{:#}", v["global"]);
    assert_eq!(
        v["global"]["counter_scope"], "per-destination",
        "{:#}",
        v["global"]
    );
    for (op, proto) in [("bind", "tcp"), ("autobind", "udp")] {
        let s = stream(&v, op, proto, None);
        assert_eq!(s["pattern"], "random", "{s:#}");
        assert!(s["counter_scope"].is_null(), "{s:#}");
    }
}

/// The recording: 4,096 connects in a fraction of a second to one destination. Plainly
/// a counter; which counter (shared or per destination) one destination cannot tell.
#[test]
fn fast_burst_to_one_destination_is_sequential() {
    let dest = v4([127, 0, 0, 1], 5020);
    let Some(v) = record_and_analyze(
        "fast_burst_to_one_destination_is_sequential",
        |_| {},
        move || {
            let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            listener.set_reuse_address(true).unwrap();
            listener.bind(&SockAddr::from(dest)).unwrap();
            // The handshakes complete in the kernel without accept(): room for all of them.
            listener.listen(8192).unwrap();
            let started = std::time::Instant::now();
            for _ in 0..4096 {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.connect(&SockAddr::from(dest)).unwrap();
                // Closed at once: the port lingers in TIME_WAIT, the fd does not.
            }
            eprintln!("4096 connects in {:?}", started.elapsed());
            listener
        },
    ) else {
        return;
    };
    let s = stream(&v, "connect", "tcp", Some(dest));
    assert_eq!(s["samples"], 4096, "{s:#}");
    assert_eq!(s["pattern"], "sequential", "{s:#}");
    assert_eq!(s["counter_scope"], "undetermined", "{s:#}");
    assert!(s["predictability"].as_f64().unwrap() > 0.5, "{s:#}");
    let g = &v["global"];
    assert_eq!(g["pattern"], "sequential", "{g:#}");
    assert_eq!(g["counter_scope"], "undetermined", "{g:#}");
    assert_eq!(g["destinations"], 1, "{g:#}");
}

/// Connects from an AF_INET6 socket to ::ffff:127.0.0.1 and from an AF_INET socket to
/// 127.0.0.1, interleaved: `n` of each to `dest`.
fn mapped_and_plain_connects(dest: SocketAddr, n: usize, keep: &mut Vec<Socket>) {
    let mapped = SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), dest.port()));
    for _ in 0..n {
        let s6 = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
        s6.connect(&SockAddr::from(mapped)).unwrap();
        keep.push(s6);
        let s4 = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s4.connect(&SockAddr::from(dest)).unwrap();
        keep.push(s4);
    }
}

/// An IPv4-mapped IPv6 destination uses the IPv4 port space and the IPv4 destination's
/// counter: `analyze` shows one stream, while the events keep what the kernel reported.
#[test]
fn ipv4_mapped_destination_is_one_stream_with_ipv4() {
    let dest = v4([127, 0, 0, 1], 6000);
    let Some((v, events)) = record_and_analyze_events(
        "ipv4_mapped_destination_is_one_stream_with_ipv4",
        |ns: &Netns| ns.set_port_range(40000, 40099).unwrap(),
        move || {
            let mut keep = vec![Socket::from(TcpListener::bind(dest).unwrap())];
            mapped_and_plain_connects(dest, 20, &mut keep);
            keep
        },
    ) else {
        return;
    };
    let connects: Vec<&Value> = events.iter().filter(|e| e["op"] == "connect").collect();
    assert_eq!(connects.len(), 40, "{connects:#?}");
    let mapped = connects
        .iter()
        .filter(|e| e["daddr"] == "::ffff:127.0.0.1")
        .count();
    assert_eq!(
        mapped, 20,
        "the recording keeps the v4-mapped address: {connects:#?}"
    );
    let streams: Vec<&Value> = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["key"]["op"] == "connect")
        .collect();
    assert_eq!(streams.len(), 1, "{streams:#?}");
    let s = stream(&v, "connect", "tcp", Some(dest));
    assert_eq!(s["key"]["family"], "ipv4", "{s:#}");
    assert_eq!(s["samples"], 40, "{s:#}");
    // sock_diag reports the IPv6 sockets' peers v4-mapped: they count toward 127.0.0.1:6000.
    assert_eq!(s["in_use"], 40, "{s:#}");
    assert_eq!(s["pattern"], "sequential", "{s:#}");
    assert_eq!(v["global"]["destinations"], 1, "{:#}", v["global"]);
}

/// The same in `serve`'s metrics: one destination label, and its rate counts both families.
#[test]
fn ipv4_mapped_destination_is_one_metrics_destination() {
    if !require_root("ipv4_mapped_destination_is_one_metrics_destination") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (daemon, addr) = TraceProcess::serve(&["--top-destinations", "5"]).expect("serve");
    let ns = Netns::new().unwrap();
    ns.set_port_range(40000, 40099).unwrap();
    let a = v4([127, 0, 0, 1], 6000);
    let b = v4([127, 0, 0, 1], 6001);
    let (keep, _) = ns
        .run("pt-mapped", move || {
            let mut keep = vec![
                Socket::from(TcpListener::bind(a).unwrap()),
                Socket::from(TcpListener::bind(b).unwrap()),
            ];
            // A: 10 connects from AF_INET6 to ::ffff:127.0.0.1 and 10 from AF_INET.
            mapped_and_plain_connects(a, 10, &mut keep);
            // B: 10 from AF_INET only.
            for _ in 0..10 {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.connect(&SockAddr::from(b)).unwrap();
                keep.push(s);
            }
            keep
        })
        .unwrap();
    let n = ns.inode.to_string();
    let series = |d: SocketAddr, m: &str| {
        format!(
            "{m}{{daddr=\"{}\",dport=\"{}\",netns=\"{n}\"}}",
            d.ip(),
            d.port()
        )
    };
    let mut text = String::new();
    for _ in 0..300 {
        text = get(addr, "/metrics").map(|r| r.1).unwrap_or_default();
        let ready =
            |d| value(&text, &series(d, "port_trace_destination_allocation_rate")).is_some();
        if ready(a) && ready(b) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pressure = |d| value(&text, &series(d, "port_trace_destination_pressure_ratio"));
    // 20 of 100 usable ports toward 127.0.0.1:6000, whichever family the socket has.
    assert_eq!(pressure(a), Some(0.2), "{text}");
    assert_eq!(pressure(b), Some(0.1), "{text}");
    assert!(
        !text.contains("ffff"),
        "a v4-mapped destination label: {text}"
    );
    // Both rates share one window, so their ratio is the ratio of the connects: 20 to 10.
    let rate = |d| value(&text, &series(d, "port_trace_destination_allocation_rate")).unwrap();
    let ratio = rate(a) / rate(b);
    assert!(
        (ratio - 2.0).abs() < 1e-9,
        "rates {} {}: {text}",
        rate(a),
        rate(b)
    );
    drop(keep);
    drop(ns);
    let (_, stderr) = daemon
        .stop_with(nix::sys::signal::Signal::SIGTERM)
        .expect("serve exits 0");
    assert!(stderr.contains("stopped"), "{stderr}");
}

#[test]
fn exhaustion_is_attributed_to_its_destination() {
    let a = v4([127, 0, 0, 1], 5000);
    let b = v4([127, 0, 0, 2], 5000);
    let setup = |ns: &Netns| {
        ns.set_port_range(40000, 40005).unwrap();
    };
    let Some(v) = record_and_analyze(
        "exhaustion_is_attributed_to_its_destination",
        setup,
        move || {
            let mut keep = vec![
                Socket::from(TcpListener::bind(v4([0, 0, 0, 0], 5000)).unwrap()),
                // A listener inside the ephemeral range: a hazard, and one port fewer for connect.
                Socket::from(TcpListener::bind(v4([127, 0, 0, 1], 40003)).unwrap()),
            ];
            let mut ok = 0;
            loop {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                match s.connect(&SockAddr::from(a)) {
                    Ok(()) => {
                        ok += 1;
                        keep.push(s);
                    }
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{e}");
                        break;
                    }
                }
                assert!(ok < 20, "the range never ran out");
            }
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.connect(&SockAddr::from(b)).unwrap();
            keep.push(s);
            keep
        },
    ) else {
        return;
    };
    let sa = stream(&v, "connect", "tcp", Some(a));
    assert_eq!(sa["pressure"], 1.0, "{sa:#}");
    assert_eq!(sa["failures"]["EADDRNOTAVAIL"], 1, "{sa:#}");
    let sb = stream(&v, "connect", "tcp", Some(b));
    assert!(sb["failures"].as_object().unwrap().is_empty(), "{sb:#}");
    assert!(sb["pressure"].as_f64().unwrap() < 0.5, "{sb:#}");
    let hazards = v["hazards"]["listeners_in_range"].as_array().unwrap();
    assert_eq!(hazards.len(), 1, "{hazards:?}");
    assert_eq!(hazards[0][1]["local_port"], 40003);
}

#[test]
fn trace_summary_prints_streams_on_exit() {
    if !require_root("trace_summary_prints_streams_on_exit") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new().unwrap();
    let tracer = TraceProcess::start(&["--netns", &ns.name, "--summary"]).expect("trace");
    ns.run("pt-summary", || {
        let keep: Vec<Socket> = (0..10)
            .map(|_| {
                let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
                s.bind(&SockAddr::from(v4([127, 0, 0, 1], 0))).unwrap();
                s
            })
            .collect();
        keep.len()
    })
    .unwrap();
    let (events, stderr) = tracer.stop().unwrap();
    assert_eq!(events.len(), 10);
    assert!(stderr.contains("STREAM"), "{stderr}");
    let row = stderr
        .lines()
        .find(|l| l.starts_with("bind udp ipv4"))
        .unwrap_or_else(|| panic!("no bind udp row: {stderr}"));
    assert!(row.contains(" 10 "), "{row}");
    assert!(stderr.contains("global connect stream"), "{stderr}");
}
