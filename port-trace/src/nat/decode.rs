//! Conntrack netlink messages (ctnetlink, `NFNL_SUBSYS_CTNETLINK`) as plain data: a connection's
//! original and reply tuples, and the per-CPU statistics. The netlink-packet-netfilter crate
//! parses the conntrack messages; the statistics reply (`IPCTNL_MSG_CT_GET_STATS_CPU`), which
//! the crate hands back as raw attributes, is read here.

use std::net::IpAddr;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, Nla};
use netlink_packet_netfilter::{
    NetfilterMessage, NetfilterMessageInner,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Status, Tuple,
    },
};

use crate::event::Proto;

/// `IPCTNL_MSG_CT_GET_STATS_CPU` (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
pub const IPCTNL_MSG_CT_GET_STATS_CPU: u8 = 4;

/// One direction of a connection: who sends to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple5 {
    pub proto: Proto,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

/// A conntrack entry as a NEW or DESTROY event (or a dump) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub orig: Tuple5,
    pub reply: Tuple5,
    /// `IPS_SRC_NAT` was set (absent in some DESTROY events: then the tuples decide).
    pub src_nat_flag: bool,
}

/// A source translation: the reply goes back to the translated source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceNat {
    pub orig: Tuple5,
    pub translated_addr: IpAddr,
    pub translated_port: u16,
    /// The peer really talked to: the reply's source. It differs from the original
    /// destination when the destination was translated too (a Kubernetes service address
    /// DNATed to a pod), and it is what the translated tuple must be unique toward.
    pub peer_addr: IpAddr,
    pub peer_port: u16,
}

impl Connection {
    /// The source translation, if any: the reply tuple's destination is where replies go,
    /// which differs from the original source exactly when the source was translated.
    pub fn source_nat(&self) -> Option<SourceNat> {
        let (addr, port) = (self.reply.dst, self.reply.dport);
        (addr != self.orig.src || port != self.orig.sport).then_some(SourceNat {
            orig: self.orig,
            translated_addr: addr,
            translated_port: port,
            peer_addr: self.reply.src,
            peer_port: self.reply.sport,
        })
    }
}

/// What one netlink message said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtMessage {
    /// A NEW event, or one entry of a table dump.
    New(Connection),
    /// A DESTROY event.
    Destroy(Connection),
    /// One CPU's statistics.
    Stats { cpu: u16, stats: CpuStats },
    /// The end of a dump.
    Done,
    /// An error reply: a negative errno (0 is an acknowledgement).
    Error(i32),
    /// Anything else: ICMP, other protocols, other subsystems.
    Ignored,
}

/// Conntrack's per-CPU counters that tell of NAT trouble (`ctattr_stats_cpu`; also the columns
/// of /proc/net/stat/nf_conntrack).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// A new entry could not be inserted: its tuple clashed (for NAT: no free port).
    pub insert_failed: u64,
    /// A packet was dropped because its entry could not be inserted or made.
    pub drop: u64,
    /// A clash was resolved (UDP: the packet took the existing entry).
    pub clash_resolve: u64,
    /// A lookup restarted because the hash table changed under it.
    pub search_restart: u64,
    /// An entry was dropped early to make room (the table was full).
    pub early_drop: u64,
    /// Entries inserted.
    pub insert: u64,
    /// Packets conntrack could not track.
    pub invalid: u64,
    /// Other errors (`error`).
    pub error: u64,
    /// A hash chain was too long to insert into.
    pub chain_toolong: u64,
}

/// The counters by name: the `stat` label values, in a fixed order.
pub const STAT_NAMES: [&str; 9] = [
    "insert_failed",
    "drop",
    "clash_resolve",
    "search_restart",
    "early_drop",
    "insert",
    "invalid",
    "error",
    "chain_toolong",
];

impl CpuStats {
    /// The counters in [`STAT_NAMES`] order.
    pub fn values(&self) -> [u64; 9] {
        [
            self.insert_failed,
            self.drop,
            self.clash_resolve,
            self.search_restart,
            self.early_drop,
            self.insert,
            self.invalid,
            self.error,
            self.chain_toolong,
        ]
    }

    /// The sum over CPUs.
    pub fn add(&mut self, o: &CpuStats) {
        self.insert_failed += o.insert_failed;
        self.drop += o.drop;
        self.clash_resolve += o.clash_resolve;
        self.search_restart += o.search_restart;
        self.early_drop += o.early_drop;
        self.insert += o.insert;
        self.invalid += o.invalid;
        self.error += o.error;
        self.chain_toolong += o.chain_toolong;
    }

    /// Reads /proc/net/stat/nf_conntrack (one hex row per CPU, a header naming the columns):
    /// the fallback where the netlink statistics request is refused.
    pub fn parse_proc(text: &str) -> Option<CpuStats> {
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.split_whitespace().collect();
        let mut total = CpuStats::default();
        for line in lines {
            let mut row = CpuStats::default();
            for (name, value) in header.iter().zip(line.split_whitespace()) {
                let v = u64::from_str_radix(value, 16).ok()?;
                if let Some(slot) = row.slot(name) {
                    *slot = v;
                }
            }
            total.add(&row);
        }
        Some(total)
    }

    fn slot(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "insert_failed" => &mut self.insert_failed,
            "drop" => &mut self.drop,
            // The proc file's name for it.
            "clash_resolve" | "clashres" => &mut self.clash_resolve,
            "search_restart" => &mut self.search_restart,
            "early_drop" => &mut self.early_drop,
            "insert" => &mut self.insert,
            "invalid" => &mut self.invalid,
            "error" => &mut self.error,
            "chain_toolong" => &mut self.chain_toolong,
            _ => return None,
        })
    }
}

/// `ctattr_stats_cpu` attribute numbers.
fn stat_name(kind: u16) -> Option<&'static str> {
    Some(match kind {
        4 => "invalid",
        8 => "insert",
        9 => "insert_failed",
        10 => "drop",
        11 => "early_drop",
        12 => "error",
        13 => "search_restart",
        14 => "clash_resolve",
        15 => "chain_toolong",
        _ => return None,
    })
}

/// Decodes one netlink message (the bytes of exactly one, header included).
pub fn decode(bytes: &[u8]) -> Result<CtMessage, String> {
    let msg = NetlinkMessage::<NetfilterMessage>::deserialize(bytes).map_err(|e| e.to_string())?;
    Ok(match msg.payload {
        NetlinkPayload::Done(_) => CtMessage::Done,
        NetlinkPayload::Error(e) => CtMessage::Error(e.code.map_or(0, |c| c.get())),
        NetlinkPayload::InnerMessage(m) => inner(m),
        _ => CtMessage::Ignored,
    })
}

fn inner(m: NetfilterMessage) -> CtMessage {
    let cpu = m.header.res_id;
    match m.inner {
        NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) => {
            connection(&attrs).map_or(CtMessage::Ignored, CtMessage::New)
        }
        NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(attrs)) => {
            connection(&attrs).map_or(CtMessage::Ignored, CtMessage::Destroy)
        }
        NetfilterMessageInner::Conntrack(ConntrackMessage::Other {
            message_type: IPCTNL_MSG_CT_GET_STATS_CPU,
            attributes,
        }) => {
            let mut stats = CpuStats::default();
            for a in &attributes {
                let mut value = vec![0; a.value_len()];
                a.emit_value(&mut value);
                let v = match value.len() {
                    4 => u64::from(u32::from_be_bytes(value[..4].try_into().unwrap_or([0; 4]))),
                    8 => u64::from_be_bytes(value[..8].try_into().unwrap_or([0; 8])),
                    _ => continue,
                };
                if let Some(slot) = stat_name(a.kind()).and_then(|n| stats.slot(n)) {
                    *slot = v;
                }
            }
            CtMessage::Stats { cpu, stats }
        }
        _ => CtMessage::Ignored,
    }
}

fn connection(attrs: &[ConntrackAttribute]) -> Option<Connection> {
    let mut orig = None;
    let mut reply = None;
    let mut src_nat_flag = false;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple(t),
            ConntrackAttribute::CtaStatus(s) => src_nat_flag = s.contains(Status::SrcNat),
            _ => {}
        }
    }
    Some(Connection {
        orig: orig?,
        reply: reply?,
        src_nat_flag,
    })
}

/// A TCP or UDP tuple; None for other protocols (they have no ports to run out of here).
fn tuple(parts: &[Tuple]) -> Option<Tuple5> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for p in parts {
        match p {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for x in ps {
                    match x {
                        ProtoTuple::Protocol(Protocol::Tcp) => proto = Some(Proto::Tcp),
                        ProtoTuple::Protocol(Protocol::Udp) => proto = Some(Proto::Udp),
                        ProtoTuple::SourcePort(p) => sport = Some(*p),
                        ProtoTuple::DestinationPort(p) => dport = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple5 {
        proto: proto?,
        src: src?,
        sport: sport?,
        dst: dst?,
        dport: dport?,
    })
}

/// The netlink messages in one datagram, each as its own byte slice.
pub fn split(datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(rest[..4].try_into().ok()?) as usize;
        if len < 16 || len > rest.len() {
            return None;
        }
        // Messages are 4-byte aligned.
        let step = (len + 3) & !3;
        let (one, next) = rest.split_at(len);
        rest = next.get(step - len..).unwrap_or(&[]);
        Some(one)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// Captured on Linux 6.18 from a "node" namespace that masquerades 192.0.2.0/24 with
    /// `--to-ports 40000-40009`: a curl from 192.0.2.2 to 198.51.100.2:80 (NEW, then DESTROY)
    /// and the per-CPU statistics dump of a 2-CPU machine.
    const NEW: &str = "c400000000010006000000000000000002000000340001801400018008000100c000020208000200c63364021c000280050001000600000006000200c86200000600030000500000340002801400018008000100c633640208000200c63364011c00028005000100060000000600020000500000060003009c48000008000c00ac0b473508000300000001980800070000000078300004802c0001800500010001000000050002000a000000050003000000000006000400030000000600050000000000";
    const DESTROY: &str = "a400000002010000000000000000000002000000340001801400018008000100c000020208000200c63364021c000280050001000600000006000200c86200000600030000500000340002801400018008000100c633640208000200c63364011c00028005000100060000000600020000500000060003009c48000008000c00ac0b473508000300000003980800070000000078100004800c0001800500010008000000";
    const STATS: &str = "64000000040102000700000066d4dae000000000080002000000000008000400000000000800080000000000080009000000000008000a000000000008000b000000000008000c000000000008000d000000000008000e000000000008000f000000000064000000040102000700000066d4dae000000001080002000000000008000400000000000800080000000000080009000000000008000a000000000008000b000000000008000c000000000008000d000000000008000e000000000008000f0000000000";

    fn bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn new_event_gives_the_port_masquerade_chose() {
        let data = bytes(NEW);
        let CtMessage::New(c) = decode(&data).unwrap() else {
            panic!("not a NEW event")
        };
        assert!(c.src_nat_flag);
        let n = c.source_nat().unwrap();
        assert_eq!(n.orig.src, IpAddr::from(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(n.orig.sport, 51298);
        assert_eq!(n.orig.dst, IpAddr::from(Ipv4Addr::new(198, 51, 100, 2)));
        assert_eq!(n.orig.dport, 80);
        assert_eq!(n.orig.proto, Proto::Tcp);
        assert_eq!(
            n.translated_addr,
            IpAddr::from(Ipv4Addr::new(198, 51, 100, 1))
        );
        assert_eq!(n.translated_port, 40008);
    }

    #[test]
    fn destroy_event_names_the_same_connection() {
        let (new, destroy) = (bytes(NEW), bytes(DESTROY));
        let (CtMessage::New(a), CtMessage::Destroy(b)) =
            (decode(&new).unwrap(), decode(&destroy).unwrap())
        else {
            panic!("not NEW then DESTROY")
        };
        assert_eq!(a.orig, b.orig);
        assert_eq!(a.reply, b.reply);
    }

    #[test]
    fn stats_dump_is_one_message_per_cpu() {
        let data = bytes(STATS);
        let cpus: Vec<_> = split(&data)
            .map(|m| match decode(m).unwrap() {
                CtMessage::Stats { cpu, stats } => (cpu, stats),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[0].0, 0);
        assert_eq!(cpus[1].0, 1);
        assert_eq!(cpus[0].1, CpuStats::default());
    }

    #[test]
    fn an_unnatted_connection_is_no_source_nat() {
        let t = Tuple5 {
            proto: Proto::Udp,
            src: Ipv4Addr::new(192, 0, 2, 2).into(),
            sport: 5000,
            dst: Ipv4Addr::new(198, 51, 100, 2).into(),
            dport: 53,
        };
        let reply = Tuple5 {
            src: t.dst,
            sport: t.dport,
            dst: t.src,
            dport: t.sport,
            ..t
        };
        let c = Connection {
            orig: t,
            reply,
            src_nat_flag: false,
        };
        assert_eq!(c.source_nat(), None);
    }

    #[test]
    fn a_service_address_is_charged_to_the_backend_really_talked_to() {
        // 192.0.2.2 -> service 203.0.113.10:80, DNATed to 198.51.100.7:8080 and masqueraded
        // to 198.51.100.1:40001.
        let orig = Tuple5 {
            proto: Proto::Tcp,
            src: Ipv4Addr::new(192, 0, 2, 2).into(),
            sport: 5000,
            dst: Ipv4Addr::new(203, 0, 113, 10).into(),
            dport: 80,
        };
        let reply = Tuple5 {
            proto: Proto::Tcp,
            src: Ipv4Addr::new(198, 51, 100, 7).into(),
            sport: 8080,
            dst: Ipv4Addr::new(198, 51, 100, 1).into(),
            dport: 40001,
        };
        let n = Connection {
            orig,
            reply,
            src_nat_flag: true,
        }
        .source_nat()
        .unwrap();
        assert_eq!((n.peer_addr, n.peer_port), (reply.src, 8080));
        assert_eq!(n.translated_port, 40001);
        let key = crate::nat::occupancy::SpaceKey::of(&n);
        assert_eq!((key.daddr, key.dport), (reply.src, 8080));
    }

    #[test]
    fn proc_stats_sum_over_cpus() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                    00000003  00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000002 00000002 00000000 00000000  00000000 00000000 00000000 00000010\n\
                    00000003  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000003 00000000 00000000  00000000 00000000 00000000 00000000\n";
        let s = CpuStats::parse_proc(text).unwrap();
        assert_eq!(s.insert_failed, 3);
        assert_eq!(s.drop, 5);
        assert_eq!(s.search_restart, 16);
        assert_eq!(s.clash_resolve, 1, "the proc file calls it clashres");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let _ = decode(&[0xff; 20]);
        assert_eq!(split(&[1, 2, 3]).count(), 0);
        let mut short = bytes(NEW);
        short.truncate(40);
        let _ = decode(&short);
    }
}
