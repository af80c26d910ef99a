//! Decoding ring-buffer records into typed events.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use port_trace_common::{EVENT_SIZE, PortEvent, UnknownId};

use crate::event::{Event, Family, HookId, Op, Outcome, Proto};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record is {0} bytes, expected {EVENT_SIZE}")]
    Size(usize),
    #[error("ring buffer record with an {0}")]
    Id(#[from] UnknownId),
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

fn addr(fam: Family, bytes: &[u8; 16]) -> IpAddr {
    if fam == Family::Inet {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
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

/// Turns a kernel record into an event; an id this build does not know is an error.
pub fn decode(raw: &PortEvent, clock: &Clock) -> Result<Event, DecodeError> {
    let family = Family::try_from(raw.family)?;
    let has_dest = raw.has_daddr != 0;
    Ok(Event {
        ts_ns: clock.wall_ns(raw.ts_ns),
        op: Op::try_from(raw.op)?,
        proto: Proto::try_from(raw.proto)?,
        family,
        port: raw.port,
        saddr: addr(family, &raw.saddr),
        daddr: has_dest.then(|| addr(family, &raw.daddr)),
        dport: has_dest.then_some(raw.dport),
        result: Outcome::from_errno(raw.errno),
        pid: raw.pid,
        tid: raw.tid,
        comm: comm(&raw.comm),
        uid: raw.uid,
        cgroup_id: raw.cgroup_id,
        netns: raw.netns,
        hook: HookId::try_from(raw.hook)?,
        latency_ns: (raw.latency_ns != 0).then_some(raw.latency_ns),
        // Filled in by the session's attributor, which may look the id up.
        cgroup: None,
        workload: None,
        nat: None,
    })
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
        // SAFETY: PortEvent is repr(C) plain data of exactly EVENT_SIZE bytes.
        let bytes: [u8; EVENT_SIZE] = unsafe { std::mem::transmute(r) };
        let e = decode(&parse_raw(&bytes).unwrap(), &Clock::identity()).unwrap();
        assert_eq!(e.op, Op::Connect);
        assert_eq!(e.proto, Proto::Tcp);
        assert_eq!(e.family, Family::Inet);
        assert_eq!(e.saddr.to_string(), "127.0.0.1");
        assert_eq!(e.daddr.unwrap().to_string(), "10.1.2.3");
        assert_eq!(e.dport, Some(443));
        assert_eq!(e.comm, "curl");
        assert_eq!(e.result, Outcome::Ok);
        assert_eq!(e.hook, HookId::SockOpsConnect);
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
        let e = decode(&r, &Clock::identity()).unwrap();
        assert_eq!(e.saddr.to_string(), "::1");
        assert_eq!(e.daddr, None);
        assert_eq!(e.dport, None);
        assert_eq!(e.result.name(), "EADDRINUSE");
        assert!(!e.is_ok());
    }

    #[test]
    fn short_record_is_an_error() {
        assert_eq!(parse_raw(&[0u8; 10]), Err(DecodeError::Size(10)));
    }

    #[test]
    fn unknown_ids_are_errors_not_guesses() {
        let mut r = raw();
        r.op = 0;
        assert_eq!(
            decode(&r, &Clock::identity()),
            Err(DecodeError::Id(UnknownId { kind: "op", id: 0 }))
        );
        let mut r = raw();
        r.hook = 200;
        assert!(decode(&r, &Clock::identity()).is_err());
    }

    /// The JSON line of an event, byte for byte: the recording format.
    #[test]
    fn json_line_is_unchanged() {
        let mut r = raw();
        r.latency_ns = 1234;
        r.errno = 99;
        r.port = 0;
        let e = decode(&r, &Clock::identity()).unwrap();
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"ts_ns":5,"op":"connect","proto":"tcp","family":"ipv4","port":0,"saddr":"127.0.0.1","daddr":"10.1.2.3","dport":443,"result":"EADDRNOTAVAIL","pid":10,"tid":11,"comm":"curl","uid":1000,"cgroup_id":0,"netns":4026531840,"hook":"sock_ops/tcp_connect_cb","latency_ns":1234,"cgroup":null,"workload":null}"#
        );
        assert_eq!(
            serde_json::from_str::<Event>(&serde_json::to_string(&e).unwrap()).unwrap(),
            e
        );
    }

    #[test]
    fn json_field_names_are_stable() {
        let e = decode(&raw(), &Clock::identity()).unwrap();
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
            "cgroup",
            "workload",
        ] {
            assert!(keys.contains(&k), "missing {k}");
        }
        assert_eq!(keys.len(), 19);
    }

    #[test]
    fn latency_is_null_when_unknown() {
        let mut r = raw();
        let e = decode(&r, &Clock::identity()).unwrap();
        assert_eq!(e.latency_ns, None);
        let v = serde_json::to_value(&e).unwrap();
        assert!(v["latency_ns"].is_null());

        r.hook = HookId::FexitInetHashConnect as u8;
        r.latency_ns = 1234;
        // SAFETY: PortEvent is repr(C) plain data of exactly EVENT_SIZE bytes.
        let bytes: [u8; EVENT_SIZE] = unsafe { std::mem::transmute(r) };
        let e = decode(&parse_raw(&bytes).unwrap(), &Clock::identity()).unwrap();
        assert_eq!(e.latency_ns, Some(1234));
        assert_eq!(e.hook, HookId::FexitInetHashConnect);
        assert_eq!(serde_json::to_value(&e).unwrap()["latency_ns"], 1234);
    }

    #[test]
    fn event_layout_is_fixed() {
        assert_eq!(EVENT_SIZE, 104);
        assert_eq!(std::mem::align_of::<PortEvent>(), 8);
        assert_eq!(std::mem::offset_of!(PortEvent, comm), 80);
        assert_eq!(std::mem::offset_of!(PortEvent, latency_ns), 96);
    }
}
