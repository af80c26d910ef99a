//! What tracing costs the traced: loopback connect()+accept()+close() per second in a network
//! namespace, without and with `port-trace trace` attached. Prints figures; asserts nothing.
//! Run as root: `cargo xtask bench`.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::Instant,
};

use port_trace_tests::{Netns, TraceProcess};

const CONNECTS: usize = 20_000;
const ROUNDS: usize = 3;

/// Connects per second over CONNECTS connections to a listener in `ns`.
fn connect_rate(ns: &Netns) -> f64 {
    ns.run("pt-bench", || {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 5000))).unwrap();
        let start = Instant::now();
        for _ in 0..CONNECTS {
            let c = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, 5000))).unwrap();
            let (s, _) = listener.accept().unwrap();
            // RST instead of TIME_WAIT, so the range never fills during the run.
            socket2::SockRef::from(&c)
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
            drop(c);
            drop(s);
        }
        CONNECTS as f64 / start.elapsed().as_secs_f64()
    })
    .unwrap()
    .0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("overhead bench: needs root; skipped");
        return;
    }
    let ns = Netns::new().expect("netns");
    // Alternate untraced and traced rounds so drift in machine load hits both alike.
    let (mut base, mut traced) = (Vec::new(), Vec::new());
    let (mut seen, mut summaries) = (0, Vec::new());
    for _ in 0..ROUNDS {
        base.push(connect_rate(&ns));
        let tracer = TraceProcess::in_netns(&ns).expect("start port-trace");
        traced.push(connect_rate(&ns));
        let (events, stderr) = tracer.stop().expect("stop port-trace");
        seen += events.len();
        summaries.push(stderr.trim().lines().last().unwrap_or("").to_string());
    }
    let (base, traced) = (median(base), median(traced));
    println!("loopback connect+accept+close, {CONNECTS} per round, median of {ROUNDS} rounds");
    println!("  untraced: {base:>9.0} /s");
    println!(
        "  traced:   {traced:>9.0} /s  ({:+.1}%, {:.2} us per connect)",
        (traced / base - 1.0) * 100.0,
        (1.0 / traced - 1.0 / base) * 1e6
    );
    println!("  events seen: {seen} of {} connects", ROUNDS * CONNECTS);
    for s in summaries {
        println!("  {s}");
    }
}
