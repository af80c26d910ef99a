//! What `port-trace analyze` costs on a large recording: wall time, events per second and peak
//! RSS on a generated recording (2,000,000 events to 1,000 destinations by default,
//! `PT_BENCH_EVENTS` and `PT_BENCH_DESTS` to change), and
//! how fast `analyze /dev/zero` gives up. Prints figures; asserts nothing. Needs no root.
//!
//! `PORT_TRACE_BIN=target/release/port-trace cargo bench -p port-trace-tests --bench analyze`

use std::{
    fs::File,
    io::{BufWriter, Write},
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
};

use port_trace::{
    event::{Errno, Event, Family, HookId, Op, Outcome, Proto},
    netns::{NetnsState, range::TcpSysctls},
    pressure::{SockState, SocketRecord, UsableRange},
    sinks::record::meta_line,
};
use port_trace_tests::port_trace_bin;

const DEFAULT_EVENTS: u64 = 2_000_000;
const DEFAULT_DESTINATIONS: u32 = 1_000;
const NETNS: u32 = 4_026_532_177;
const LOW: u16 = 32768;
const HIGH: u16 = 60999;

/// xorshift64*: a deterministic recording without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn port_in_range(offset: u64) -> u16 {
    LOW + (offset % u64::from(HIGH - LOW + 1)) as u16
}

/// A Linux-like day: per-destination connect() counters (+2..16, re-salted every 10 s),
/// random bind() and UDP autobind, a few EADDRNOTAVAIL, events 10 µs apart with the odd pair
/// swapped (two CPUs racing for the ring buffer); then the namespace line with its sockets.
fn write_recording(path: &Path, events: u64, destinations: u32) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut counters: Vec<u64> = (0..destinations).map(|_| rng.next()).collect();
    let start: u64 = 1_760_000_000_000_000_000;
    let mut held = Vec::new();
    let mut pending: Option<Event> = None;
    for i in 0..events {
        let ts_ns = start + i * 10_000;
        let roll = rng.below(100);
        let dest = rng.below(u64::from(destinations)) as usize;
        let daddr = Ipv4Addr::from(0x0a00_0000 + dest as u32);
        let (op, proto, hook, port, daddr, dport, result) = match roll {
            0..=87 => {
                if i % 1_000_000 == 0 {
                    counters[dest] = rng.next();
                }
                counters[dest] += 2 + 2 * rng.below(8);
                let port = port_in_range(counters[dest]);
                if held.len() < 10_000 && rng.below(100) == 0 {
                    held.push((port, daddr));
                }
                let dport = Some(443);
                (
                    Op::Connect,
                    Proto::Tcp,
                    HookId::SockOpsConnect,
                    port,
                    Some(daddr),
                    dport,
                    Outcome::Ok,
                )
            }
            88 => (
                Op::Connect,
                Proto::Tcp,
                HookId::SysExitConnect,
                0,
                Some(daddr),
                Some(443),
                Outcome::Err(Errno(libc::EADDRNOTAVAIL)),
            ),
            89..=93 => (
                Op::Bind,
                Proto::Tcp,
                HookId::PostBind4,
                port_in_range(rng.next()) | 1,
                None,
                None,
                Outcome::Ok,
            ),
            _ => (
                Op::Autobind,
                Proto::Udp,
                HookId::SysExitSendto,
                port_in_range(rng.next()),
                Some(Ipv4Addr::new(10, 255, 0, 53)),
                Some(53),
                Outcome::Ok,
            ),
        };
        let pid = 1000 + rng.below(50) as u32;
        let e = Event {
            ts_ns,
            op,
            proto,
            family: Family::Inet,
            port,
            saddr: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)),
            daddr: daddr.map(IpAddr::V4),
            dport,
            result,
            pid,
            tid: pid,
            comm: ["curl", "nginx", "python3", "envoy"][rng.below(4) as usize].into(),
            uid: 0,
            cgroup_id: 4242,
            netns: NETNS,
            hook,
            latency_ns: None,
            cgroup: None,
            workload: None,
            nat: None,
        };
        // One event in a hundred is written after its successor.
        match pending.take() {
            Some(p) => {
                writeln!(out, "{}", serde_json::to_string(&e)?)?;
                writeln!(out, "{}", serde_json::to_string(&p)?)?;
            }
            None if rng.below(100) == 0 => pending = Some(e),
            None => writeln!(out, "{}", serde_json::to_string(&e)?)?,
        }
    }
    if let Some(p) = pending {
        writeln!(out, "{}", serde_json::to_string(&p)?)?;
    }
    let sockets = held
        .iter()
        .map(|&(port, daddr)| SocketRecord {
            proto: Proto::Tcp,
            family: port_trace::pressure::Family::V4,
            state: SockState::Established,
            local_addr: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)),
            local_port: port,
            remote_addr: IpAddr::V4(daddr),
            remote_port: 443,
            time_wait_ms: None,
        })
        .collect();
    let ns = NetnsState {
        netns: NETNS,
        range: Some(UsableRange::new(LOW, HIGH, vec![])),
        sockets: Some(sockets),
        note: None,
        tcp: Some(TcpSysctls::default()),
        taken_ns: Some(start + events * 10_000),
    };
    writeln!(out, "{}", meta_line(&ns))?;
    out.flush()
}

/// `/usr/bin/time -v` figures of one run.
struct Run {
    wall_s: f64,
    /// User and system time: the work done, whatever else the machine is running.
    cpu_s: f64,
    max_rss_mib: f64,
    /// The first line on stderr (the program's own, or time's exit status).
    first: String,
}

fn time_v(args: &[&str]) -> Run {
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .args(args)
        .output()
        .expect("/usr/bin/time (Debian package time)");
    let err = String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| {
        err.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss):")
        .split(':')
        .fold(0.0, |acc, part| {
            acc * 60.0 + part.parse::<f64>().unwrap_or(0.0)
        });
    let number = |name: &str| field(name).parse::<f64>().unwrap_or(0.0);
    Run {
        wall_s: wall,
        cpu_s: number("User time (seconds):") + number("System time (seconds):"),
        max_rss_mib: number("Maximum resident set size (kbytes):") / 1024.0,
        first: err.lines().next().unwrap_or("").to_string(),
    }
}

fn main() {
    let events = std::env::var("PT_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_EVENTS);
    let destinations = std::env::var("PT_BENCH_DESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_DESTINATIONS);
    let bin = port_trace_bin();
    let bin = bin.to_str().expect("a UTF-8 binary path");
    let path = std::env::temp_dir().join(format!("pt-bench-analyze-{events}-{destinations}.jsonl"));
    if !path.exists() {
        let tmp = path.with_extension("part");
        write_recording(&tmp, events, destinations).expect("write the recording");
        std::fs::rename(&tmp, &path).expect("rename the recording");
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let file = path.to_str().expect("a UTF-8 temp path");
    println!(
        "analyze of {events} events ({:.0} MB, {destinations} destinations), {bin}",
        size as f64 / 1e6
    );
    for (name, args) in [
        ("json", &[bin, "analyze", file, "--format", "json"][..]),
        ("table", &[bin, "analyze", file][..]),
        (
            "--range",
            &[bin, "analyze", file, "--range", "32768-60999"][..],
        ),
    ] {
        let r = time_v(args);
        println!(
            "  {name:<8} {:>6.2} s wall ({:>9.0} events/s), {:>6.2} s CPU, max RSS {:>7.1} MiB",
            r.wall_s,
            events as f64 / r.wall_s,
            r.cpu_s,
            r.max_rss_mib
        );
    }
    // Stopped after 15 s: without a line-length limit it only stops when memory runs out.
    let r = time_v(&["timeout", "-k", "5", "15", bin, "analyze", "/dev/zero"]);
    println!(
        "  /dev/zero: {:.2} s, max RSS {:.1} MiB: {}",
        r.wall_s, r.max_rss_mib, r.first
    );
}
