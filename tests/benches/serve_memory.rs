//! What `port-trace serve` holds in memory after 100,000 distinct destinations (`PT_BENCH_DESTS`
//! to change): TCP connects from a fresh namespace to 127.x.y.z:7000, each closed at once by both
//! sides, so 100,000 sockets stay in TIME_WAIT for a minute (within the sandbox's descriptor
//! limit): those on the client's side (about half, whichever side closed first) hold its port
//! toward that destination. Prints the daemon's resident memory (between refreshes, the highest
//! sampled, VmHWM) over two refreshes after every event was seen; asserts nothing. Needs root.
//!
//! `PORT_TRACE_BIN=target/release/port-trace cargo bench -p port-trace-tests --bench serve_memory`

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use port_trace_tests::{
    Netns, TraceProcess,
    scrape::{free_port, get, value},
};
use socket2::{Domain, SockAddr, Socket, Type};

/// (VmRSS, VmHWM) of `pid` in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("serve memory bench: needs root; skipped");
        return;
    }
    let dests: u32 = std::env::var("PT_BENCH_DESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let listen = addr.to_string();
    let daemon =
        TraceProcess::spawn(&["serve", "--listen", &listen]).expect("start port-trace serve");
    let pid = daemon.pid();
    std::thread::sleep(Duration::from_secs(2));
    let (idle, _) = memory(pid);
    let ns = Netns::new().expect("netns");
    let started = Instant::now();
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", &(2 * dests).to_string())
        .expect("room for every TIME_WAIT socket");
    ns.run("pt-many", || {
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&SockAddr::from(SocketAddr::from((
            Ipv4Addr::UNSPECIFIED,
            7000,
        ))))
        .unwrap();
        l.listen(4096).unwrap();
        let l = TcpListener::from(l);
        let acceptor = std::thread::spawn(move || {
            for _ in 0..dests {
                drop(l.accept().unwrap());
            }
        });
        for i in 0..dests {
            let d = Ipv4Addr::from(0x7f00_0000 + 0x100 + i);
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.connect(&SockAddr::from(SocketAddr::from((d, 7000))))
                .unwrap();
        }
        acceptor.join().unwrap();
    })
    .expect("workload");
    let workload = started.elapsed();
    let n = ns.inode.to_string();
    let mut peak_rss: f64 = 0.0;
    let mut in_use = 0.0;
    let seen_all = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        peak_rss = peak_rss.max(memory(pid).0);
        let Some((200, s)) = get(addr, "/metrics") else {
            return false;
        };
        in_use = value(
            &s,
            &format!("port_trace_ports_in_use{{netns=\"{n}\",proto=\"tcp\",state=\"time_wait\"}}"),
        )
        .unwrap_or(0.0);
        let connects = value(
            &s,
            "port_trace_assignments_total{family=\"ipv4\",op=\"connect\",proto=\"tcp\"}",
        )
        .unwrap_or(0.0);
        connects >= f64::from(dests) && in_use > 0.0
    });
    // Two more refreshes (5 s apart, the default) over the full window and socket table:
    // the lowest sample is what the daemon holds between refreshes, the highest what a refresh
    // adds while it runs.
    let mut low = f64::MAX;
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(200));
        let (now, _) = memory(pid);
        peak_rss = peak_rss.max(now);
        low = low.min(now);
    }
    let (rss, hwm) = memory(pid);
    if let Some((200, s)) = get(addr, "/metrics") {
        in_use = value(
            &s,
            &format!("port_trace_ports_in_use{{netns=\"{n}\",proto=\"tcp\",state=\"time_wait\"}}"),
        )
        .unwrap_or(0.0);
    }
    println!(
        "serve after {dests} destinations ({:.1} s of connects; every event seen: {seen_all}; \
         {in_use} client ports in TIME_WAIT at the last refresh):",
        workload.as_secs_f64()
    );
    println!(
        "  VmRSS: idle {idle:.1} MiB; after, between refreshes {low:.1} MiB, now {rss:.1} MiB, \
         highest sampled {peak_rss:.1} MiB; VmHWM {hwm:.1} MiB"
    );
    // PT_BENCH_HOLD=SECONDS keeps the daemon up for a closer look (its pid is printed).
    if let Some(secs) = std::env::var("PT_BENCH_HOLD")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        println!("  daemon pid {pid}, held {secs} s");
        std::thread::sleep(Duration::from_secs(secs));
    }
    drop(ns);
    let _ = daemon.stop_with(nix::sys::signal::Signal::SIGTERM);
}
