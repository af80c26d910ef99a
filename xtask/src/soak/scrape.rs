//! One `GET /metrics`, timed: the status, the time to the last byte, and the numbers the
//! soak reports (series count, events seen).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// Longer than the bound (1 s): a slow scrape is measured, not cut at the bound.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Scrape {
    pub took: Duration,
    /// Series in the exposition (lines that are not comments).
    pub series: usize,
    /// `port_trace_assignments_total` summed over its labels.
    pub assignments: f64,
    /// Namespaces whose NAT the daemon watches (one `port_trace_nat_range_ports` series each).
    pub nat_watched: usize,
}

pub fn scrape(addr: SocketAddr) -> Result<Scrape, String> {
    let start = Instant::now();
    let body = get(addr).map_err(|e| format!("{e} after {:?}", start.elapsed()))?;
    let took = start.elapsed();
    let (head, text) = body.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {status:?}"));
    }
    Ok(Scrape {
        took,
        series: text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count(),
        assignments: sum(text, "port_trace_assignments_total{"),
        nat_watched: text
            .lines()
            .filter(|l| l.starts_with("port_trace_nat_range_ports{"))
            .count(),
    })
}

fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The sum of every series whose name and labels start with `prefix`.
fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_a_family() {
        let t = "# HELP x\nport_trace_assignments_total{op=\"connect\"} 3\n\
                 port_trace_assignments_total{op=\"bind\"} 4\nother 9\n";
        assert_eq!(super::sum(t, "port_trace_assignments_total{"), 7.0);
    }
}
