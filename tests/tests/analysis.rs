//! Issue 3 on the real kernel: record a workload, analyze it offline, and check the verdicts,
//! pressure and failures against what the workload did.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    process::Command,
};

use port_trace_tests::{Netns, SERIAL, TraceProcess, port_trace_bin, require_root};
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
    let out = Command::new(port_trace_bin())
        .args(["analyze", &path, "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&file);
    Some(serde_json::from_slice(&out.stdout).expect("analyze JSON"))
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
                keep.push(u);
            }
            keep
        },
    ) else {
        return;
    };
    for dest in &dests {
        let s = stream(&v, "connect", "tcp", Some(*dest));
        assert_eq!(s["pattern"], "per-destination-sequential", "{s:#}");
        assert!(s["predictability"].as_f64().unwrap() > 0.5, "{s:#}");
    }
    assert_eq!(
        v["global"]["pattern"], "per-destination-sequential",
        "{:#}",
        v["global"]
    );
    assert_eq!(stream(&v, "bind", "tcp", None)["pattern"], "random");
    assert_eq!(stream(&v, "autobind", "udp", None)["pattern"], "random");
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
