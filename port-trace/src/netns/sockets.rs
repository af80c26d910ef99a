//! Who holds which ports: a sock_diag (`NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY`) dump of the
//! TCP and UDP sockets of a network namespace, IPv4 and IPv6, in every state.
//!
//! A netlink socket reports the namespace it was created in, so the socket is created by the
//! thread that [`run_in_netns`] moved into the target namespace.

use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use super::{
    NetnsError,
    locate::{NetnsRef, run_in_netns},
};

/// Transport protocol of a socket: the same type as an event's.
pub use crate::event::Proto;

/// Address family of a socket (an IPv6 socket may carry IPv4-mapped addresses).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    V4,
    V6,
}

/// Socket state as reported by sock_diag (the kernel's `TCP_*` numbering). UDP sockets are
/// reported as `Established` when connected and `Close` when not.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SockState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    /// A request socket (a half-open connection on a listener).
    NewSynRecv,
    /// A TCP socket that is bound but neither listening nor connected (dumped since 6.8 when
    /// the request asks for state 13; the kernel reports it as CLOSE, [`dump_sockets`] maps
    /// that to this).
    BoundInactive,
    Other(u8),
}

impl SockState {
    /// The `state` label: the serde name, `other` for a state this build does not know.
    pub fn name(self) -> &'static str {
        match self {
            SockState::Established => "established",
            SockState::SynSent => "syn_sent",
            SockState::SynRecv => "syn_recv",
            SockState::FinWait1 => "fin_wait1",
            SockState::FinWait2 => "fin_wait2",
            SockState::TimeWait => "time_wait",
            SockState::Close => "close",
            SockState::CloseWait => "close_wait",
            SockState::LastAck => "last_ack",
            SockState::Listen => "listen",
            SockState::Closing => "closing",
            SockState::NewSynRecv => "new_syn_recv",
            SockState::BoundInactive => "bound_inactive",
            SockState::Other(_) => "other",
        }
    }

    /// Maps the kernel's numeric state.
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            1 => SockState::Established,
            2 => SockState::SynSent,
            3 => SockState::SynRecv,
            4 => SockState::FinWait1,
            5 => SockState::FinWait2,
            6 => SockState::TimeWait,
            7 => SockState::Close,
            8 => SockState::CloseWait,
            9 => SockState::LastAck,
            10 => SockState::Listen,
            11 => SockState::Closing,
            12 => SockState::NewSynRecv,
            13 => SockState::BoundInactive,
            other => SockState::Other(other),
        }
    }
}

/// One socket from the kernel's tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SocketRecord {
    pub proto: Proto,
    pub family: Family,
    pub state: SockState,
    pub local_addr: IpAddr,
    pub local_port: u16,
    pub remote_addr: IpAddr,
    /// 0 for listening, bound-only and unconnected UDP sockets.
    pub remote_port: u16,
    /// For a TCP socket in TIME_WAIT (sock_diag `idiag_timer` 3): milliseconds until the
    /// kernel frees it, and with it its port (`idiag_expires`). None otherwise, and in
    /// recordings made before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_wait_ms: Option<u32>,
}

impl SocketRecord {
    /// Holds its port through bind()/listen() rather than as one end of a connection: TCP
    /// listeners and bound-only sockets, unconnected UDP sockets. connect() never picks a
    /// port held like this.
    pub fn is_bound_only(&self) -> bool {
        match self.proto {
            Proto::Tcp => match self.state {
                SockState::Listen | SockState::BoundInactive => true,
                SockState::Close => self.remote_port == 0 && self.local_port != 0,
                _ => false,
            },
            Proto::Udp => self.remote_port == 0,
        }
    }
}

/// Every TCP (all states, TIME_WAIT and bound-only included) and UDP socket, IPv4 and IPv6,
/// of `netns`.
pub fn dump_sockets(netns: &NetnsRef) -> Result<Vec<SocketRecord>, NetnsError> {
    run_in_netns(netns, || {
        let socket = open_diag_socket()?;
        let mut out = Vec::new();
        let mut seq = 1;
        for proto in [Proto::Tcp, Proto::Udp] {
            for family in [Family::V4, Family::V6] {
                dump_one(&socket, seq, proto, family, &mut out)?;
                seq += 1;
            }
        }
        Ok(out)
    })
}

/// The sockets of one protocol and family in `netns`.
pub fn dump_proto(
    netns: &NetnsRef,
    proto: Proto,
    family: Family,
) -> Result<Vec<SocketRecord>, NetnsError> {
    run_in_netns(netns, || {
        let socket = open_diag_socket()?;
        let mut out = Vec::new();
        dump_one(&socket, 1, proto, family, &mut out)?;
        Ok(out)
    })
}

fn open_diag_socket() -> Result<Socket, NetnsError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(NetnsError::Netlink)?;
    socket.bind_auto().map_err(NetnsError::Netlink)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(NetnsError::Netlink)?;
    Ok(socket)
}

fn dump_one(
    socket: &Socket,
    seq: u32,
    proto: Proto,
    family: Family,
    out: &mut Vec<SocketRecord>,
) -> Result<(), NetnsError> {
    let (af, socket_id) = match family {
        Family::V4 => (AF_INET, SocketId::new_v4()),
        Family::V6 => (AF_INET6, SocketId::new_v6()),
    };
    let protocol = match proto {
        Proto::Tcp => IPPROTO_TCP,
        Proto::Udp => IPPROTO_UDP,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: af,
            protocol,
            extensions: ExtensionFlags::empty(),
            // Every bit, so that states the crate doesn't name (NEW_SYN_RECV = 12,
            // BOUND_INACTIVE = 13) are dumped too.
            states: StateFlags::from_bits_retain(u32::MAX),
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0).map_err(NetnsError::Netlink)?;

    loop {
        let (data, _) = socket.recv_from_full().map_err(NetnsError::Netlink)?;
        if data.is_empty() {
            return Err(NetnsError::Decode("netlink socket closed mid-dump".into()));
        }
        let mut offset = 0;
        while offset < data.len() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&data[offset..])
                .map_err(|e| NetnsError::Decode(e.to_string()))?;
            let len = message.header.length as usize;
            if message.header.sequence_number == seq {
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(err) => {
                        return Err(NetnsError::Netlink(err.to_io()));
                    }
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        let id = &response.header.socket_id;
                        let (timer, expires) = raw_timer(&data[offset..]);
                        out.push(SocketRecord {
                            proto,
                            family,
                            state: match (proto, response.header.state) {
                                // The bound-only walk (TCPF_BOUND_INACTIVE, 6.8+) reports
                                // those sockets with their real sk_state, TCP_CLOSE; nothing
                                // else in a TCP dump is in CLOSE.
                                (Proto::Tcp, 7) => SockState::BoundInactive,
                                (_, raw) => SockState::from_raw(raw),
                            },
                            local_addr: id.source_address,
                            local_port: id.source_port,
                            remote_addr: id.destination_address,
                            remote_port: id.destination_port,
                            time_wait_ms: (timer == TIMER_TIME_WAIT).then_some(expires),
                        });
                    }
                    _ => {}
                }
            }
            if len == 0 {
                break;
            }
            // Netlink messages are 4-byte aligned.
            offset += (len + 3) & !3;
        }
    }
}

/// `idiag_timer` of a socket in TIME_WAIT (`inet_diag_msg_common_fill`/`inet_twsk_diag_fill`
/// in net/ipv4/inet_diag.c).
const TIMER_TIME_WAIT: u8 = 3;
/// Offsets in a netlink message carrying a `struct inet_diag_msg`: the 16-byte netlink header,
/// then family, state, timer, retrans, the 48-byte `inet_diag_sockid`, expires (u32, ms).
const NLMSG_HDRLEN: usize = 16;
const IDIAG_TIMER: usize = NLMSG_HDRLEN + 2;
const IDIAG_EXPIRES: usize = NLMSG_HDRLEN + 4 + 48;

/// `(idiag_timer, idiag_expires)` read from the raw message: the crate keeps the timer kind
/// but drops the expiry of a TIME_WAIT socket, which is the one the forecast needs.
fn raw_timer(msg: &[u8]) -> (u8, u32) {
    let timer = msg.get(IDIAG_TIMER).copied().unwrap_or(0);
    let expires = msg
        .get(IDIAG_EXPIRES..IDIAG_EXPIRES + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .unwrap_or(0);
    (timer, expires)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener, TcpStream};

    #[test]
    fn state_numbers() {
        assert_eq!(SockState::from_raw(6), SockState::TimeWait);
        assert_eq!(SockState::from_raw(10), SockState::Listen);
        assert_eq!(SockState::from_raw(13), SockState::BoundInactive);
        assert_eq!(SockState::from_raw(99), SockState::Other(99));
    }

    #[test]
    fn bound_only_classification() {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let mut r = SocketRecord {
            proto: Proto::Udp,
            family: Family::V4,
            state: SockState::Close,
            local_addr: any,
            local_port: 53,
            remote_addr: any,
            remote_port: 0,
            time_wait_ms: None,
        };
        assert!(r.is_bound_only());
        r.remote_port = 53;
        assert!(!r.is_bound_only());
        r.proto = Proto::Tcp;
        r.state = SockState::Listen;
        assert!(r.is_bound_only());
        r.state = SockState::TimeWait;
        assert!(!r.is_bound_only());
    }

    /// Sees a loopback connection of this process in the caller's own namespace.
    #[test]
    fn dump_sees_own_loopback_connection() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let server = listener.local_addr().unwrap();
        let client = TcpStream::connect(server).unwrap();
        let local = client.local_addr().unwrap();
        let sockets = dump_sockets(&NetnsRef::Current).unwrap();
        assert!(sockets.iter().any(|s| s.proto == Proto::Tcp
            && s.state == SockState::Listen
            && s.local_port == server.port()));
        assert!(sockets.iter().any(|s| s.proto == Proto::Tcp
            && s.state == SockState::Established
            && s.local_port == local.port()
            && s.remote_port == server.port()
            && s.remote_addr == server.ip()));
    }

    #[test]
    fn state_names_are_the_serde_names() {
        for raw in 1..=13 {
            let s = SockState::from_raw(raw);
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
        assert_eq!(SockState::from_raw(99).name(), "other");
    }
}
