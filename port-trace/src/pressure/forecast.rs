//! When a port space runs out, projected from what the kernel holds now: the ports in use, when
//! each TIME_WAIT one frees (sock_diag's `idiag_expires`), the recent allocation rate and how
//! the recent connections were closed. Pure: plain data in and out.
//!
//! Model (docs/pressure.md has the kernel sources): over the next `t` seconds the space holds
//!
//! ```text
//! occupied(t) = held + #{TIME_WAIT ports with release > t} + rate * min(t, hold)
//! ```
//!
//! * `held`: ports with no known release time (open connections, SYN_SENT, CLOSE_WAIT,
//!   FIN_WAIT, listeners). They are assumed held over the horizon; in a steady state the
//!   connections that close are replaced by as many new ones, so this is their average too.
//! * TIME_WAIT ports free on the kernel's own schedule; with `tcp_tw_reuse` in force for the
//!   destination, a TIME_WAIT 4-tuple is reusable once its last timestamp is older than
//!   `tcp_tw_reuse_delay`, so it counts only until then.
//! * Every new allocation holds its port for `hold` seconds after it closes: 60 s (TIME_WAIT)
//!   times the share of recent connections that entered TIME_WAIT on this side (those closed
//!   by RST or by the peer first do not), or the reuse delay under `tcp_tw_reuse`.
//!
//! The space runs out at the first `t` where `occupied(t) >= usable`. During a ramp (the first
//! 60 s of a new workload) nothing has left TIME_WAIT yet, so the range fills at the full
//! allocation rate; the steady-state `rate - usable/60` model was wrong there.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{Proto, SockState, SocketRecord, UsableRange, tcp_bound_ports};
use crate::netns::range::TcpSysctls;

/// How long a port stays in TIME_WAIT after an active close (`TCP_TIMEWAIT_LEN`, 60 s; not
/// `tcp_fin_timeout`).
pub const TIME_WAIT_SECS: f64 = 60.0;
/// The allocation rate is measured over the last 5 seconds: it follows a ramp or a stop within
/// seconds (an average since the start, or over a minute, lags a ramp by tens of seconds).
pub const RATE_WINDOW_NS: u64 = 5_000_000_000;
/// How the recent connections were closed is judged over the TIME_WAIT lifetime.
pub const CLOSE_WINDOW_NS: u64 = 60_000_000_000;

const NS: f64 = 1e9;

/// When a port space runs out, and what the projection rests on.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Forecast {
    /// Allocations per second the space sustains forever: the ports not held by open
    /// connections, divided by how long each new allocation keeps its port after closing
    /// (`+Inf` when closed ports free at once).
    pub sustainable_rate: f64,
    /// Seconds until the space is full at the current rate; `None` when it will not run out;
    /// `Some(0.0)` when it is full now.
    pub seconds_to_exhaustion: Option<f64>,
    /// The allocation rate projected (per second, last [`RATE_WINDOW_NS`]).
    #[serde(default)]
    pub rate_per_s: f64,
    /// Share of recent connections that left a TIME_WAIT socket on this side (measured:
    /// TIME_WAIT sockets / connections allocated and closed in the last minute). 1 when
    /// nothing closed recently (assumed).
    #[serde(default)]
    pub time_wait_share: f64,
    /// Seconds a new allocation keeps its port after its connection closes.
    #[serde(default)]
    pub hold_s: f64,
    /// Whether `tcp_tw_reuse` lets connect() reuse TIME_WAIT ports of this space.
    #[serde(default)]
    pub tw_reuse: bool,
}

/// How the ports of one space are held right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Occupancy {
    /// Ports the space may hand out.
    pub usable: u32,
    /// Ports held with no known release time.
    pub held: u32,
    /// Seconds until each TIME_WAIT port frees (one entry per port).
    pub releases_s: Vec<f64>,
}

/// The first time, in seconds from now, when `occupied(t) >= usable` (see the module docs),
/// or None when that never happens.
pub fn time_to_exhaustion(occ: &Occupancy, rate_per_s: f64, hold_s: f64) -> Option<f64> {
    let usable = f64::from(occ.usable);
    let rate = if rate_per_s.is_finite() {
        rate_per_s.max(0.0)
    } else {
        0.0
    };
    let hold = if hold_s.is_finite() {
        hold_s.max(0.0)
    } else {
        TIME_WAIT_SECS
    };
    let mut releases: Vec<f64> = occ
        .releases_s
        .iter()
        .map(|r| if r.is_finite() { r.max(0.0) } else { 0.0 })
        .filter(|&r| r > 0.0)
        .collect();
    releases.sort_by(f64::total_cmp);
    let held = f64::from(occ.held);
    // Breakpoints: every release, and `hold` (after which new allocations stop adding up).
    let mut points: Vec<f64> = releases.clone();
    points.push(hold);
    points.sort_by(f64::total_cmp);
    points.dedup();
    let mut start = 0.0;
    let mut released = 0usize;
    for end in points.into_iter().chain(std::iter::once(f64::INFINITY)) {
        while released < releases.len() && releases[released] <= start {
            released += 1;
        }
        let base = held + (releases.len() - released) as f64;
        // occupied(t) = base + rate * min(t, hold) on [start, end).
        let at_start = base + rate * start.min(hold);
        if at_start >= usable {
            return Some(start);
        }
        if rate > 0.0 && start < hold {
            let t = (usable - base) / rate;
            if t < end && t <= hold {
                return Some(t.max(start));
            }
        }
        if end.is_infinite() {
            return None;
        }
        start = end;
    }
    None
}

/// Share of the connections closed in the last minute that left a TIME_WAIT socket here:
/// `time_wait` TIME_WAIT ports over `recent_allocs` allocations minus those still `open`.
/// 1 (assume the worst) when none closed recently.
pub fn time_wait_share(time_wait: u32, recent_allocs: u64, open: u32) -> f64 {
    let closed = recent_allocs.saturating_sub(u64::from(open));
    if closed == 0 {
        return 1.0;
    }
    (f64::from(time_wait) / closed as f64).clamp(0.0, 1.0)
}

/// Does `tcp_tw_reuse` apply to connects toward `daddr` (`tcp_twsk_unique()`: 1 = always,
/// 2 = loopback addresses only; timestamps are needed either way)?
pub fn tw_reuse_applies(tcp: &TcpSysctls, daddr: IpAddr, saddr: IpAddr) -> bool {
    let loopback = daddr.to_canonical().is_loopback() || saddr.to_canonical().is_loopback();
    tcp.timestamps && (tcp.tw_reuse == 1 || (tcp.tw_reuse == 2 && loopback))
}

/// Seconds a reusable TIME_WAIT socket blocks its 4-tuple: the reuse delay, plus one second
/// for the kernel's strict, whole-second comparison before 6.13.
fn reuse_hold_s(tcp: &TcpSysctls) -> f64 {
    f64::from(tcp.tw_reuse_delay_ms) / 1e3 + 1.0
}

/// Allocation counts in one-second buckets over the last minute: the recent rate and the
/// number of allocations in the last minute, in O(1) memory per stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Recent {
    first_ns: u64,
    newest_sec: u64,
    buckets: [u32; BUCKETS],
}

const BUCKETS: usize = 64;

impl Recent {
    pub fn new(ts_ns: u64) -> Self {
        Recent {
            first_ns: ts_ns,
            newest_sec: ts_ns / 1_000_000_000,
            buckets: [0; BUCKETS],
        }
    }

    /// Counts one allocation at `ts_ns` (events may arrive slightly out of order).
    pub fn add(&mut self, ts_ns: u64) {
        let sec = ts_ns / 1_000_000_000;
        self.first_ns = self.first_ns.min(ts_ns);
        if sec > self.newest_sec {
            let gap = (sec - self.newest_sec).min(BUCKETS as u64);
            for s in 1..=gap {
                self.buckets[((self.newest_sec + s) % BUCKETS as u64) as usize] = 0;
            }
            self.newest_sec = sec;
        } else if sec + BUCKETS as u64 <= self.newest_sec {
            return;
        }
        self.buckets[(sec % BUCKETS as u64) as usize] += 1;
    }

    /// The newest second with a bucket.
    pub fn newest_ns(&self) -> u64 {
        self.newest_sec * 1_000_000_000
    }

    /// Allocations in the whole seconds from `from_sec` to `now_sec`.
    fn count_secs(&self, from_sec: u64, now_sec: u64) -> u64 {
        let oldest = (self.newest_sec + 1).saturating_sub(BUCKETS as u64);
        (from_sec.max(oldest)..=now_sec.min(self.newest_sec))
            .map(|s| u64::from(self.buckets[(s % BUCKETS as u64) as usize]))
            .sum()
    }

    /// Allocations in the `window_ns` before `now_ns` (to the second).
    pub fn count(&self, now_ns: u64, window_ns: u64) -> u64 {
        self.count_secs(first_sec(now_ns, window_ns), now_ns / 1_000_000_000)
    }

    /// Allocations per second over the last `window_ns` before `now_ns`, or since the first
    /// allocation when that is later; never over less than one second, so a burst of 40 in a
    /// millisecond reads as 40/s, not 40,000/s.
    pub fn rate(&self, now_ns: u64, window_ns: u64) -> f64 {
        let from_sec = first_sec(now_ns, window_ns);
        let n = self.count_secs(from_sec, now_ns / 1_000_000_000);
        let from = (from_sec * 1_000_000_000).max(self.first_ns);
        n as f64 / (now_ns.saturating_sub(from) as f64 / NS).max(1.0)
    }
}

/// The first whole second inside the `window_ns` before `now_ns`.
fn first_sec(now_ns: u64, window_ns: u64) -> u64 {
    match now_ns.checked_sub(window_ns) {
        Some(from) => from / 1_000_000_000 + 1,
        None => 0,
    }
}

/// Per-port state of a space: held with no known end, or in TIME_WAIT until the latest
/// expiry of its sockets (seconds). A list merged per port when read: most spaces (one per
/// destination) hold one port or a few, and a tree node each would cost ten times the memory
/// with 100,000 destinations.
#[derive(Default)]
struct Ports {
    /// (port, release); sorted by port and one entry per port once [`Ports::settle`] ran.
    ports: Vec<(u16, Option<f64>)>,
    settled: bool,
    /// An address of one of the sockets (for the loopback test of `tcp_tw_reuse` = 2).
    saddr: Option<IpAddr>,
}

impl Ports {
    fn add(&mut self, s: &SocketRecord) {
        self.saddr.get_or_insert(s.local_addr);
        let release = match (s.state, s.time_wait_ms) {
            (SockState::TimeWait, Some(ms)) => Some(f64::from(ms) / 1e3),
            // A TIME_WAIT socket from an old recording: at most a full TIME_WAIT left.
            (SockState::TimeWait, None) => Some(TIME_WAIT_SECS),
            _ => None,
        };
        self.ports.push((s.local_port, release));
        self.settled = false;
    }

    /// One entry per port, in port order: the latest release of its sockets, none when one of
    /// them is held with no known end.
    fn settle(&mut self) {
        if self.settled {
            return;
        }
        self.ports.sort_by_key(|p| p.0);
        self.ports.dedup_by(|later, kept| {
            if later.0 != kept.0 {
                return false;
            }
            kept.1 = match (kept.1, later.1) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            true
        });
        self.settled = true;
    }

    fn clear(&mut self) {
        self.ports.clear();
        self.settled = false;
        self.saddr = None;
    }

    /// Distinct ports held.
    fn len(&mut self) -> usize {
        self.settle();
        self.ports.len()
    }

    /// Occupancy with `usable` ports; under reuse, a TIME_WAIT port counts only until it is
    /// `reuse_hold` seconds old.
    fn occupancy(&mut self, usable: u32, reuse_hold: Option<f64>) -> (Occupancy, u32) {
        self.settle();
        let mut occ = Occupancy {
            usable,
            ..Default::default()
        };
        let mut time_wait = 0;
        for (_, release) in &self.ports {
            match release {
                None => occ.held += 1,
                Some(r) => {
                    time_wait += 1;
                    let r = match reuse_hold {
                        // Age = TIME_WAIT_SECS - remaining.
                        Some(h) => (h - (TIME_WAIT_SECS - r)).min(*r),
                        None => *r,
                    };
                    if r > 0.0 {
                        occ.releases_s.push(r);
                    }
                }
            }
        }
        (occ, time_wait)
    }
}

/// The recent allocations of a space: rate (per second) and count over the last minute.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Allocations {
    pub rate_per_s: f64,
    pub last_minute: u64,
}

fn project(
    occ: &Occupancy,
    time_wait: u32,
    alloc: Allocations,
    reuse_hold: Option<f64>,
) -> Forecast {
    let share = time_wait_share(time_wait, alloc.last_minute, occ.held);
    let hold_s = match reuse_hold {
        // Reused TIME_WAIT sockets vanish, so the measured share under-counts: any TIME_WAIT
        // socket at all means closes leave one, for the reuse delay.
        Some(h) if time_wait > 0 => h.min(TIME_WAIT_SECS),
        Some(h) => h.min(TIME_WAIT_SECS) * share,
        None => TIME_WAIT_SECS * share,
    };
    let free_forever = f64::from(occ.usable.saturating_sub(occ.held));
    Forecast {
        sustainable_rate: if hold_s > 0.0 {
            free_forever / hold_s
        } else {
            f64::INFINITY
        },
        seconds_to_exhaustion: time_to_exhaustion(occ, alloc.rate_per_s, hold_s),
        rate_per_s: alloc.rate_per_s,
        time_wait_share: share,
        hold_s,
        tw_reuse: reuse_hold.is_some(),
    }
}

/// A destination's connect() forecast, with the numbers behind its pressure.
#[derive(Debug, Clone, PartialEq)]
pub struct DestForecast {
    pub daddr: IpAddr,
    pub dport: u16,
    /// Ports connect() may pick toward it (usable range minus ports held by bind/listen).
    pub usable: u32,
    pub in_use: u32,
    pub forecast: Forecast,
}

/// Per TCP destination seen in the socket table or in `allocs`: when connect() toward it runs
/// out (EADDRNOTAVAIL), in [`forecast_order`].
pub fn connect_forecasts(
    range: &UsableRange,
    sockets: &[SocketRecord],
    tcp: &TcpSysctls,
    allocs: &HashMap<(IpAddr, u16), Allocations>,
) -> Vec<DestForecast> {
    let mut out = Vec::new();
    each_connect_forecast(range, sockets, tcp, allocs, |d| out.push(d));
    out.sort_by(forecast_order);
    out
}

/// [`connect_forecasts`] handed over one destination at a time, in no particular order, so a
/// caller that keeps a few never holds them all: the sockets are sorted by destination rather
/// than gathered in a table of destinations.
pub fn each_connect_forecast(
    range: &UsableRange,
    sockets: &[SocketRecord],
    tcp: &TcpSysctls,
    allocs: &HashMap<(IpAddr, u16), Allocations>,
    mut f: impl FnMut(DestForecast),
) {
    let bound = tcp_bound_ports(range, sockets);
    let usable = range.usable.saturating_sub(bound.len() as u32);
    let mut conns: Vec<((IpAddr, u16), &SocketRecord)> =
        super::connected(range, sockets, &bound).collect();
    // Stable: a destination's first socket stays first (its address decides TIME_WAIT reuse).
    conns.sort_by_key(|c| c.0);
    let forecast = |(daddr, dport): (IpAddr, u16), ports: &mut Ports| {
        let saddr = ports.saddr.unwrap_or(daddr);
        let reuse = tw_reuse_applies(tcp, daddr, saddr).then(|| reuse_hold_s(tcp));
        let (occ, time_wait) = ports.occupancy(usable, reuse);
        let alloc = allocs.get(&(daddr, dport)).copied().unwrap_or_default();
        DestForecast {
            daddr,
            dport,
            usable,
            in_use: ports.len() as u32,
            forecast: project(&occ, time_wait, alloc, reuse),
        }
    };
    let mut ports = Ports::default();
    for group in conns.chunk_by(|a, b| a.0 == b.0) {
        ports.clear();
        for (_, s) in group {
            ports.add(s);
        }
        f(forecast(group[0].0, &mut ports));
    }
    for dest in allocs.keys() {
        if conns.binary_search_by_key(dest, |c| c.0).is_err() {
            f(forecast(*dest, &mut Ports::default()));
        }
    }
}

/// Soonest exhaustion first, then most ports in use, then by destination.
pub fn forecast_order(a: &DestForecast, b: &DestForecast) -> std::cmp::Ordering {
    soonest(&a.forecast, &b.forecast)
        .then(b.in_use.cmp(&a.in_use))
        .then((a.daddr, a.dport).cmp(&(b.daddr, b.dport)))
}

/// Orders forecasts soonest exhaustion first, "none" last.
pub fn soonest(a: &Forecast, b: &Forecast) -> std::cmp::Ordering {
    let key = |f: &Forecast| f.seconds_to_exhaustion.unwrap_or(f64::INFINITY);
    key(a).total_cmp(&key(b))
}

/// When TCP bind(0) / listen() autobind in the namespace runs out (EADDRINUSE): they need a
/// port no TCP socket holds, in any state and toward any destination, TIME_WAIT included
/// (`inet_csk_find_open_port()` never reuses an owned port unless `ip_autobind_reuse`).
/// `alloc` counts every TCP allocation of the namespace: connect() ports fill this space too.
pub fn bind_forecast(
    range: &UsableRange,
    sockets: &[SocketRecord],
    alloc: Allocations,
) -> Forecast {
    let mut ports = Ports::default();
    for s in sockets
        .iter()
        .filter(|s| s.proto == Proto::Tcp && range.is_usable(s.local_port))
    {
        ports.add(s);
    }
    let (occ, time_wait) = ports.occupancy(range.usable, None);
    project(&occ, time_wait, alloc, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pressure::Family;
    use std::net::Ipv4Addr;

    const S: u64 = 1_000_000_000;

    fn occ(usable: u32, held: u32, releases: &[f64]) -> Occupancy {
        Occupancy {
            usable,
            held,
            releases_s: releases.to_vec(),
        }
    }

    #[test]
    fn ramp_fills_at_the_full_rate() {
        // The issue's case, 10 s in: 500 ports in TIME_WAIT (released 50..60 s from now),
        // 50/s, everything enters TIME_WAIT: full in 10 s, not 362 s.
        let releases: Vec<f64> = (0..500).map(|i| 50.0 + i as f64 * 0.02).collect();
        let t = time_to_exhaustion(&occ(1000, 0, &releases), 50.0, 60.0).unwrap();
        assert!((t - 10.0).abs() < 1e-9, "{t}");
        // From an empty range: 20 s.
        let t = time_to_exhaustion(&occ(1000, 0, &[]), 50.0, 60.0).unwrap();
        assert!((t - 20.0).abs() < 1e-9);
    }

    #[test]
    fn sustainable_and_draining_spaces_do_not_run_out() {
        // 10/s over 60 s holds 600 of 1000 at most.
        assert_eq!(time_to_exhaustion(&occ(1000, 0, &[]), 10.0, 60.0), None);
        // A burst left 900 ports in TIME_WAIT, then idle.
        let burst = vec![55.0; 900];
        assert_eq!(time_to_exhaustion(&occ(1000, 0, &burst), 0.0, 60.0), None);
        // RST close: nothing held after close, whatever the rate.
        assert_eq!(time_to_exhaustion(&occ(1000, 0, &[]), 10_000.0, 0.0), None);
        // Full now.
        assert_eq!(time_to_exhaustion(&occ(10, 10, &[]), 0.0, 60.0), Some(0.0));
        assert_eq!(time_to_exhaustion(&occ(0, 0, &[]), 0.0, 60.0), Some(0.0));
    }

    #[test]
    fn releases_buy_time() {
        // 90 of 100 in TIME_WAIT freeing in 1 s; 5/s: 95 at t=1, then the 90 free and the
        // new ones alone reach 100 at t = 20 s.
        let t = time_to_exhaustion(&occ(100, 0, &[1.0; 90]), 5.0, 60.0).unwrap();
        assert!((t - 20.0).abs() < 1e-9, "{t}");
        // Freeing in 3 s instead: 90 + 5t reaches 100 at t = 2 s, first.
        let t = time_to_exhaustion(&occ(100, 0, &[3.0; 90]), 5.0, 60.0).unwrap();
        assert!((t - 2.0).abs() < 1e-9, "{t}");
        // Held ports never free; new ones stop adding up after `hold`.
        assert_eq!(time_to_exhaustion(&occ(100, 50, &[]), 1.0, 30.0), None);
        let t = time_to_exhaustion(&occ(100, 50, &[]), 1.0, 60.0).unwrap();
        assert!((t - 50.0).abs() < 1e-9, "{t}");
    }

    #[test]
    fn shares_and_reuse() {
        assert_eq!(time_wait_share(0, 4096, 0), 0.0);
        assert_eq!(time_wait_share(500, 500, 0), 1.0);
        assert_eq!(time_wait_share(900, 500, 0), 1.0);
        assert_eq!(time_wait_share(0, 10, 10), 1.0);
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let net = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let mut t = TcpSysctls::default();
        assert!(tw_reuse_applies(&t, lo, lo));
        assert!(!tw_reuse_applies(&t, net, net));
        t.tw_reuse = 1;
        assert!(tw_reuse_applies(&t, net, net));
        t.timestamps = false;
        assert!(!tw_reuse_applies(&t, net, net));
        t.tw_reuse = 0;
        t.timestamps = true;
        assert!(!tw_reuse_applies(&t, lo, lo));
    }

    #[test]
    fn recent_counts_and_rates() {
        let mut r = Recent::new(0);
        for i in 0..500u64 {
            r.add(i * S / 50);
        }
        // 10 s of 50/s: the last 5 s hold 250.
        assert!((r.rate(10 * S, RATE_WINDOW_NS) - 50.0).abs() < 1.0);
        assert_eq!(r.count(10 * S, CLOSE_WINDOW_NS), 500);
        // Idle for 6 s: rate 0, but the minute still counts them.
        assert_eq!(r.rate(16 * S, RATE_WINDOW_NS), 0.0);
        assert_eq!(r.count(16 * S, CLOSE_WINDOW_NS), 500);
        // Two minutes later the buckets are recycled.
        r.add(130 * S);
        assert_eq!(r.count(130 * S, CLOSE_WINDOW_NS), 1);
        // A burst in one millisecond: per second, not per millisecond.
        let mut b = Recent::new(0);
        for i in 0..40 {
            b.add(i * 1000);
        }
        assert_eq!(b.rate(1000 * 40, RATE_WINDOW_NS), 40.0);
    }

    fn tw(lport: u16, dport: u16, ms: u32) -> SocketRecord {
        SocketRecord {
            proto: Proto::Tcp,
            family: Family::V4,
            state: SockState::TimeWait,
            local_addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            local_port: lport,
            remote_addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            remote_port: dport,
            time_wait_ms: Some(ms),
        }
    }

    #[test]
    fn destinations_from_the_socket_table() {
        let range = UsableRange::new(40000, 40999, vec![]);
        let dest = (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 5000);
        // 500 TIME_WAIT ports toward dest (ages 0..10 s), 50/s, 500 in the last minute.
        let sockets: Vec<SocketRecord> = (0..500)
            .map(|i| tw(40000 + i, 5000, 50_000 + u32::from(i) * 20))
            .collect();
        let mut allocs = HashMap::new();
        allocs.insert(
            dest,
            Allocations {
                rate_per_s: 50.0,
                last_minute: 500,
            },
        );
        let mut tcp = TcpSysctls {
            tw_reuse: 0,
            ..Default::default()
        };
        let f = connect_forecasts(&range, &sockets, &tcp, &allocs);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].in_use, f[0].usable), (500, 1000));
        let s = f[0].forecast.seconds_to_exhaustion.unwrap();
        assert!((s - 10.0).abs() < 1e-6, "{s}");
        assert_eq!(f[0].forecast.time_wait_share, 1.0);
        // With tcp_tw_reuse = 1 the TIME_WAIT ports older than ~2 s are free: none.
        tcp.tw_reuse = 1;
        let f = connect_forecasts(&range, &sockets, &tcp, &allocs);
        assert_eq!(f[0].forecast.seconds_to_exhaustion, None, "{f:?}");
        assert!(f[0].forecast.tw_reuse);
        // RST-closed: 4096 allocations, no TIME_WAIT left: none, share 0.
        allocs.insert(
            dest,
            Allocations {
                rate_per_s: 4096.0,
                last_minute: 4096,
            },
        );
        let f = connect_forecasts(&range, &[], &tcp, &allocs);
        assert_eq!(f[0].forecast.seconds_to_exhaustion, None);
        assert_eq!(f[0].forecast.time_wait_share, 0.0);
        assert!(f[0].forecast.sustainable_rate.is_infinite());
    }

    #[test]
    fn bind_space_counts_every_tcp_port() {
        let range = UsableRange::new(40000, 40399, vec![]);
        // 200 TIME_WAIT ports toward 20 destinations, 40/s of bind-before-connect.
        let sockets: Vec<SocketRecord> = (0..200)
            .map(|i| tw(40000 + i, 5000 + i % 20, 55_000 + u32::from(i) * 25))
            .collect();
        let f = bind_forecast(
            &range,
            &sockets,
            Allocations {
                rate_per_s: 40.0,
                last_minute: 200,
            },
        );
        let s = f.seconds_to_exhaustion.unwrap();
        assert!((s - 5.0).abs() < 1e-6, "{s}");
    }
}
