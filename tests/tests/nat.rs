//! Ports chosen by NAT, judged by conntrack and by the client: a "pod" namespace behind a
//! "node" namespace that masquerades with `--to-ports 40000-40009` toward a "server" namespace,
//! and DNATs a "service" address to the server as kube-proxy does. Ten connections, half of
//! them through the service address, fill the one NAT space toward the server; two more (one
//! each way) cannot be mapped. Every NAT
//! event must match conntrack's own table (`conntrack -L`), the failures must match conntrack's
//! `insert_failed` (`conntrack -S`) and name the server, and a real scrape of `serve` and a
//! real Prometheus evaluating deploy/prometheus/alerts.yml must say the same.

use std::{
    collections::HashMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use port_trace_tests::{
    Netns, SERIAL, TraceProcess, analyze_json, port_trace_bin, require_root,
    scrape::{Prometheus, expressions_without_data, get, repo, value},
};
use serde_json::Value;

const POD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const NODE_INSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NODE_OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const SERVER_PORT: u16 = 8080;
/// A service address the node DNATs to the server.
const SERVICE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const SERVICE_PORT: u16 = 80;
const NAT_LOW: u16 = 40000;
const NAT_HIGH: u16 = 40009;
const NAT_PORTS: usize = 10;

struct Topology {
    pod: Netns,
    node: Netns,
    server: Netns,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// pod (192.0.2.2) -- node (192.0.2.1 | 198.51.100.1, MASQUERADE 40000-40009) -- server.
fn topology() -> Topology {
    let t = Topology {
        pod: Netns::new().unwrap(),
        node: Netns::new().unwrap(),
        server: Netns::new().unwrap(),
    };
    // Interface names are per namespace; the links are created right inside them.
    sh(&[
        "ip",
        "link",
        "add",
        "eth0",
        "netns",
        &t.pod.name,
        "type",
        "veth",
        "peer",
        "name",
        "inside",
        "netns",
        &t.node.name,
    ]);
    sh(&[
        "ip",
        "link",
        "add",
        "outside",
        "netns",
        &t.node.name,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &t.server.name,
    ]);
    for (ns, dev, addr) in [
        (&t.pod, "eth0", format!("{POD}/24")),
        (&t.node, "inside", format!("{NODE_INSIDE}/24")),
        (&t.node, "outside", format!("{NODE_OUTSIDE}/24")),
        (&t.server, "eth0", format!("{SERVER}/24")),
    ] {
        sh(&["ip", "-n", &ns.name, "addr", "add", &addr, "dev", dev]);
        sh(&["ip", "-n", &ns.name, "link", "set", dev, "up"]);
    }
    sh(&[
        "ip",
        "-n",
        &t.pod.name,
        "route",
        "add",
        "default",
        "via",
        &NODE_INSIDE.to_string(),
    ]);
    t.node.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let ports = format!("{NAT_LOW}-{NAT_HIGH}");
    t.node
        .exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "outside",
            "-p",
            "tcp",
            "-j",
            "MASQUERADE",
            "--to-ports",
            &ports,
        ])
        .expect("iptables (Debian package iptables; `cargo xtask test` installs it)");
    // A "service" address the node translates to the server, as kube-proxy does.
    let backend = format!("{SERVER}:{SERVER_PORT}");
    let service = SERVICE.to_string();
    let service_port = SERVICE_PORT.to_string();
    t.node
        .exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            &service,
            "-p",
            "tcp",
            "--dport",
            &service_port,
            "-j",
            "DNAT",
            "--to-destination",
            &backend,
        ])
        .unwrap();
    t
}

/// One conntrack entry, as `conntrack -L` prints it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The reply's source: the peer after any DNAT.
    peer: (Ipv4Addr, u16),
    /// The reply's destination: the translated source.
    translated: (Ipv4Addr, u16),
}

/// conntrack's TCP table in `ns`, by original source port.
fn conntrack_table(ns: &Netns) -> HashMap<u16, Entry> {
    let out = ns
        .exec(&["conntrack", "-L", "-p", "tcp"])
        .expect("conntrack (Debian package conntrack; `cargo xtask test` installs it)");
    let mut table = HashMap::new();
    for line in out.lines() {
        let fields: Vec<(&str, &str)> = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        let get = |key: &str, nth: usize| -> Option<&str> {
            fields
                .iter()
                .filter(|(k, _)| *k == key)
                .nth(nth)
                .map(|f| f.1)
        };
        // The original tuple comes first, the reply tuple second.
        if let (Some(sport), Some(rsrc), Some(rsport), Some(rdst), Some(rdport)) = (
            get("sport", 0),
            get("src", 1),
            get("sport", 1),
            get("dst", 1),
            get("dport", 1),
        ) {
            table.insert(
                sport.parse().unwrap(),
                Entry {
                    peer: (rsrc.parse().unwrap(), rsport.parse().unwrap()),
                    translated: (rdst.parse().unwrap(), rdport.parse().unwrap()),
                },
            );
        }
    }
    table
}

/// conntrack's insert_failed in `ns`, summed over CPUs (`conntrack -S`).
fn insert_failed(ns: &Netns) -> u64 {
    let out = ns.exec(&["conntrack", "-S"]).unwrap();
    out.split_whitespace()
        .filter_map(|w| w.strip_prefix("insert_failed="))
        .map(|v| v.parse::<u64>().unwrap())
        .sum()
}

/// Scrapes until `ready` holds: waits for a state; the bound only keeps a broken daemon from
/// hanging CI.
fn scrape_until(addr: SocketAddr, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..600 {
        if let Some((200, body)) = get(addr, "/metrics") {
            if ready(&body) {
                return body;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let nat: Vec<&str> = last.lines().filter(|l| l.contains("nat")).collect();
    panic!("the daemon never reported {what}:\n{}", nat.join("\n"));
}

#[test]
fn masquerade_ports_and_failures_match_conntrack() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root("masquerade_ports_and_failures_match_conntrack") {
        return;
    }
    let t = topology();
    let node_inode = t.node.inode.to_string();
    let node_path = format!("/run/netns/{}", t.node.name);
    let nat_ports = format!("{NAT_LOW}-{NAT_HIGH}");

    // The server only listens: the kernel completes handshakes into the backlog.
    let listener = t
        .server
        .within(|| TcpListener::bind((SERVER, SERVER_PORT)).unwrap())
        .unwrap();

    let (daemon, addr) = TraceProcess::serve(&[
        "--nat",
        "on",
        "--nat-ports",
        &nat_ports,
        "--nat-netns",
        &node_path,
    ])
    .expect("start port-trace serve");
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let prom = Prometheus::start("nat", addr, &rules);
    let trace = TraceProcess::start(&[
        "--netns",
        &node_path,
        "--nat",
        "on",
        "--nat-ports",
        &nat_ports,
    ])
    .expect("start port-trace trace");
    let failed_before = insert_failed(&t.node);

    // Ten connections fill the NAT range toward the server; two more find no NAT port. The
    // client's answer is the truth: connected (with this local port) or not.
    let (connected, refused) = t
        .pod
        .within(|| {
            let direct = SocketAddr::from((SERVER, SERVER_PORT));
            let service = SocketAddr::from((SERVICE, SERVICE_PORT));
            let mut held = Vec::new();
            let mut refused = 0;
            // Every other one through the service address: the same backend, the same space.
            for i in 0..NAT_PORTS + 2 {
                let dest = if i % 2 == 0 { direct } else { service };
                match TcpStream::connect_timeout(&dest, Duration::from_secs(2)) {
                    Ok(s) => held.push((s, dest)),
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
                        refused += 1;
                    }
                }
            }
            (held, refused)
        })
        .unwrap();
    assert_eq!(
        connected.len(),
        NAT_PORTS,
        "the NAT range holds ten connections"
    );
    assert_eq!(
        refused, 2,
        "the eleventh (direct) and twelfth (through the service) find no NAT port"
    );
    // The port each connection had in the pod, and the address it asked for.
    let asked: HashMap<u16, SocketAddr> = connected
        .iter()
        .map(|(s, dest)| (s.local_addr().unwrap().port(), *dest))
        .collect();

    // Ground truth: conntrack's table and counters.
    let table = conntrack_table(&t.node);
    assert_eq!(table.len(), NAT_PORTS, "{table:?}");
    let failed = insert_failed(&t.node) - failed_before;
    assert!(
        failed >= 2,
        "each refused connection failed at least once: {failed}"
    );

    // serve: the daemon has caught up once its counter equals conntrack's.
    let failed_total = insert_failed(&t.node);
    let space = format!(
        "netns=\"{node_inode}\",proto=\"tcp\",saddr=\"{NODE_OUTSIDE}\",daddr=\"{SERVER}\",dport=\"{SERVER_PORT}\""
    );
    let stat =
        format!("port_trace_conntrack_stat_total{{netns=\"{node_inode}\",stat=\"insert_failed\"}}");
    let failures = format!("port_trace_nat_failures_total{{{}}}", sorted(&space));
    let scrape = scrape_until(addr, "conntrack's insert_failed", |s| {
        value(s, &stat) == Some(failed_total as f64)
    });
    eprintln!(
        "serve: {}",
        scrape
            .lines()
            .filter(
                |l| (l.starts_with("port_trace_nat") || l.starts_with("port_trace_conntrack"))
                    && l.contains(&node_inode)
            )
            .collect::<Vec<_>>()
            .join("\n       ")
    );
    let in_use = format!("port_trace_nat_ports_in_use{{{}}}", sorted(&space));
    let pressure = format!("port_trace_nat_pressure_ratio{{{}}}", sorted(&space));
    let exhaustion = format!("port_trace_nat_exhaustion_seconds{{{}}}", sorted(&space));
    assert_eq!(
        value(&scrape, &in_use),
        Some(table.len() as f64),
        "{in_use}"
    );
    assert_eq!(value(&scrape, &pressure), Some(1.0), "{pressure}");
    assert_eq!(value(&scrape, &exhaustion), Some(0.0), "{exhaustion}");
    assert_eq!(value(&scrape, &failures), Some(failed as f64), "{failures}");
    assert_eq!(
        value(
            &scrape,
            &format!("port_trace_nat_allocations_total{{netns=\"{node_inode}\",proto=\"tcp\"}}")
        ),
        Some(NAT_PORTS as f64)
    );

    // The alert fires on what Prometheus scraped, naming the full destination.
    let mut firing = Value::Null;
    for _ in 0..120 {
        let r = prom.query("ALERTS{alertname=\"NatPortsExhausted\",alertstate=\"firing\"}");
        if let Some(a) = r["data"]["result"].as_array().and_then(|v| v.first()) {
            firing = a["metric"].clone();
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        firing["daddr"],
        SERVER.to_string(),
        "NatPortsExhausted: {firing}"
    );
    assert_eq!(firing["dport"], SERVER_PORT.to_string());
    assert_eq!(firing["saddr"], NODE_OUTSIDE.to_string());
    assert_eq!(firing["netns"], node_inode);
    eprintln!("prometheus: NatPortsExhausted firing: {firing}");
    // Every NAT dashboard query and alert reads series that exist here (serve.rs skips them);
    // increase() and rate() need a second scrape, hence the wait.
    let mut empty = Vec::new();
    for _ in 0..60 {
        empty = expressions_without_data(&prom, |e| {
            e.contains("port_trace_nat_") || e.contains("port_trace_conntrack_")
        });
        if empty.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        empty.is_empty(),
        "expressions without data:\n{}",
        empty.join("\n")
    );

    // trace: every NAT event against conntrack's reply tuple, and the failures.
    let (events, stderr) = trace.stop().unwrap();
    eprintln!("trace stderr: {stderr}");
    let nat: Vec<&Value> = events.iter().filter(|e| e["op"] == "nat").collect();
    let ok: Vec<&&Value> = nat.iter().filter(|e| e["result"] == "ok").collect();
    let bad: Vec<&&Value> = nat.iter().filter(|e| e["result"] != "ok").collect();
    assert_eq!(ok.len(), NAT_PORTS, "{nat:?}");
    for e in &ok {
        let sport = e["nat"]["orig_sport"].as_u64().unwrap() as u16;
        let dest = asked[&sport];
        assert_eq!(e["nat"]["orig_saddr"], POD.to_string());
        let entry = table[&sport];
        let (addr, port) = entry.translated;
        assert_eq!(e["saddr"], addr.to_string(), "{e}");
        assert_eq!(
            e["port"].as_u64(),
            Some(u64::from(port)),
            "{e}: conntrack says {port}"
        );
        assert!((NAT_LOW..=NAT_HIGH).contains(&port));
        // The peer is conntrack's reply source: the server, also behind the service address.
        assert_eq!(entry.peer, (SERVER, SERVER_PORT));
        assert_eq!(e["daddr"], SERVER.to_string());
        assert_eq!(e["dport"].as_u64(), Some(u64::from(SERVER_PORT)));
        if dest.ip() == std::net::IpAddr::V4(SERVICE) {
            assert_eq!(e["nat"]["orig_daddr"], SERVICE.to_string(), "{e}");
            assert_eq!(
                e["nat"]["orig_dport"].as_u64(),
                Some(u64::from(SERVICE_PORT))
            );
        } else {
            assert!(e["nat"]["orig_daddr"].is_null(), "{e}");
        }
        assert_eq!(e["netns"].as_u64(), Some(t.node.inode));
    }
    assert_eq!(
        bad.len() as u64,
        failed,
        "one failure event per failed insert"
    );
    for e in &bad {
        assert_eq!(e["result"], "EADDRNOTAVAIL");
        assert_eq!(e["daddr"], SERVER.to_string(), "{e}");
        assert_eq!(e["dport"].as_u64(), Some(u64::from(SERVER_PORT)));
        assert_eq!(e["nat"]["in_use"].as_u64(), Some(NAT_PORTS as u64));
    }

    // analyze: the recording's NAT space, full, with its failures.
    let file = std::env::temp_dir().join(format!("pt-nat-{}.json", std::process::id()));
    let lines: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let summary = analyze_json(&file);
    let _ = std::fs::remove_file(&file);
    let row = &summary["nat"][0];
    assert_eq!(row["space"]["daddr"], SERVER.to_string(), "{summary}");
    assert_eq!(row["allocations"].as_u64(), Some(NAT_PORTS as u64));
    assert_eq!(row["failures"].as_u64(), Some(failed));
    assert_eq!(row["peak_in_use"].as_u64(), Some(NAT_PORTS as u64));
    assert_eq!(row["pressure"].as_f64(), Some(1.0));
    eprintln!(
        "analyze: pattern {} ({}), {} allocations, {} failures, peak {}/{}",
        row["pattern"],
        row["reason"],
        row["allocations"],
        row["failures"],
        row["peak_in_use"],
        NAT_PORTS
    );

    drop(prom);
    let _ = daemon.stop_with(nix::sys::signal::Signal::SIGTERM).unwrap();
    drop(connected);
    drop(listener);
}

/// Labels in the order the exporter prints them (alphabetical).
fn sorted(labels: &str) -> String {
    let mut parts: Vec<&str> = labels.split(',').collect();
    parts.sort();
    parts.join(",")
}

/// Asking for NAT where it cannot be watched is one sentence and a non-zero exit.
#[test]
fn nat_on_in_a_missing_namespace_is_an_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root("nat_on_in_a_missing_namespace_is_an_error") {
        return;
    }
    let out = Command::new(port_trace_bin())
        .args([
            "trace",
            "--nat",
            "on",
            "--nat-netns",
            "/nonexistent/netns",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/netns"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Without CAP_NET_ADMIN conntrack does not answer: `--nat on` is one sentence naming the
/// capability and a non-zero exit; the default (`auto`) says so once and traces on.
#[test]
fn nat_without_cap_net_admin_is_one_sentence() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root("nat_without_cap_net_admin_is_one_sentence") {
        return;
    }
    let run = |nat: &str| {
        Command::new("setpriv")
            .args(["--inh-caps=-net_admin", "--bounding-set=-net_admin"])
            .arg(port_trace_bin())
            .args(["trace", "--nat", nat, "--duration", "1s"])
            .output()
            .expect("setpriv (Debian package util-linux)")
    };
    let on = run("on");
    let err = String::from_utf8_lossy(&on.stderr);
    assert_eq!(on.status.code(), Some(2), "{err}");
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let auto = run("auto");
    let err = String::from_utf8_lossy(&auto.stderr);
    assert!(auto.status.success(), "{err}");
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("not watching NAT"))
        .collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(said[0].contains("CAP_NET_ADMIN"), "{err}");
}
