//! The ephemeral port range of a network namespace: `net.ipv4.ip_local_port_range` minus
//! `net.ipv4.ip_local_reserved_ports`.
//!
//! Both sysctls are per network namespace. `/proc/sys/net` shows the namespace of the task
//! that *opens* the file, so reading another namespace's values means opening the files from
//! a thread that has joined that namespace with `setns(2)` (see [`run_in_netns`]).

use std::path::PathBuf;

use super::{
    NetnsError,
    locate::{NetnsRef, run_in_netns},
};

/// Where the sysctl for the ephemeral range lives (inside the opener's network namespace).
pub const PORT_RANGE_SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// Where the sysctl for the reserved ports lives (inside the opener's network namespace).
pub const RESERVED_PORTS_SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The TCP sysctls that decide how long a closed connection keeps its local port (all per
/// network namespace; see docs/pressure.md for the kernel sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcpSysctls {
    /// `net.ipv4.tcp_tw_reuse`: 0 off, 1 on, 2 loopback only (the default).
    pub tw_reuse: u8,
    /// `net.ipv4.tcp_tw_reuse_delay` (ms, 6.13+): how old a TIME_WAIT socket's last timestamp
    /// must be before connect() may reuse its 4-tuple. 1000 on kernels without the sysctl
    /// (there the check is "one second later", in whole seconds).
    pub tw_reuse_delay_ms: u32,
    /// `net.ipv4.tcp_timestamps` != 0: TIME_WAIT reuse needs a recorded timestamp.
    pub timestamps: bool,
    /// `net.ipv4.tcp_fin_timeout` (s): how long an orphaned FIN_WAIT2 socket keeps its port
    /// when the peer never closes. Not the TIME_WAIT length, which is fixed at 60 s.
    pub fin_timeout_s: u32,
}

impl Default for TcpSysctls {
    /// The kernel's defaults.
    fn default() -> Self {
        TcpSysctls {
            tw_reuse: 2,
            tw_reuse_delay_ms: 1000,
            timestamps: true,
            fin_timeout_s: 60,
        }
    }
}

/// Reads [`TcpSysctls`] of `netns`; a sysctl this kernel lacks keeps its default.
pub fn read_tcp_sysctls(netns: &NetnsRef) -> Result<TcpSysctls, NetnsError> {
    run_in_netns(netns, || {
        let num = |name: &str| -> Result<Option<u32>, NetnsError> {
            let path = format!("/proc/sys/net/ipv4/{name}");
            match std::fs::read_to_string(&path) {
                Ok(text) => text
                    .trim()
                    .parse::<u32>()
                    .map(Some)
                    .map_err(|_| NetnsError::Parse {
                        what: "tcp sysctl",
                        text,
                    }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(NetnsError::Io {
                    path: PathBuf::from(path),
                    source,
                }),
            }
        };
        let d = TcpSysctls::default();
        Ok(TcpSysctls {
            tw_reuse: num("tcp_tw_reuse")?.map_or(d.tw_reuse, |v| v.min(2) as u8),
            tw_reuse_delay_ms: num("tcp_tw_reuse_delay")?.unwrap_or(d.tw_reuse_delay_ms),
            timestamps: num("tcp_timestamps")?.is_none_or(|v| v != 0),
            fin_timeout_s: num("tcp_fin_timeout")?.unwrap_or(d.fin_timeout_s),
        })
    })
}

/// The ports that automatic port selection (connect(), bind(0), UDP autobind) may hand out.
/// Read from a recording through [`RecordedRange`]: checked, and `usable` recomputed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RecordedRange")]
pub struct UsableRange {
    /// First port of `ip_local_port_range` (inclusive).
    pub low: u16,
    /// Last port of `ip_local_port_range` (inclusive).
    pub high: u16,
    /// `ip_local_reserved_ports` as sorted, merged, inclusive `(first, last)` ranges. May
    /// include ports outside `low..=high` (they don't affect `usable`).
    pub reserved: Vec<(u16, u16)>,
    /// Ports in `low..=high` that are not reserved.
    pub usable: u32,
}

/// A range as a recording's namespace line holds it; `usable` there is not trusted.
#[derive(serde::Deserialize)]
struct RecordedRange {
    low: u16,
    high: u16,
    reserved: Vec<(u16, u16)>,
}

impl TryFrom<RecordedRange> for UsableRange {
    type Error = String;

    fn try_from(r: RecordedRange) -> Result<Self, String> {
        if r.low > r.high {
            return Err(format!(
                "port range {}-{} ends below its start (the kernel never holds such a range)",
                r.low, r.high
            ));
        }
        if let Some((a, b)) = r.reserved.iter().find(|(a, b)| a > b) {
            return Err(format!("reserved ports {a}-{b} end below their start"));
        }
        Ok(Self::new(r.low, r.high, r.reserved))
    }
}

impl UsableRange {
    /// Builds a range; `reserved` may be unsorted and overlapping. If `low > high` they are
    /// swapped (the kernel refuses to store such a range).
    pub fn new(low: u16, high: u16, reserved: Vec<(u16, u16)>) -> Self {
        let (low, high) = if low <= high {
            (low, high)
        } else {
            (high, low)
        };
        let reserved = merge_ranges(reserved);
        let reserved_inside: u32 = reserved
            .iter()
            .filter_map(|&(a, b)| {
                let a = a.max(low);
                let b = b.min(high);
                (a <= b).then(|| u32::from(b) - u32::from(a) + 1)
            })
            .sum();
        let span = u32::from(high) - u32::from(low) + 1;
        UsableRange {
            low,
            high,
            reserved,
            usable: span - reserved_inside,
        }
    }

    /// Parses the text of the two sysctls (as read from `/proc/sys/net/ipv4/...`).
    pub fn parse(port_range: &str, reserved_ports: &str) -> Result<Self, NetnsError> {
        let (low, high) = parse_port_range(port_range)?;
        Ok(Self::new(low, high, parse_reserved_ports(reserved_ports)?))
    }

    /// Number of ports in `low..=high`, reserved or not.
    pub fn span(&self) -> u32 {
        u32::from(self.high) - u32::from(self.low) + 1
    }

    /// Is `port` inside `low..=high`?
    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }

    /// Is `port` listed in `ip_local_reserved_ports`?
    pub fn is_reserved(&self, port: u16) -> bool {
        self.reserved.iter().any(|&(a, b)| (a..=b).contains(&port))
    }

    /// Can automatic port selection hand out `port` (in range and not reserved)?
    pub fn is_usable(&self, port: u16) -> bool {
        self.contains(port) && !self.is_reserved(port)
    }
}

fn merge_ranges(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    for r in &mut ranges {
        if r.0 > r.1 {
            *r = (r.1, r.0);
        }
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

fn parse_port(token: &str, what: &'static str, text: &str) -> Result<u16, NetnsError> {
    token.trim().parse::<u16>().map_err(|_| NetnsError::Parse {
        what,
        text: text.to_string(),
    })
}

/// Parses `ip_local_port_range`: two port numbers separated by whitespace (`"32768\t60999\n"`).
pub fn parse_port_range(text: &str) -> Result<(u16, u16), NetnsError> {
    const WHAT: &str = "ip_local_port_range";
    let mut fields = text.split_whitespace();
    let (Some(low), Some(high), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(NetnsError::Parse {
            what: WHAT,
            text: text.to_string(),
        });
    };
    let low = parse_port(low, WHAT, text)?;
    let high = parse_port(high, WHAT, text)?;
    if low > high {
        return Err(NetnsError::Parse {
            what: WHAT,
            text: text.to_string(),
        });
    }
    Ok((low, high))
}

/// Parses `ip_local_reserved_ports`: comma-separated ports and inclusive ranges
/// (`"8080,9000-9010"`), possibly empty. Returns sorted, merged ranges.
pub fn parse_reserved_ports(text: &str) -> Result<Vec<(u16, u16)>, NetnsError> {
    const WHAT: &str = "ip_local_reserved_ports";
    let mut out = Vec::new();
    for token in text.trim().split(',') {
        let token = token.trim();
        if token.is_empty() {
            continue;
        }
        let range = match token.split_once('-') {
            Some((a, b)) => (parse_port(a, WHAT, text)?, parse_port(b, WHAT, text)?),
            None => {
                let p = parse_port(token, WHAT, text)?;
                (p, p)
            }
        };
        if range.0 > range.1 {
            return Err(NetnsError::Parse {
                what: WHAT,
                text: text.to_string(),
            });
        }
        out.push(range);
    }
    Ok(merge_ranges(out))
}

fn read_sysctl(path: &str) -> Result<String, NetnsError> {
    std::fs::read_to_string(path).map_err(|source| NetnsError::Io {
        path: PathBuf::from(path),
        source,
    })
}

/// Reads the ephemeral range and reserved ports of `netns` (not of the caller, unless
/// `netns` is [`NetnsRef::Current`]).
pub fn read_range(netns: &NetnsRef) -> Result<UsableRange, NetnsError> {
    let (range, reserved) = run_in_netns(netns, || {
        Ok((
            read_sysctl(PORT_RANGE_SYSCTL)?,
            read_sysctl(RESERVED_PORTS_SYSCTL)?,
        ))
    })?;
    UsableRange::parse(&range, &reserved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_range_is_checked_and_its_usable_count_recomputed() {
        let r: UsableRange = serde_json::from_str(
            r#"{"low":40000,"high":40009,"reserved":[[40000,40001]],"usable":99}"#,
        )
        .unwrap();
        assert_eq!(r.usable, 8);
        for bad in [
            r#"{"low":40009,"high":40000,"reserved":[],"usable":10}"#,
            r#"{"low":40000,"high":40009,"reserved":[[40005,40001]],"usable":10}"#,
        ] {
            let e = serde_json::from_str::<UsableRange>(bad).unwrap_err();
            assert!(e.to_string().contains("below"), "{e}");
        }
    }

    #[test]
    fn parses_default_range() {
        assert_eq!(parse_port_range("32768\t60999\n").unwrap(), (32768, 60999));
        assert_eq!(parse_port_range("  1024 65535 ").unwrap(), (1024, 65535));
        assert_eq!(parse_port_range("5000 5000").unwrap(), (5000, 5000));
    }

    #[test]
    fn rejects_bad_range() {
        for bad in ["", "1", "1 2 3", "a 2", "70000 70001", "20 10", "-1 5"] {
            assert!(parse_port_range(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn parses_reserved_lists() {
        assert_eq!(parse_reserved_ports("").unwrap(), vec![]);
        assert_eq!(parse_reserved_ports("\n").unwrap(), vec![]);
        assert_eq!(parse_reserved_ports("8080\n").unwrap(), vec![(8080, 8080)]);
        assert_eq!(
            parse_reserved_ports("9000-9010,8080,9005-9020,9021\n").unwrap(),
            vec![(8080, 8080), (9000, 9021)]
        );
        for bad in ["x", "10-", "-10", "10-5", "65536", "1,,2-x"] {
            assert!(parse_reserved_ports(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn usable_counts_only_reserved_inside_range() {
        let r = UsableRange::parse("32768 60999", "").unwrap();
        assert_eq!(r.usable, 28232);
        assert_eq!(r.span(), 28232);

        let r = UsableRange::parse("40000 40009", "39990-40001,40005,50000-50100").unwrap();
        assert_eq!(r.low, 40000);
        assert_eq!(r.high, 40009);
        assert_eq!(r.usable, 10 - 2 - 1);
        assert!(r.is_reserved(40000) && r.is_reserved(40005) && !r.is_reserved(40002));
        assert!(r.is_usable(40002) && !r.is_usable(40001) && !r.is_usable(40010));

        let all = UsableRange::parse("100 200", "0-65535").unwrap();
        assert_eq!(all.usable, 0);

        let full = UsableRange::new(0, u16::MAX, vec![]);
        assert_eq!(full.usable, 65536);
    }

    #[test]
    fn new_normalises_input() {
        let r = UsableRange::new(20, 10, vec![(15, 12), (11, 11)]);
        assert_eq!((r.low, r.high), (10, 20));
        assert_eq!(r.reserved, vec![(11, 15)]);
        assert_eq!(r.usable, 11 - 5);
    }

    #[test]
    fn reads_own_namespace() {
        // Always readable on Linux; the values only need to be self-consistent.
        let r = read_range(&NetnsRef::Current).unwrap();
        assert!(r.low <= r.high);
        assert!(r.usable <= r.span());
    }

    #[test]
    fn reads_own_tcp_sysctls() {
        let t = read_tcp_sysctls(&NetnsRef::Current).unwrap();
        assert!(t.tw_reuse <= 2);
        assert!(t.fin_timeout_s > 0);
    }

    #[test]
    fn missing_namespace_is_an_error() {
        let err = read_range(&NetnsRef::named("port-trace-no-such-netns")).unwrap_err();
        assert!(matches!(err, NetnsError::Io { .. }), "{err}");
    }
}
