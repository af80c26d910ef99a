//! `serve`'s counters, read with a minimal HTTP/1.0 GET of `/metrics`.
//!
//! The scrape's own socket binds a source port first (explicit ports are not reported), so
//! reading the counters adds no event to them. The counters are host-wide: `serve` has no
//! namespace filter, so other processes' port choices land in them too.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::atomic::{AtomicU16, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use socket2::{Domain, Protocol, Socket, Type};

/// Source ports for scrapes: below every default ephemeral range, a new one each time so no
/// TIME_WAIT of an earlier scrape is in the way.
static NEXT_SOURCE_PORT: AtomicU16 = AtomicU16::new(20000);
const LAST_SOURCE_PORT: u16 = 29999;

/// The counters the bench reads from one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// `port_trace_assignments_total` summed per op: connect, autobind, and every op.
    pub connect: f64,
    pub autobind: f64,
    pub all: f64,
    /// `port_trace_events_lost_total`.
    pub lost: f64,
}

impl Counters {
    /// Port choices of `op` (None: of any op) between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters, op: Option<&str>) -> u64 {
        let pick = |c: &Counters| match op {
            Some("connect") => c.connect,
            Some("autobind") => c.autobind,
            _ => c.all,
        };
        (pick(self) - pick(earlier)).max(0.0) as u64
    }
}

pub fn scrape(addr: SocketAddr) -> Result<Counters> {
    Ok(parse(&get_metrics(addr)?))
}

fn parse(text: &str) -> Counters {
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if series.starts_with("port_trace_assignments_total{") {
            c.all += v;
            if series.contains("op=\"connect\"") {
                c.connect += v;
            } else if series.contains("op=\"autobind\"") {
                c.autobind += v;
            }
        } else if series == "port_trace_events_lost_total" {
            c.lost = v;
        }
    }
    c
}

fn get_metrics(addr: SocketAddr) -> Result<String> {
    let mut s = connect_from_own_port(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        bail!("GET {addr}/metrics: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

fn connect_from_own_port(addr: SocketAddr) -> Result<TcpStream> {
    let mut last = None;
    for _ in 0..100 {
        let port = NEXT_SOURCE_PORT.fetch_add(1, Ordering::Relaxed);
        if port > LAST_SOURCE_PORT {
            break;
        }
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        match s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into()) {
            Ok(()) => {
                s.connect_timeout(&addr.into(), Duration::from_secs(10))
                    .with_context(|| format!("connecting to {addr}"))?;
                return Ok(s.into());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(
        || anyhow::anyhow!("no source port left for scrapes"),
        anyhow::Error::from,
    ))
    .context("binding a scrape's source port")
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_assignments_per_op_and_reads_losses() {
        let text = "# HELP x\n\
            port_trace_assignments_total{family=\"ipv4\",op=\"connect\",proto=\"tcp\"} 10\n\
            port_trace_assignments_total{family=\"ipv6\",op=\"connect\",proto=\"tcp\"} 2\n\
            port_trace_assignments_total{family=\"ipv4\",op=\"autobind\",proto=\"udp\"} 5\n\
            port_trace_assignments_total{family=\"ipv4\",op=\"bind\",proto=\"udp\"} 1\n\
            port_trace_events_lost_total 3\n";
        let c = super::parse(text);
        assert_eq!(
            (c.connect, c.autobind, c.all, c.lost),
            (12.0, 5.0, 18.0, 3.0)
        );
        let zero = super::Counters::default();
        assert_eq!(c.since(&zero, Some("connect")), 12);
        assert_eq!(c.since(&zero, None), 18);
    }
}
