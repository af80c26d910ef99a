//! The contract between the eBPF programs and the userspace loader.
//!
//! Everything here is plain data both sides agree on: the ids an event carries (`Op`, `Proto`,
//! `Family`, `HookId`, each a `#[repr(u8)]` enum with `TryFrom<u8>` so that an id userspace does
//! not know is an error, not a guess), the `#[repr(C)]` event and offset structs, and the names of
//! the programs. Keep field order
//! and sizes stable; `EVENT_SIZE` is asserted on both sides.
#![no_std]

pub mod program;

/// An id in a kernel record that this build does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownId {
    /// What the id names: "op", "proto", "family" or "hook".
    pub kind: &'static str,
    pub id: u8,
}

impl core::fmt::Display for UnknownId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "unknown {} id {}", self.kind, self.id)
    }
}

impl core::error::Error for UnknownId {}

/// Declares a `#[repr(u8)]` id enum with its user-facing names, `TryFrom<u8>`, `ALL` and
/// `name()`. They order by name (stream tables sort by it), and `ALL` lists them that way.
macro_rules! id_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $id:literal => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
        $vis enum $name {
            $( $(#[$vmeta])* #[cfg_attr(feature = "user", serde(rename = $text))] $variant = $id, )+
        }

        impl $name {
            /// Every variant, in the order of their names.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name users see (JSON, tables, metric labels).
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> core::cmp::Ordering {
                self.name().cmp(other.name())
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl TryFrom<u8> for $name {
            type Error = UnknownId;

            fn try_from(id: u8) -> Result<Self, UnknownId> {
                match id {
                    $($id => Ok($name::$variant),)+
                    _ => Err(UnknownId { kind: $kind, id }),
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                // `pad` so that table columns (`{:<8}`) line up.
                f.pad(self.name())
            }
        }
    };
}

id_enum! {
    /// What asked the kernel for a port.
    pub enum Op: "op" {
        /// UDP autobind on `sendto`/`sendmsg`/`sendmmsg` or `connect()` of an unbound socket.
        Autobind = 4 => "autobind",
        /// `bind()` with port 0 (TCP or UDP).
        Bind = 2 => "bind",
        /// TCP `connect()` on an unbound socket (`inet_hash_connect` / `inet6_hash_connect`).
        Connect = 1 => "connect",
        /// `listen()` on a socket that was never bound.
        Listen = 3 => "listen",
        /// A source port chosen by SNAT/MASQUERADE, seen in conntrack (never from eBPF).
        Nat = 5 => "nat",
    }
}

id_enum! {
    /// Transport protocol, by its IP protocol number.
    pub enum Proto: "proto" {
        Tcp = 6 => "tcp",
        Udp = 17 => "udp",
    }
}

id_enum! {
    /// Address family, by its `AF_*` number.
    pub enum Family: "family" {
        Inet = 2 => "ipv4",
        Inet6 = 10 => "ipv6",
    }
}

id_enum! {
    /// Which program reported an event. The name is what users see in the `hook` field.
    pub enum HookId: "hook" {
        // The "cgroup" hook set. A request whose outcome is learned later is reported from
        // the hook that settled it (docs/capture.md).
        Bind4 = 19 => "cgroup/bind4",
        Bind6 = 20 => "cgroup/bind6",
        Connect4 = 21 => "cgroup/connect4",
        Connect6 = 22 => "cgroup/connect6",
        PostBind4 = 3 => "cgroup/post_bind4",
        PostBind6 = 4 => "cgroup/post_bind6",
        Sendmsg4 = 23 => "cgroup/sendmsg4",
        Sendmsg6 = 24 => "cgroup/sendmsg6",
        SockRelease = 25 => "cgroup/sock_release",
        // Not programs: NAT events from conntrack netlink (userspace only).
        /// A NAT mapping in a conntrack NEW event.
        ConntrackNew = 40 => "conntrack/new",
        /// A NAT failure counted in conntrack's per-CPU statistics.
        ConntrackStats = 41 => "conntrack/stats",
        // The "fexit" hook set: fentry stashes the entry state, fexit reports.
        FexitInet6HashConnect = 12 => "fexit/inet6_hash_connect",
        FexitInetCskGetPort = 13 => "fexit/inet_csk_get_port",
        FexitInetHashConnect = 11 => "fexit/inet_hash_connect",
        FexitUdpLibGetPort = 14 => "fexit/udp_lib_get_port",
        // The "kprobe" hook set: kprobe stashes the entry state, kretprobe reports.
        KretprobeInet6HashConnect = 16 => "kretprobe/inet6_hash_connect",
        KretprobeInetCskGetPort = 17 => "kretprobe/inet_csk_get_port",
        KretprobeInetHashConnect = 15 => "kretprobe/inet_hash_connect",
        KretprobeUdpLibGetPort = 18 => "kretprobe/udp_lib_get_port",
        // The "cgroup" hook set, continued.
        SockOpsConnect = 1 => "sock_ops/tcp_connect_cb",
        SockOpsListen = 26 => "sock_ops/tcp_listen_cb",
        SetState = 27 => "tracepoint/inet_sock_set_state",
        // Syscall exit tracepoints of earlier versions' cgroup set: no longer attached, still
        // read from their recordings.
        SysExitBind = 6 => "tracepoint/sys_exit_bind",
        SysExitConnect = 5 => "tracepoint/sys_exit_connect",
        SysExitListen = 7 => "tracepoint/sys_exit_listen",
        SysExitSendmmsg = 10 => "tracepoint/sys_exit_sendmmsg",
        SysExitSendmsg = 9 => "tracepoint/sys_exit_sendmsg",
        SysExitSendto = 8 => "tracepoint/sys_exit_sendto",
    }
}

/// One kernel port choice, or one failure to choose.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortEvent {
    /// `bpf_ktime_get_boot_ns()`: CLOCK_BOOTTIME, converted to wall time in userspace.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// Inode of the network namespace (0 when the kernel layout could not be resolved).
    pub netns: u32,
    /// 0 on success, otherwise the positive errno the syscall returned.
    pub errno: i32,
    /// Chosen local port in host order; 0 on failure.
    pub port: u16,
    /// Destination port in host order, when `has_daddr` is set.
    pub dport: u16,
    /// Local address in network byte order; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    /// Destination address in network byte order; IPv4 uses the first 4 bytes.
    pub daddr: [u8; 16],
    /// An `Op` id.
    pub op: u8,
    /// A `Proto` id.
    pub proto: u8,
    /// A `Family` id.
    pub family: u8,
    /// A `HookId` id.
    pub hook: u8,
    pub has_daddr: u8,
    pub _pad: [u8; 3],
    pub comm: [u8; 16],
    /// Time the kernel spent choosing the port (entry to exit of the choosing function), in
    /// nanoseconds; 0 when the hook set cannot measure it (the cgroup set).
    pub latency_ns: u64,
}

pub const EVENT_SIZE: usize = 104;
const _: () = assert!(core::mem::size_of::<PortEvent>() == EVENT_SIZE);
const _: () = assert!(core::mem::align_of::<PortEvent>() == 8);

/// Byte offsets into kernel structures, resolved from the running kernel's BTF by the loader
/// (Rust emits no CO-RE relocations, so these cannot be compiled in).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub sk_num: u32,
    pub sk_family: u32,
    pub sk_protocol: u32,
    pub sk_rcv_saddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub task_nsproxy: u32,
    pub nsproxy_net_ns: u32,
    pub net_ns_inum: u32,
    /// `sock_common.skc_daddr` (IPv4 peer address).
    pub sk_daddr: u32,
    /// `sock_common.skc_dport` (peer port, network order).
    pub sk_dport: u32,
    /// `sock_common.skc_v6_daddr` (IPv6 peer address).
    pub sk_v6_daddr: u32,
    /// `sock_common.skc_state` (a u8 TCP state).
    pub sk_state: u32,
    /// `task_struct.stack` (the kernel stack, whose top holds the saved user registers).
    pub task_stack: u32,
    /// Bit set of `layout::*`: which groups of offsets are valid.
    pub valid: u32,
    /// The saved user registers of a syscall (`layout::SYSCALL_REGS`), as the running kernel's
    /// BTF lays out `struct pt_regs`: the syscall number's offset and width in bytes (4 or 8),
    /// the second and fifth argument registers, and the struct's size.
    pub regs_nr: u32,
    pub regs_nr_size: u32,
    pub regs_arg2: u32,
    pub regs_arg5: u32,
    pub regs_size: u32,
    /// The syscall numbers of that architecture's table (`layout::SYSCALL_REGS`).
    pub nr_bind: u32,
    pub nr_connect: u32,
    pub nr_sendto: u32,
    pub nr_sendmsg: u32,
    pub nr_sendmmsg: u32,
}

impl KernelOffsets {
    /// No offset known (the value the programs are compiled with).
    pub const NONE: KernelOffsets = KernelOffsets {
        sk_num: 0,
        sk_family: 0,
        sk_protocol: 0,
        sk_rcv_saddr: 0,
        sk_v6_rcv_saddr: 0,
        task_nsproxy: 0,
        nsproxy_net_ns: 0,
        net_ns_inum: 0,
        sk_daddr: 0,
        sk_dport: 0,
        sk_v6_daddr: 0,
        sk_state: 0,
        task_stack: 0,
        valid: 0,
        regs_nr: 0,
        regs_nr_size: 0,
        regs_arg2: 0,
        regs_arg5: 0,
        regs_size: 0,
        nr_bind: 0,
        nr_connect: 0,
        nr_sendto: 0,
        nr_sendmsg: 0,
        nr_sendmmsg: 0,
    };

    /// Whether every group in `groups` (a `layout::*` bit set) was resolved.
    pub const fn has(&self, groups: u32) -> bool {
        self.valid & groups == groups
    }
}

/// The cgroup subtree the cgroup hook set traces, for its tracepoint, which sees every task:
/// the directory's cgroup id and depth below the cgroup v2 root (level 0: the whole host; else
/// the directory itself is in the `SCOPE_DIR` cgroup array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupScope {
    pub id: u64,
    pub level: u32,
    pub _pad: u32,
}

/// Groups of `KernelOffsets` that are usable together.
pub mod layout {
    /// sock port and local address (UDP autobind, the cgroup set's late outcomes). Bit 1 was
    /// the fd -> socket walk of earlier versions.
    pub const SOCK: u32 = 2;
    /// task -> nsproxy -> net -> ns.inum.
    pub const NETNS: u32 = 4;
    /// sock peer address/port and state (the fexit and kprobe hook sets).
    pub const SOCK_PEER: u32 = 8;
    /// task -> stack: the current syscall's registers at the top of the kernel stack, for
    /// kernels without `bpf_task_pt_regs` (before 5.15).
    pub const TASK_STACK: u32 = 16;
    /// Not an offset: the kernel has `bpf_get_current_task_btf` and `bpf_task_pt_regs`
    /// (its BTF lists them in `enum bpf_func_id`), so programs may call them.
    pub const REGS_HELPER: u32 = 32;
    /// Where `struct pt_regs` keeps the syscall number and arguments, and the numbers of
    /// bind/connect/sendto/sendmsg/sendmmsg: known for the x86_64 and arm64 layouts.
    pub const SYSCALL_REGS: u32 = 64;
}

/// Counters in the `STATS` per-CPU array, by index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Events that did not fit in the ring buffer.
    Lost = 0,
    /// Port choices seen but not reported: the socket could not be read back, the entry state
    /// was evicted or did not match the return, or (on an architecture whose `pt_regs` layout
    /// is not known) the syscall that asked could not be read (`port_trace_unresolved_events_total`).
    Unresolved = 1,
}

impl Stat {
    /// Entries of the `STATS` array.
    pub const COUNT: u32 = 2;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are repr(C), Copy, and every bit pattern is valid.
    unsafe impl aya::Pod for super::PortEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CgroupScope {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ids_fail() {
        for op in Op::ALL {
            assert_eq!(Op::try_from(*op as u8), Ok(*op));
        }
        for h in HookId::ALL {
            assert_eq!(HookId::try_from(*h as u8), Ok(*h));
        }
        assert_eq!(Proto::try_from(6), Ok(Proto::Tcp));
        assert_eq!(Family::try_from(10), Ok(Family::Inet6));
        assert_eq!(Op::try_from(0), Err(UnknownId { kind: "op", id: 0 }));
        assert!(HookId::try_from(2).is_err());
    }

    #[test]
    fn variants_are_ordered_by_name() {
        for w in Op::ALL.windows(2) {
            assert!(w[0].name() < w[1].name() && w[0] < w[1]);
        }
        for w in HookId::ALL.windows(2) {
            assert!(w[0].name() < w[1].name() && w[0] < w[1]);
        }
        assert!(Proto::Tcp < Proto::Udp && Family::Inet < Family::Inet6);
    }
}
