//! Types shared by the eBPF programs and the userspace loader.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side writes these bytes into the ring
//! buffer or reads them from globals, the userspace side reads them back. Keep field order and
//! sizes stable; `EVENT_SIZE` is asserted on both sides.
#![no_std]

/// What asked the kernel for a port.
pub mod op {
    /// TCP `connect()` (`inet_hash_connect` / `inet6_hash_connect`).
    pub const CONNECT: u8 = 1;
    /// `bind()` with port 0 (TCP or UDP).
    pub const BIND: u8 = 2;
    /// `listen()` on a socket that was never bound.
    pub const LISTEN: u8 = 3;
    /// UDP autobind on `sendto`/`sendmsg`/`sendmmsg` or `connect()` of an unbound socket.
    pub const AUTOBIND: u8 = 4;

    pub fn name(op: u8) -> &'static str {
        match op {
            CONNECT => "connect",
            BIND => "bind",
            LISTEN => "listen",
            AUTOBIND => "autobind",
            _ => "unknown",
        }
    }
}

pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

pub mod family {
    pub const INET: u8 = 2;
    pub const INET6: u8 = 10;
}

/// Which program produced an event. The name is what users see in the `hook` field.
pub mod hook {
    pub const SOCK_OPS_CONNECT: u8 = 1;
    pub const POST_BIND4: u8 = 3;
    pub const POST_BIND6: u8 = 4;
    pub const SYS_EXIT_CONNECT: u8 = 5;
    pub const SYS_EXIT_BIND: u8 = 6;
    pub const SYS_EXIT_LISTEN: u8 = 7;
    pub const SYS_EXIT_SENDTO: u8 = 8;
    pub const SYS_EXIT_SENDMSG: u8 = 9;
    pub const SYS_EXIT_SENDMMSG: u8 = 10;
    // The "fexit" hook set: fentry stashes the entry state, fexit reports.
    pub const FEXIT_INET_HASH_CONNECT: u8 = 11;
    pub const FEXIT_INET6_HASH_CONNECT: u8 = 12;
    pub const FEXIT_INET_CSK_GET_PORT: u8 = 13;
    pub const FEXIT_UDP_LIB_GET_PORT: u8 = 14;
    // The "kprobe" hook set: kprobe stashes the entry state, kretprobe reports.
    pub const KRETPROBE_INET_HASH_CONNECT: u8 = 15;
    pub const KRETPROBE_INET6_HASH_CONNECT: u8 = 16;
    pub const KRETPROBE_INET_CSK_GET_PORT: u8 = 17;
    pub const KRETPROBE_UDP_LIB_GET_PORT: u8 = 18;

    pub fn name(hook: u8) -> &'static str {
        match hook {
            SOCK_OPS_CONNECT => "sock_ops/tcp_connect_cb",
            POST_BIND4 => "cgroup/post_bind4",
            POST_BIND6 => "cgroup/post_bind6",
            SYS_EXIT_CONNECT => "tracepoint/sys_exit_connect",
            SYS_EXIT_BIND => "tracepoint/sys_exit_bind",
            SYS_EXIT_LISTEN => "tracepoint/sys_exit_listen",
            SYS_EXIT_SENDTO => "tracepoint/sys_exit_sendto",
            SYS_EXIT_SENDMSG => "tracepoint/sys_exit_sendmsg",
            SYS_EXIT_SENDMMSG => "tracepoint/sys_exit_sendmmsg",
            FEXIT_INET_HASH_CONNECT => "fexit/inet_hash_connect",
            FEXIT_INET6_HASH_CONNECT => "fexit/inet6_hash_connect",
            FEXIT_INET_CSK_GET_PORT => "fexit/inet_csk_get_port",
            FEXIT_UDP_LIB_GET_PORT => "fexit/udp_lib_get_port",
            KRETPROBE_INET_HASH_CONNECT => "kretprobe/inet_hash_connect",
            KRETPROBE_INET6_HASH_CONNECT => "kretprobe/inet6_hash_connect",
            KRETPROBE_INET_CSK_GET_PORT => "kretprobe/inet_csk_get_port",
            KRETPROBE_UDP_LIB_GET_PORT => "kretprobe/udp_lib_get_port",
            _ => "unknown",
        }
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
    pub op: u8,
    pub proto: u8,
    pub family: u8,
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
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub socket_sk: u32,
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
    /// Bit set of `layout::*`: which groups of offsets are valid.
    pub valid: u32,
}

/// Groups of `KernelOffsets` that are usable together.
pub mod layout {
    /// fd -> file -> socket -> sock walk (UDP autobind on send*).
    pub const FD_WALK: u32 = 1;
    /// sock port and local address (UDP autobind on connect and send*).
    pub const SOCK: u32 = 2;
    /// task -> nsproxy -> net -> ns.inum.
    pub const NETNS: u32 = 4;
    /// sock peer address/port and state (the fexit and kprobe hook sets).
    pub const SOCK_PEER: u32 = 8;
}

/// Index of counters in the `STATS` per-CPU array.
pub mod stat {
    /// Events that did not fit in the ring buffer.
    pub const LOST: u32 = 0;
    /// Pending syscall state evicted or unusable (diagnostics).
    pub const PENDING_MISS: u32 = 1;
    pub const COUNT: u32 = 2;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are repr(C), Copy, and every bit pattern is valid.
    unsafe impl aya::Pod for super::PortEvent {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}
