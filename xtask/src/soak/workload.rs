//! The traffic: TCP connect (to thousands of loopback destinations), TCP bind(0)+listen, UDP
//! autobind on send and UDP bind(0), all inside the soak's namespaces. Only loopback and
//! 192.0.2.0/24 on the namespace's own loopback are ever addressed.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;
use socket2::{Domain, Protocol, Socket, Type};

use crate::netns;

/// Ports the namespace's listeners take (bound to 0.0.0.0, so any 127.0.0.0/8 address
/// reaches them).
const LISTEN_PORTS: [u16; 4] = [7001, 7002, 7003, 7004];
/// Loopback addresses connected to: with the ports, 2,000 x 4 = 8,000 destinations.
const ADDRESSES: u32 = 2_000;
/// A pause after each round: about 400 rounds a second per worker at most, a load the
/// 2-core machine shares with everything else.
const PAUSE: Duration = Duration::from_micros(2_500);

/// Operations done, across every worker.
#[derive(Default)]
pub struct Counts {
    pub connects: AtomicU64,
    pub failures: AtomicU64,
    pub udp_sends: AtomicU64,
    pub binds: AtomicU64,
}

/// The `i`-th destination: 127.0.x.y (y from 1 to 254) on one of the listening ports.
fn destination(i: u64) -> SocketAddr {
    let n = (i % (ADDRESSES as u64 * LISTEN_PORTS.len() as u64)) as u32;
    let host = n / LISTEN_PORTS.len() as u32;
    let ip = Ipv4Addr::new(127, 0, (host / 254) as u8, (host % 254 + 1) as u8);
    let port = LISTEN_PORTS[(n % LISTEN_PORTS.len() as u32) as usize];
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// Listeners on [`LISTEN_PORTS`], drained by one thread until `stop`.
fn acceptor(stop: Arc<AtomicBool>) -> Result<JoinHandle<()>> {
    let listeners: Vec<TcpListener> = LISTEN_PORTS
        .iter()
        .map(|p| {
            let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, *p))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .collect::<Result<_>>()?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let mut idle = true;
            for l in &listeners {
                while let Ok((s, _)) = l.accept() {
                    idle = false;
                    drop(s);
                }
            }
            if idle {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }))
}

/// One round of every operation; `i` picks the destination and which extras run.
fn round(i: u64, counts: &Counts) {
    let dest = destination(i);
    if let Ok(s) = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)) {
        // Most connections end with a reset; one in 16 normally, so the socket tables `serve`
        // reads hold some TIME_WAIT entries, but few enough (a few thousand, in a minute) that
        // the daemon's work is about level from the first minute on.
        if !i.is_multiple_of(16) {
            let _ = s.set_linger(Some(Duration::ZERO));
        }
        match s.connect_timeout(&dest.into(), Duration::from_millis(500)) {
            Ok(()) => counts.connects.fetch_add(1, Ordering::Relaxed),
            Err(_) => counts.failures.fetch_add(1, Ordering::Relaxed),
        };
    }
    if let Ok(s) = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)) {
        // Autobind on send: to loopback, or to TEST-NET-1 (dropped inside the namespace).
        let to = if i.is_multiple_of(2) {
            SocketAddr::from((Ipv4Addr::LOCALHOST, 9))
        } else {
            SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2 + (i % 200) as u8), 53))
        };
        if s.send_to(b"soak", &to.into()).is_ok() {
            counts.udp_sends.fetch_add(1, Ordering::Relaxed);
        }
    }
    if i.is_multiple_of(10) {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        if let Ok(s) = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
            && s.bind(&any.into()).is_ok()
            && s.listen(1).is_ok()
        {
            counts.binds.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(s) = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            && s.bind(&any.into()).is_ok()
        {
            counts.binds.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Traffic in namespace `name` until `stop`, on a thread of its own (which enters it).
pub fn spawn_worker(
    name: String,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        netns::enter(&name)?;
        let acceptor = acceptor(stop.clone())?;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            round(i, &counts);
            i += 1;
            std::thread::sleep(PAUSE);
        }
        let _ = acceptor.join();
        Ok(())
    })
}

/// A short burst in a namespace that is about to be deleted: `rounds` rounds, then a range of
/// `TINY_RANGE` ports exhausted by connects to one destination (EADDRNOTAVAIL failures: their
/// TIME_WAIT sockets hold every port).
pub fn burst(name: &str, rounds: u64, counts: &Counts) -> Result<()> {
    netns::enter(name)?;
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = acceptor(stop.clone())?;
    let until = Instant::now() + Duration::from_secs(3);
    for i in 0..rounds {
        if Instant::now() > until {
            break;
        }
        round(i, counts);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = acceptor.join();
    Ok(())
}

/// The range a churned namespace gets before its last connects: small enough to run out.
pub const TINY_RANGE: (u16, u16) = (40000, 40009);

/// Connects to one destination until the namespace's (tiny) range runs out.
pub fn exhaust(name: &str, counts: &Counts) -> Result<()> {
    netns::enter(name)?;
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 7100))?;
    let mut held = Vec::new();
    for _ in 0..(TINY_RANGE.1 - TINY_RANGE.0 + 5) {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        match s.connect(&SocketAddr::from((Ipv4Addr::LOCALHOST, 7100)).into()) {
            Ok(()) => {
                counts.connects.fetch_add(1, Ordering::Relaxed);
                held.push(s);
            }
            Err(_) => {
                counts.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    drop(l);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn destinations_are_loopback_and_thousands() {
        let all: HashSet<_> = (0..20_000).map(super::destination).collect();
        assert_eq!(all.len(), 8_000);
        assert!(all.iter().all(|d| d.ip().is_loopback()));
        assert!(
            all.iter()
                .all(|d| !d.ip().to_string().ends_with(".0")
                    && !d.ip().to_string().ends_with(".255"))
        );
    }
}
