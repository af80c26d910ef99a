//! Range pressure: how close each ephemeral port range is to running out, computed from a
//! namespace's range and socket table (read by [`crate::netns`]). Pure: plain data in and out.
//!
//! Model (docs/pressure.md, with its kernel sources): TCP connect() needs a local port that is
//! unused *toward the same destination* (4-tuple), so exhaustion is per destination; ports
//! held by bind()/listen() are skipped by connect() for every destination. bind(0) and UDP
//! autobind need a port that is unused altogether.
//!
//! Caveat: `__inet_hash_connect` rounds its scan length (`high + 1 - low`) down to an even
//! number, so with an odd-sized range connect() may fail while one port is still free.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

pub use crate::netns::{
    range::UsableRange,
    sockets::{Family, Proto, SockState, SocketRecord},
};

pub mod forecast;

pub use forecast::{
    Allocations, CLOSE_WINDOW_NS, DestForecast, Forecast, RATE_WINDOW_NS, Recent, TIME_WAIT_SECS,
    bind_forecast, connect_forecasts, each_connect_forecast, forecast_order,
};

/// Pressure on the ports available to connect() toward one destination.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DestPressure {
    pub daddr: IpAddr,
    pub dport: u16,
    /// Distinct usable local ports held by TCP sockets toward this destination (any state,
    /// TIME_WAIT and SYN_SENT included).
    pub in_use: u32,
    /// Ports connect() may pick: usable range minus ports held by bind()/listeners.
    pub usable: u32,
    /// `in_use / usable`, clamped to `[0, 1]`; 1 when nothing is usable.
    pub pressure: f64,
}

/// Usable ports in the range that TCP bind()/listen() holds; connect() skips them for every
/// destination (a bind bucket blocks the port regardless of address family and address).
fn tcp_bound_ports(range: &UsableRange, sockets: &[SocketRecord]) -> BTreeSet<u16> {
    sockets
        .iter()
        .filter(|s| s.proto == Proto::Tcp && s.is_bound_only() && range.is_usable(s.local_port))
        .map(|s| s.local_port)
        .collect()
}

pub fn ratio(in_use: u32, usable: u32) -> f64 {
    if usable == 0 {
        return 1.0;
    }
    (f64::from(in_use) / f64::from(usable)).clamp(0.0, 1.0)
}

/// Per TCP destination (remote address and port), the share of connect()-able ports in use
/// toward it, highest first. Only destinations with at least one such port are listed.
///
/// IPv4-mapped IPv6 addresses count as the IPv4 destination. The source address is not part
/// of the key: on a host connecting from several addresses this overestimates.
/// TCP sockets holding a port connect() could hand out toward their destination (in the
/// usable range, not held namespace-wide by a bind), with that destination: IPv4-mapped IPv6
/// peers count as the IPv4 destination.
pub(crate) fn connected<'a>(
    range: &'a UsableRange,
    sockets: &'a [SocketRecord],
    bound: &'a BTreeSet<u16>,
) -> impl Iterator<Item = ((IpAddr, u16), &'a SocketRecord)> + 'a {
    sockets
        .iter()
        .filter(move |s| {
            s.proto == Proto::Tcp
                && !s.is_bound_only()
                && s.remote_port != 0
                && range.is_usable(s.local_port)
                && !bound.contains(&s.local_port)
        })
        .map(|s| ((s.remote_addr.to_canonical(), s.remote_port), s))
}

pub fn connect_pressure(range: &UsableRange, sockets: &[SocketRecord]) -> Vec<DestPressure> {
    let bound = tcp_bound_ports(range, sockets);
    let usable = range.usable.saturating_sub(bound.len() as u32);
    let mut per_dest: BTreeMap<(IpAddr, u16), BTreeSet<u16>> = BTreeMap::new();
    for (dest, s) in connected(range, sockets, &bound) {
        per_dest.entry(dest).or_default().insert(s.local_port);
    }
    let mut out: Vec<DestPressure> = per_dest
        .into_iter()
        .map(|((daddr, dport), ports)| {
            let in_use = ports.len() as u32;
            DestPressure {
                daddr,
                dport,
                in_use,
                usable,
                pressure: ratio(in_use, usable),
            }
        })
        .collect();
    // Stable sort keeps (daddr, dport) order among equals.
    out.sort_by(|a, b| {
        b.pressure
            .total_cmp(&a.pressure)
            .then(b.in_use.cmp(&a.in_use))
    });
    out
}

/// Share of the usable range that sockets of `proto` occupy (distinct local ports, any state):
/// how close bind(0) (TCP) or autobind (UDP) is to failing. 1 when nothing is usable.
pub fn bind_pressure(range: &UsableRange, sockets: &[SocketRecord], proto: Proto) -> f64 {
    let ports: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.proto == proto && range.is_usable(s.local_port))
        .map(|s| s.local_port)
        .collect();
    ratio(ports.len() as u32, range.usable)
}

/// TCP listeners and bound-only sockets, and unconnected UDP sockets, whose port is one that
/// automatic selection could hand out (in range, not reserved). Each is a hazard: a client
/// may take the port first (the server then fails with EADDRINUSE), or a client connecting
/// to it may self-connect. Unconnected UDP sockets include autobound clients (e.g. resolvers
/// that use sendto()), which are not hazards. Sorted by port.
pub fn listeners_in_range(range: &UsableRange, sockets: &[SocketRecord]) -> Vec<SocketRecord> {
    let mut out: Vec<SocketRecord> = sockets
        .iter()
        .filter(|s| s.is_bound_only() && range.is_usable(s.local_port))
        .cloned()
        .collect();
    out.sort_by(|a, b| {
        (a.local_port, a.proto, a.local_addr).cmp(&(b.local_port, b.proto, b.local_addr))
    });
    out.dedup();
    out
}

/// TCP listeners on a port automatic selection could hand out, except those whose port the
/// kernel itself chose (`chosen`: the (netns, port) of TCP bind(0) and listen() autobinds seen):
/// a client may take such a port first, or connect to itself.
pub fn listener_hazards<S: std::hash::BuildHasher>(
    netns: u32,
    range: &UsableRange,
    sockets: &[SocketRecord],
    chosen: &HashSet<(u32, u16), S>,
) -> Vec<SocketRecord> {
    listeners_in_range(range, sockets)
        .into_iter()
        .filter(|l| {
            l.proto == Proto::Tcp
                && l.state == SockState::Listen
                && !chosen.contains(&(netns, l.local_port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

    fn tcp(state: SockState, lport: u16, daddr: IpAddr, dport: u16) -> SocketRecord {
        SocketRecord {
            proto: Proto::Tcp,
            family: Family::V4,
            state,
            local_addr: LO,
            local_port: lport,
            remote_addr: daddr,
            remote_port: dport,
            time_wait_ms: None,
        }
    }

    fn listen(lport: u16) -> SocketRecord {
        tcp(SockState::Listen, lport, ANY, 0)
    }

    fn udp(lport: u16, dport: u16) -> SocketRecord {
        SocketRecord {
            proto: Proto::Udp,
            family: Family::V4,
            state: if dport == 0 {
                SockState::Close
            } else {
                SockState::Established
            },
            local_addr: ANY,
            local_port: lport,
            remote_addr: if dport == 0 { ANY } else { LO },
            remote_port: dport,
            time_wait_ms: None,
        }
    }

    fn range(low: u16, high: u16) -> UsableRange {
        UsableRange::new(low, high, vec![])
    }

    #[test]
    fn connect_pressure_per_destination() {
        let r = range(40000, 40009);
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let sockets = vec![
            listen(5000),
            tcp(SockState::Established, 40000, LO, 5000),
            tcp(SockState::TimeWait, 40001, LO, 5000),
            tcp(SockState::SynSent, 40002, LO, 5000),
            // Same local port twice toward one destination (different source addresses).
            tcp(SockState::Established, 40002, LO, 5000),
            // Server side of the connections above: local port 5000 is outside the range.
            tcp(SockState::Established, 5000, LO, 40000),
            tcp(SockState::Established, 40000, other, 80),
            // Outside the range: not counted.
            tcp(SockState::Established, 30000, other, 80),
            // UDP doesn't count for TCP connect.
            udp(40005, 53),
        ];
        let p = connect_pressure(&r, &sockets);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].daddr, p[0].dport, p[0].in_use, p[0].usable),
            (LO, 5000, 3, 10)
        );
        assert!((p[0].pressure - 0.3).abs() < 1e-12);
        assert_eq!((p[1].daddr, p[1].dport, p[1].in_use), (other, 80, 1));
        assert!((p[1].pressure - 0.1).abs() < 1e-12);
    }

    #[test]
    fn connect_pressure_excludes_bound_and_reserved_ports() {
        let r = UsableRange::new(40000, 40003, vec![(40003, 40003)]);
        assert_eq!(r.usable, 3);
        let bound_only = tcp(SockState::BoundInactive, 40001, ANY, 0);
        let sockets = vec![
            listen(40002),
            bound_only,
            tcp(SockState::Established, 40000, LO, 5000),
            // Accepted connection on the in-range listener: its port is held by bind.
            tcp(SockState::Established, 40002, LO, 41000),
            // Reserved port (e.g. explicitly bound): not in the usable set.
            tcp(SockState::Established, 40003, LO, 5000),
        ];
        let p = connect_pressure(&r, &sockets);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].in_use, p[0].usable), (1, 1));
        assert_eq!(p[0].pressure, 1.0);
    }

    #[test]
    fn connect_pressure_canonicalises_and_sorts() {
        let r = range(40000, 40003);
        let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let mut s6 = tcp(SockState::Established, 40001, mapped, 5000);
        s6.family = Family::V6;
        let sockets = vec![
            tcp(SockState::Established, 40003, v6, 7),
            tcp(SockState::Established, 40000, LO, 5000),
            s6,
        ];
        let p = connect_pressure(&r, &sockets);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].daddr, p[0].in_use), (LO, 2));
        assert_eq!(p[0].pressure, 0.5);
        assert_eq!((p[1].daddr, p[1].in_use), (v6, 1));
    }

    #[test]
    fn connect_pressure_with_nothing_usable_is_one() {
        let r = range(40000, 40000);
        let sockets = vec![listen(40000), tcp(SockState::Established, 40000, LO, 9)];
        // The only port is held by a listener; the accepted connection is not a client port.
        assert!(connect_pressure(&r, &sockets).is_empty());
        assert_eq!(ratio(0, 0), 1.0);
        assert_eq!(ratio(5, 2), 1.0);
    }

    #[test]
    fn bind_pressure_counts_distinct_ports_per_proto() {
        let r = UsableRange::new(40000, 40009, vec![(40009, 40009)]);
        let sockets = vec![
            listen(40000),
            tcp(SockState::Established, 40001, LO, 5000),
            tcp(SockState::Established, 40001, LO, 5001),
            tcp(SockState::TimeWait, 40002, LO, 5000),
            tcp(SockState::Established, 40009, LO, 5000), // reserved
            tcp(SockState::Established, 5000, LO, 40001), // outside
            udp(40003, 0),
        ];
        assert!((bind_pressure(&r, &sockets, Proto::Tcp) - 3.0 / 9.0).abs() < 1e-12);
        assert!((bind_pressure(&r, &sockets, Proto::Udp) - 1.0 / 9.0).abs() < 1e-12);
        assert_eq!(bind_pressure(&r, &[], Proto::Udp), 0.0);
        let none = UsableRange::new(1, 1, vec![(1, 1)]);
        assert_eq!(bind_pressure(&none, &[], Proto::Tcp), 1.0);
    }

    #[test]
    fn listeners_in_range_reports_hazards() {
        let r = UsableRange::new(40000, 40009, vec![(40005, 40005)]);
        let sockets = vec![
            listen(40007),
            listen(5000),   // outside the range
            listen(40005),  // reserved: never handed out
            udp(40002, 0),  // bound UDP
            udp(40003, 53), // connected UDP: a client
            tcp(SockState::BoundInactive, 40001, ANY, 0),
            tcp(SockState::Established, 40004, LO, 5000),
            listen(40007), // duplicate record
        ];
        let ports: Vec<(Proto, u16)> = listeners_in_range(&r, &sockets)
            .iter()
            .map(|s| (s.proto, s.local_port))
            .collect();
        assert_eq!(
            ports,
            vec![
                (Proto::Tcp, 40001),
                (Proto::Udp, 40002),
                (Proto::Tcp, 40007)
            ]
        );
    }
}
