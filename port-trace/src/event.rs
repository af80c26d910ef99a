//! Decoding ring-buffer records into events users read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nix::errno::Errno;
use port_trace_common::{EVENT_SIZE, Family, HookId, Op, PortEvent, Proto};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record is {0} bytes, expected {EVENT_SIZE}")]
    Size(usize),
}

/// One kernel port choice or failure, as printed by `trace --format json`.
/// Field names are part of the recording format read by `analyze`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub op: String,
    pub proto: String,
    pub family: String,
    pub port: u16,
    pub saddr: IpAddr,
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
    /// `ok` or the errno name, e.g. `EADDRNOTAVAIL`.
    pub result: String,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub uid: u32,
    pub cgroup_id: u64,
    pub netns: u32,
    pub hook: String,
    /// Nanoseconds the kernel spent choosing the port (entry to return of the choosing
    /// function); `null` when the hook set cannot measure it (the cgroup set) and in
    /// recordings made before the field existed.
    #[serde(default)]
    pub latency_ns: Option<u64>,
}

impl Event {
    pub fn is_ok(&self) -> bool {
        self.result == "ok"
    }
}

/// Converts the kernel's CLOCK_BOOTTIME stamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    boot_to_wall_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        use nix::time::{ClockId, clock_gettime};
        let ns = |id| {
            clock_gettime(id)
                .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
                .unwrap_or(0)
        };
        let wall = ns(ClockId::CLOCK_REALTIME);
        let boot = ns(ClockId::CLOCK_BOOTTIME);
        Self {
            boot_to_wall_ns: wall - boot,
        }
    }

    /// A clock that leaves stamps as they are (tests).
    pub fn identity() -> Self {
        Self { boot_to_wall_ns: 0 }
    }

    pub fn wall_ns(&self, boot_ns: u64) -> u64 {
        (boot_ns as i128 + self.boot_to_wall_ns).max(0) as u64
    }
}

pub fn errno_name(errno: i32) -> String {
    if errno == 0 {
        return "ok".into();
    }
    match Errno::from_raw(errno) {
        Errno::UnknownErrno => format!("E{errno}"),
        e => format!("{e:?}"),
    }
}

fn addr(fam: u8, bytes: &[u8; 16]) -> IpAddr {
    if fam == Family::Inet as u8 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

pub fn proto_name(p: u8) -> &'static str {
    Proto::try_from(p).map(Proto::name).unwrap_or("unknown")
}

pub fn family_name(f: u8) -> &'static str {
    Family::try_from(f).map(Family::name).unwrap_or("unknown")
}

/// Reads one ring-buffer record.
pub fn parse_raw(bytes: &[u8]) -> Result<PortEvent, DecodeError> {
    if bytes.len() < EVENT_SIZE {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: PortEvent is repr(C) plain data, the length is checked, and read_unaligned
    // copes with any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<PortEvent>()) })
}

pub fn decode(raw: &PortEvent, clock: &Clock) -> Event {
    let has_dest = raw.has_daddr != 0;
    Event {
        ts_ns: clock.wall_ns(raw.ts_ns),
        op: Op::try_from(raw.op)
            .map(Op::name)
            .unwrap_or("unknown")
            .into(),
        proto: proto_name(raw.proto).into(),
        family: family_name(raw.family).into(),
        port: raw.port,
        saddr: addr(raw.family, &raw.saddr),
        daddr: has_dest.then(|| addr(raw.family, &raw.daddr)),
        dport: has_dest.then_some(raw.dport),
        result: errno_name(raw.errno),
        pid: raw.pid,
        tid: raw.tid,
        comm: comm(&raw.comm),
        uid: raw.uid,
        cgroup_id: raw.cgroup_id,
        netns: raw.netns,
        hook: HookId::try_from(raw.hook)
            .map(HookId::name)
            .unwrap_or("unknown")
            .into(),
        latency_ns: (raw.latency_ns != 0).then_some(raw.latency_ns),
    }
}

/// A TCP/UDP IPv4 event from 127.0.0.1 in namespace 7, for other modules' tests.
#[cfg(test)]
pub(crate) fn test_event(
    op: &str,
    proto: &str,
    port: u16,
    dest: Option<(Ipv4Addr, u16)>,
    result: &str,
    ts: u64,
) -> Event {
    Event {
        ts_ns: ts,
        op: op.into(),
        proto: proto.into(),
        family: "ipv4".into(),
        port,
        saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        daddr: dest.map(|d| IpAddr::V4(d.0)),
        dport: dest.map(|d| d.1),
        result: result.into(),
        pid: 1,
        tid: 1,
        comm: "curl".into(),
        uid: 0,
        cgroup_id: 1,
        netns: 7,
        hook: "test".into(),
        latency_ns: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> PortEvent {
        let mut r = PortEvent {
            ts_ns: 5,
            pid: 10,
            tid: 11,
            uid: 1000,
            netns: 4026531840,
            port: 40000,
            dport: 443,
            op: Op::Connect as u8,
            proto: Proto::Tcp as u8,
            family: Family::Inet as u8,
            hook: HookId::SockOpsConnect as u8,
            has_daddr: 1,
            ..Default::default()
        };
        r.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        r.comm[..4].copy_from_slice(b"curl");
        r
    }

    #[test]
    fn decodes_ipv4_connect() {
        let r = raw();
        let bytes: [u8; EVENT_SIZE] = unsafe { std::mem::transmute(r) };
        let e = decode(&parse_raw(&bytes).unwrap(), &Clock::identity());
        assert_eq!(e.op, "connect");
        assert_eq!(e.proto, "tcp");
        assert_eq!(e.family, "ipv4");
        assert_eq!(e.saddr.to_string(), "127.0.0.1");
        assert_eq!(e.daddr.unwrap().to_string(), "10.1.2.3");
        assert_eq!(e.dport, Some(443));
        assert_eq!(e.comm, "curl");
        assert_eq!(e.result, "ok");
        assert_eq!(e.hook, "sock_ops/tcp_connect_cb");
        assert_eq!(e.ts_ns, 5);
    }

    #[test]
    fn decodes_ipv6_failure_without_destination() {
        let mut r = raw();
        r.family = Family::Inet6 as u8;
        r.op = Op::Bind as u8;
        r.has_daddr = 0;
        r.port = 0;
        r.errno = 98;
        r.saddr = Ipv6Addr::LOCALHOST.octets();
        let e = decode(&r, &Clock::identity());
        assert_eq!(e.saddr.to_string(), "::1");
        assert_eq!(e.daddr, None);
        assert_eq!(e.dport, None);
        assert_eq!(e.result, "EADDRINUSE");
        assert!(!e.is_ok());
    }

    #[test]
    fn short_record_is_an_error() {
        assert_eq!(parse_raw(&[0u8; 10]), Err(DecodeError::Size(10)));
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(99), "EADDRNOTAVAIL");
        assert_eq!(errno_name(11), "EAGAIN");
        assert_eq!(errno_name(0), "ok");
        assert_eq!(errno_name(4000), "E4000");
    }

    #[test]
    fn json_field_names_are_stable() {
        let e = decode(&raw(), &Clock::identity());
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|s| s.as_str()).collect();
        for k in [
            "ts_ns",
            "op",
            "proto",
            "family",
            "port",
            "saddr",
            "daddr",
            "dport",
            "result",
            "pid",
            "tid",
            "comm",
            "uid",
            "cgroup_id",
            "netns",
            "hook",
            "latency_ns",
        ] {
            assert!(keys.contains(&k), "missing {k}");
        }
        assert_eq!(keys.len(), 17);
    }

    #[test]
    fn latency_is_null_when_unknown() {
        let mut r = raw();
        let e = decode(&r, &Clock::identity());
        assert_eq!(e.latency_ns, None);
        let v = serde_json::to_value(&e).unwrap();
        assert!(v["latency_ns"].is_null());

        r.hook = HookId::FexitInetHashConnect as u8;
        r.latency_ns = 1234;
        let bytes: [u8; EVENT_SIZE] = unsafe { std::mem::transmute(r) };
        let e = decode(&parse_raw(&bytes).unwrap(), &Clock::identity());
        assert_eq!(e.latency_ns, Some(1234));
        assert_eq!(e.hook, "fexit/inet_hash_connect");
        assert_eq!(serde_json::to_value(&e).unwrap()["latency_ns"], 1234);
    }

    #[test]
    fn recordings_without_latency_still_parse() {
        let line = r#"{"ts_ns":1,"op":"bind","proto":"udp","family":"ipv4","port":40000,"saddr":"0.0.0.0","daddr":null,"dport":null,"result":"ok","pid":1,"tid":1,"comm":"x","uid":0,"cgroup_id":1,"netns":9,"hook":"h"}"#;
        let e: Event = serde_json::from_str(line).unwrap();
        assert_eq!(e.latency_ns, None);
    }

    #[test]
    fn event_layout_is_fixed() {
        assert_eq!(EVENT_SIZE, 104);
        assert_eq!(std::mem::align_of::<PortEvent>(), 8);
        assert_eq!(std::mem::offset_of!(PortEvent, comm), 80);
        assert_eq!(std::mem::offset_of!(PortEvent, latency_ns), 96);
    }
}
