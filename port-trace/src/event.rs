//! The event users read: one kernel port choice or failure, typed end to end.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{Arc, OnceLock},
};

pub use port_trace_common::{Family, HookId, Op, Proto};

use crate::attribution::Workload;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One kernel port choice or failure, as printed by `trace --format json`.
/// Field names and value spellings are the recording format read by `analyze`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub op: Op,
    pub proto: Proto,
    pub family: Family,
    pub port: u16,
    pub saddr: IpAddr,
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
    /// `ok` or the errno name, e.g. `EADDRNOTAVAIL`.
    pub result: Outcome,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub uid: u32,
    pub cgroup_id: u64,
    pub netns: u32,
    pub hook: HookId,
    /// Nanoseconds the kernel spent choosing the port (entry to return of the choosing
    /// function); `null` when the hook set cannot measure it (the cgroup set) and in
    /// recordings made before the field existed.
    #[serde(default)]
    pub latency_ns: Option<u64>,
    /// The cgroup v2 path of `cgroup_id`, relative to the cgroup2 mount
    /// (`/system.slice/nginx.service`); `null` when it could not be resolved (see `workload`)
    /// and in recordings made before the field existed.
    #[serde(default)]
    pub cgroup: Option<Arc<str>>,
    /// Who runs in that cgroup: unit, container or pod (docs/attribution.md); `null` in
    /// recordings made before the field existed.
    #[serde(default)]
    pub workload: Option<Arc<Workload>>,
    /// For `op: nat` only: the connection before translation and the NAT port space it
    /// landed in (`port`/`saddr` are then the translated source and `daddr`/`dport` the peer
    /// after any DNAT, docs/nat.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatInfo>,
}

/// What a NAT event adds: the original source, and how full its NAT port space was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatInfo {
    /// The source before translation; `None` for a failure (conntrack counts it, no tuple).
    pub orig_saddr: Option<IpAddr>,
    pub orig_sport: Option<u16>,
    /// The destination the client asked for, when it was translated too (DNAT, e.g. a
    /// Kubernetes service address): `daddr`/`dport` are then the peer really talked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orig_daddr: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orig_dport: Option<u16>,
    /// Live mappings from this translated source address to this destination, this one
    /// included, as conntrack's table held them.
    pub in_use: u32,
    /// The NAT port range the pressure is measured against, and where it came from.
    pub range: NatRange,
}

/// A NAT port range, inclusive, and where port-trace learned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NatRange {
    pub low: u16,
    pub high: u16,
    pub source: NatRangeSource,
}

impl NatRange {
    /// Ports in the range.
    pub fn size(&self) -> u32 {
        u32::from(self.high) - u32::from(self.low) + 1
    }
}

/// Where a NAT port range came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatRangeSource {
    /// `--nat-ports` / `nat_ports` in the configuration.
    Configured,
    /// The kernel's range for a rule without `--to-ports`: 1024-65535 for source ports
    /// from 1024 (net/netfilter/nf_nat_core.c, `nf_nat_l4proto_unique_tuple`).
    KernelDefault,
}

impl Event {
    pub fn is_ok(&self) -> bool {
        self.result == Outcome::Ok
    }

    /// The destination, for events that have one (connect, autobind with an address).
    pub fn destination(&self) -> Option<(IpAddr, u16)> {
        self.daddr.zip(self.dport)
    }

    /// The destination as a port space sees it: an IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`, an AF_INET6 socket talking IPv4) is the IPv4 destination, whose
    /// ports and counter it shares. The event itself keeps what the kernel reported.
    pub fn canonical_destination(&self) -> Option<(IpAddr, u16)> {
        self.destination().map(|(a, p)| (a.to_canonical(), p))
    }

    /// A successful connect() whose local address:port equals its destination: the kernel
    /// handed out the very port being connected to, and the socket talks to itself.
    pub fn is_self_connect(&self) -> bool {
        self.op == Op::Connect
            && self.is_ok()
            && self.destination() == Some((self.saddr, self.port))
    }

    /// A port the kernel chose for a TCP bind(0) or listen() autobind: a listener on it is the
    /// kernel's own choice, not a hazard inside the ephemeral range.
    pub fn is_kernel_chosen_listen_port(&self) -> bool {
        self.is_ok() && self.proto == Proto::Tcp && self.op != Op::Connect
    }
}

/// A positive errno value as the kernel returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(pub i32);

/// Errno names by value, and values by name.
type ErrnoNames = (HashMap<i32, &'static str>, HashMap<&'static str, i32>);

/// Names of the errno values this platform knows, both ways (built once).
fn errno_names() -> &'static ErrnoNames {
    static NAMES: OnceLock<ErrnoNames> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut by_value = HashMap::new();
        let mut by_name = HashMap::new();
        for v in 1..4096 {
            let e = nix::errno::Errno::from_raw(v);
            if e == nix::errno::Errno::UnknownErrno {
                continue;
            }
            // A few hundred short names, made once for the life of the process.
            let name: &'static str = Box::leak(format!("{e:?}").into_boxed_str());
            by_value.insert(v, name);
            by_name.entry(name).or_insert(v);
        }
        (by_value, by_name)
    })
}

impl Errno {
    /// `EADDRNOTAVAIL`, or `E<n>` for a value this platform has no name for.
    pub fn name(self) -> Cow<'static, str> {
        match errno_names().0.get(&self.0) {
            Some(n) => Cow::Borrowed(n),
            None => Cow::Owned(format!("E{}", self.0)),
        }
    }

    fn parse(name: &str) -> Option<Self> {
        if let Some(v) = errno_names().1.get(name) {
            return Some(Self(*v));
        }
        name.strip_prefix('E')?.parse().ok().map(Self)
    }
}

/// What the kernel answered: a port, or an errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    Err(Errno),
}

impl Outcome {
    /// From the event's errno field: 0 is success.
    pub fn from_errno(errno: i32) -> Self {
        if errno == 0 {
            Self::Ok
        } else {
            Self::Err(Errno(errno))
        }
    }

    /// `ok` or the errno name: the `result` field, the table column, the `errno` label.
    pub fn name(self) -> Cow<'static, str> {
        match self {
            Self::Ok => Cow::Borrowed("ok"),
            Self::Err(e) => e.name(),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.name())
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        if text == "ok" {
            return Ok(Self::Ok);
        }
        Errno::parse(&text).map(Self::Err).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "result {text:?} is neither \"ok\" nor an errno name"
            ))
        })
    }
}

/// A TCP/UDP IPv4 event from 127.0.0.1 in namespace 7, for other modules' tests.
#[cfg(test)]
pub(crate) fn test_event(
    op: Op,
    proto: Proto,
    port: u16,
    dest: Option<(std::net::Ipv4Addr, u16)>,
    result: Outcome,
    ts: u64,
) -> Event {
    Event {
        ts_ns: ts,
        op,
        proto,
        family: Family::Inet,
        port,
        saddr: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        daddr: dest.map(|d| IpAddr::V4(d.0)),
        dport: dest.map(|d| d.1),
        result,
        pid: 1,
        tid: 1,
        comm: "curl".into(),
        uid: 0,
        cgroup_id: 1,
        netns: 7,
        hook: HookId::SockOpsConnect,
        latency_ns: None,
        cgroup: None,
        workload: None,
        nat: None,
    }
}

/// A failure outcome (tests).
#[cfg(test)]
pub(crate) fn failed(errno: i32) -> Outcome {
    Outcome::Err(Errno(errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names_both_ways() {
        for (v, name) in [
            (99, "EADDRNOTAVAIL"),
            (11, "EAGAIN"),
            (98, "EADDRINUSE"),
            (4000, "E4000"),
        ] {
            let o = Outcome::from_errno(v);
            assert_eq!(o.name(), name);
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), o);
        }
        assert_eq!(Outcome::from_errno(0).name(), "ok");
        assert!(serde_json::from_str::<Outcome>("\"bogus\"").is_err());
    }

    #[test]
    fn recordings_without_latency_still_parse() {
        let line = r#"{"ts_ns":1,"op":"bind","proto":"udp","family":"ipv4","port":40000,"saddr":"0.0.0.0","daddr":null,"dport":null,"result":"ok","pid":1,"tid":1,"comm":"x","uid":0,"cgroup_id":1,"netns":9,"hook":"cgroup/post_bind4"}"#;
        let e: Event = serde_json::from_str(line).unwrap();
        assert_eq!(e.latency_ns, None);
        assert_eq!((e.cgroup, e.workload), (None, None));
    }
}
