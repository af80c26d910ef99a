//! The "cgroup" hook set, for kernels where kprobes and BPF trampolines are unavailable: cgroup
//! sock/sock_addr and sock_ops programs plus tracepoints. How each path is seen (details and
//! kernel sources: docs/capture.md):
//!
//! - TCP connect: cgroup connect4/6 notes that the socket has no port yet, sock_ops
//!   TCP_CONNECT_CB reports the chosen port; `inet_sock_set_state` SYN_SENT->CLOSE with port 0
//!   plus `sys_exit_connect` report the failure and its errno.
//! - bind(0): cgroup bind4/6 notes the request for port 0, post_bind4/6 reports the port,
//!   `sys_exit_bind` reports EADDRINUSE.
//! - listen() on an unbound socket: `inet_sock_set_state` CLOSE->LISTEN with port 0 notes the
//!   socket, `sys_exit_listen` reads the port back from it, or reports the failure.
//! - UDP autobind: connect4/6 (connect) or a walk from the syscall's fd to the socket
//!   (sendto/sendmsg/sendmmsg) notes an unbound UDP socket at entry; the syscall's exit reads
//!   the port the kernel gave it, or reports EAGAIN.

use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock, bpf_sock_addr, bpf_sock_ops},
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops, tracepoint},
    maps::LruHashMap,
    programs::{SockAddrContext, SockContext, SockOpsContext, TracePointContext},
};
use port_trace_common::{
    Family, HookId, Op, Proto, Stat, layout,
    program::{CGROUP, TRACEPOINTS},
    tracepoint::{inet_sock_set_state as set_state, sys_enter, sys_exit},
};

use crate::{
    OFFSETS,
    emit::{Caller, Owner, count, current, emit, emit_owned, ipv4, ipv6_words},
    kernel::{
        EADDRINUSE, EAGAIN, Sock, TCP_CLOSE, TCP_LISTEN, TCP_SYN_SENT, Task, msg_name, user_dest,
    },
    pending::{self, PENDING, Pending},
};

/// Reads a context field. Context fields must be loaded at a constant offset from the context
/// pointer, so every field is read once, unconditionally, before any branch can make LLVM
/// merge the addresses.
macro_rules! ctx_read {
    ($ptr:expr, $field:ident) => {
        // SAFETY: `$ptr` is the context the kernel passed to the program, valid for its run;
        // the verifier checks each field load.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ptr).$field)) }
    };
}

/// An IPv6 address in a context: four separate 4-byte loads, the only size every kernel allows.
macro_rules! ctx_read6 {
    ($ptr:expr, $field:ident) => {
        // SAFETY: as `ctx_read!`.
        unsafe {
            [
                core::ptr::read_volatile(core::ptr::addr_of!((*$ptr).$field[0])),
                core::ptr::read_volatile(core::ptr::addr_of!((*$ptr).$field[1])),
                core::ptr::read_volatile(core::ptr::addr_of!((*$ptr).$field[2])),
                core::ptr::read_volatile(core::ptr::addr_of!((*$ptr).$field[3])),
            ]
        }
    };
}

/// Reads a tracepoint record field at an offset from `port_trace_common::tracepoint`.
macro_rules! tp_read {
    ($ctx:expr, $off:expr) => {
        // SAFETY: read_at copies with bpf_probe_read, which fails instead of faulting; the
        // loader checked the offset against the tracepoint's format file.
        unsafe { $ctx.read_at($off) }
    };
}

/// A TCP connect() in flight: who made it (captured by connect4/6, in process context) and
/// what it asked for.
#[repr(C)]
#[derive(Clone, Copy)]
struct Connecting {
    owner: Owner,
    pending: Pending,
}

/// TCP connects waiting for TCP_CONNECT_CB, by socket cookie. sock_ops programs may not ask
/// who the current task is on older kernels (6.1 rejects bpf_get_current_pid_tgid there), so
/// the owner is recorded at connect4/6 and the callback finds it through the socket.
#[map]
static CONNECTING: LruHashMap<u64, Connecting> = LruHashMap::with_max_entries(16384, 0);

fn proto_of(ip_proto: u32) -> Option<u8> {
    match ip_proto {
        6 => Some(Proto::Tcp as u8),
        17 => Some(Proto::Udp as u8),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// connect(): cgroup connect4/6 runs before the kernel picks a port. Cgroup programs return 1
// (allow); anything else would fail the user's syscall.

#[cgroup_sock_addr(connect4)]
pub fn pt_connect4(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Family::Inet as u8);
    1
}
program_listed!(pt_connect4 in CGROUP.name);

#[cgroup_sock_addr(connect6)]
pub fn pt_connect6(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Family::Inet6 as u8);
    1
}
program_listed!(pt_connect6 in CGROUP.name);

/// The protocol, port (network order) and address the user passed to connect()/bind().
#[inline(always)]
fn user_sockaddr(sa: *const bpf_sock_addr, fam: u8) -> (u32, u32, [u8; 16]) {
    let protocol = ctx_read!(sa, protocol);
    let user_port = ctx_read!(sa, user_port);
    // connect4/bind4 may not touch user_ip6 (nor the 6 variants user_ip4): `fam` is a
    // constant here, so only one branch is compiled into each program.
    let addr = if fam == Family::Inet as u8 {
        ipv4(ctx_read!(sa, user_ip4).to_ne_bytes())
    } else {
        ipv6_words(ctx_read6!(sa, user_ip6))
    };
    (protocol, user_port, addr)
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, fam: u8) {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    let (protocol, user_port, daddr) = user_sockaddr(sa, fam);
    // SAFETY: as `ctx_read!`; `sk` is a union member, hence no macro.
    let sk: *mut bpf_sock =
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sa).__bindgen_anon_1.sk)) };
    let Some(c) = current() else { return };
    let Some(pr) = proto_of(protocol) else { return };
    if sk.is_null() {
        return;
    }
    // A socket that already has a port keeps it: the kernel picks nothing.
    if ctx_read!(sk, src_port) != 0 {
        return;
    }
    let op = if pr == Proto::Tcp as u8 {
        Op::Connect
    } else {
        Op::Autobind
    };
    let mut p = Pending::new(op as u8, pr, fam);
    p.sk = sk as u64;
    p.has_daddr = 1;
    p.dport = u16::from_be(user_port as u16);
    p.daddr = daddr;
    if pr == Proto::Tcp as u8 {
        // SAFETY: the helper only reads the cookie of the context's socket.
        p.cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        let conn = Connecting {
            owner: Owner::of(c),
            pending: p,
        };
        let _ = CONNECTING.insert(p.cookie, conn, 0);
    }
    pending::save(c.tid, &p);
}

#[sock_ops]
pub fn pt_sockops(ctx: SockOpsContext) -> u32 {
    let so: *const bpf_sock_ops = ctx.ops;
    if ctx_read!(so, op) == BPF_SOCK_OPS_TCP_CONNECT_CB {
        on_connect_cb(so);
    }
    1
}
program_listed!(pt_sockops in CGROUP.name);

/// The port inet_hash_connect chose, seen from tcp_connect(). No current-task helpers here:
/// the owner comes from the `CONNECTING` entry made at connect4/6.
#[inline(always)]
fn on_connect_cb(so: *const bpf_sock_ops) {
    let fam = ctx_read!(so, family) as u8;
    let local4 = ctx_read!(so, local_ip4);
    let remote4 = ctx_read!(so, remote_ip4);
    let local6 = ctx_read6!(so, local_ip6);
    let remote6 = ctx_read6!(so, remote_ip6);
    let local_port = ctx_read!(so, local_port);
    let remote_port = ctx_read!(so, remote_port);
    // SAFETY: the helper only reads the cookie of the context's socket.
    let cookie = unsafe { bpf_get_socket_cookie(so as *mut _) };
    // SAFETY: the entry is copied out at once, while RCU keeps it alive.
    let Some(c) = (unsafe { CONNECTING.get(cookie) }).copied() else {
        return;
    };
    let _ = CONNECTING.remove(cookie);
    let mut p = c.pending;
    p.family = fam;
    if fam == Family::Inet as u8 {
        p.saddr = ipv4(local4.to_ne_bytes());
        p.daddr = ipv4(remote4.to_ne_bytes());
    } else {
        p.saddr = ipv6_words(local6);
        p.daddr = ipv6_words(remote6);
    }
    // remote_port holds the big-endian port in its upper 16 bits.
    p.dport = u32::from_be(remote_port) as u16;
    p.has_daddr = 1;
    emit_owned(
        &c.owner,
        &p,
        local_port as u16,
        0,
        HookId::SockOpsConnect,
        0,
    );
}

// ---------------------------------------------------------------------------------------------
// bind(): bind4/6 sees the requested port, post_bind4/6 the one the kernel gave.

#[cgroup_sock_addr(bind4)]
pub fn pt_bind4(ctx: SockAddrContext) -> i32 {
    on_bind(&ctx, Family::Inet as u8);
    1
}
program_listed!(pt_bind4 in CGROUP.name);

#[cgroup_sock_addr(bind6)]
pub fn pt_bind6(ctx: SockAddrContext) -> i32 {
    on_bind(&ctx, Family::Inet6 as u8);
    1
}
program_listed!(pt_bind6 in CGROUP.name);

#[inline(always)]
fn on_bind(ctx: &SockAddrContext, fam: u8) {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    let (protocol, user_port, saddr) = user_sockaddr(sa, fam);
    if user_port != 0 {
        return; // The user chose the port.
    }
    let Some(c) = current() else { return };
    let Some(pr) = proto_of(protocol) else { return };
    let mut p = Pending::new(Op::Bind as u8, pr, fam);
    p.saddr = saddr;
    pending::save(c.tid, &p);
}

#[cgroup_sock(post_bind4)]
pub fn pt_post_bind4(ctx: SockContext) -> i32 {
    on_post_bind(&ctx, HookId::PostBind4);
    1
}
program_listed!(pt_post_bind4 in CGROUP.name);

#[cgroup_sock(post_bind6)]
pub fn pt_post_bind6(ctx: SockContext) -> i32 {
    on_post_bind(&ctx, HookId::PostBind6);
    1
}
program_listed!(pt_post_bind6 in CGROUP.name);

#[inline(always)]
fn on_post_bind(ctx: &SockContext, hook: HookId) {
    let port = ctx_read!(ctx.sock, src_port) as u16;
    let Some(c) = current() else { return };
    let Some(p) = pending::peek(c.tid) else {
        return;
    };
    if p.op != Op::Bind as u8 {
        return;
    }
    pending::forget(c.tid);
    // IP_BIND_ADDRESS_NO_PORT: no port yet, connect() will pick it.
    if port == 0 {
        return;
    }
    emit(c, &p, port, 0, hook, 0);
}

// ---------------------------------------------------------------------------------------------
// TCP state changes: listen() autobind and connect() failing to find a port.

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn pt_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = on_set_state(&ctx);
    0
}
program_listed!(pt_inet_sock_set_state in TRACEPOINTS.name);

#[inline(always)]
fn on_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    let protocol: u16 = tp_read!(ctx, set_state::PROTOCOL)?;
    let sport: u16 = tp_read!(ctx, set_state::SPORT)?;
    if protocol != Proto::Tcp as u8 as u16 || sport != 0 {
        return Ok(());
    }
    let oldstate: i32 = tp_read!(ctx, set_state::OLDSTATE)?;
    let newstate: i32 = tp_read!(ctx, set_state::NEWSTATE)?;
    let Some(c) = current() else {
        return Ok(());
    };
    if oldstate == TCP_CLOSE as i32 && newstate == TCP_LISTEN as i32 {
        let fam: u16 = tp_read!(ctx, set_state::FAMILY)?;
        let mut p = Pending::new(Op::Listen as u8, Proto::Tcp as u8, fam as u8);
        // The socket, whose port is read back at sys_exit_listen.
        p.sk = tp_read!(ctx, set_state::SKADDR)?;
        p.saddr = if fam == Family::Inet as u8 as u16 {
            ipv4(tp_read!(ctx, set_state::SADDR)?)
        } else {
            tp_read!(ctx, set_state::SADDR_V6)?
        };
        pending::save(c.tid, &p);
    } else if oldstate == TCP_SYN_SENT as i32
        && newstate == TCP_CLOSE as i32
        && let Some(p) = PENDING.get_ptr_mut(c.tid)
    {
        // SAFETY: `p` points into this thread's own entry, which only this thread writes.
        unsafe {
            if (*p).op == Op::Connect as u8 {
                (*p).failed = 1;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Syscall entry for UDP send*: is the socket behind this fd an unbound UDP socket?

#[inline(always)]
fn on_send_enter(fd: u64, uaddr: u64) {
    if uaddr == 0 {
        return; // Without a destination an unbound socket's send fails; nothing to watch.
    }
    let Some(c) = current() else { return };
    let o = OFFSETS.load();
    if !o.has(layout::SOCK) {
        return;
    }
    let Some(sk) = Task::current(&o).sock_of_fd(fd) else {
        return;
    };
    let sock = Sock::new(sk, &o);
    let (Some(fam), Some(pr), Some(num)) = (sock.family(), sock.protocol(), sock.num()) else {
        return;
    };
    if pr != Proto::Udp as u8 as u16 || num != 0 {
        return;
    }
    let mut p = Pending::new(Op::Autobind as u8, Proto::Udp as u8, fam as u8);
    p.sk = sk;
    // The destination comes from the user's sockaddr.
    let d = user_dest(uaddr);
    p.has_daddr = d.has_daddr;
    p.daddr = d.daddr;
    p.dport = d.dport;
    pending::save(c.tid, &p);
}

/// A syscall argument from a `sys_enter_*` record.
#[inline(always)]
fn sys_arg(ctx: &TracePointContext, n: usize, default: u64) -> u64 {
    tp_read!(ctx, sys_enter::arg(n)).unwrap_or(default)
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn pt_enter_sendto(ctx: TracePointContext) -> u32 {
    // sendto(fd, buf, len, flags, addr, addrlen)
    on_send_enter(sys_arg(&ctx, 0, u64::MAX), sys_arg(&ctx, 4, 0));
    0
}
program_listed!(pt_enter_sendto in TRACEPOINTS.name);

#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn pt_enter_sendmsg(ctx: TracePointContext) -> u32 {
    // sendmsg(fd, msg, flags)
    on_send_enter(sys_arg(&ctx, 0, u64::MAX), msg_name(sys_arg(&ctx, 1, 0)));
    0
}
program_listed!(pt_enter_sendmsg in TRACEPOINTS.name);

#[tracepoint(category = "syscalls", name = "sys_enter_sendmmsg")]
pub fn pt_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    // sendmmsg(fd, mmsg, vlen, flags); the first message's name decides the autobind.
    on_send_enter(sys_arg(&ctx, 0, u64::MAX), msg_name(sys_arg(&ctx, 1, 0)));
    0
}
program_listed!(pt_enter_sendmmsg in TRACEPOINTS.name);

// ---------------------------------------------------------------------------------------------
// Syscall exit: the outcome of whatever is pending for this thread.

#[inline(always)]
fn on_exit(ctx: &TracePointContext, hook: HookId) {
    let Some(c) = current() else { return };
    let Some(mut p) = pending::take(c.tid) else {
        return;
    };
    let ret: i64 = tp_read!(ctx, sys_exit::RET).unwrap_or(0);
    // Autobind and listen(): the port is read back from the socket.
    if p.op == Op::Autobind as u8 || (p.op == Op::Listen as u8 && ret >= 0) {
        read_back(c, &mut p, ret, hook);
        return;
    }
    if ret >= 0 {
        return;
    }
    if p.op == Op::Connect as u8 && p.cookie != 0 {
        // No TCP_CONNECT_CB will come for this attempt.
        let _ = CONNECTING.remove(p.cookie);
    }
    let report = match Op::try_from(p.op) {
        Ok(Op::Connect) => p.failed != 0,
        Ok(Op::Bind) => ret == -(EADDRINUSE as i64),
        Ok(Op::Listen) => true,
        _ => false,
    };
    if report {
        emit(c, &p, 0, (-ret) as i32, hook, 0);
    }
}

/// Reports the port the kernel gave `p.sk` during the syscall, or EAGAIN for a failed autobind.
#[inline(always)]
fn read_back(c: Caller, p: &mut Pending, ret: i64, hook: HookId) {
    let o = OFFSETS.load();
    if p.sk == 0 || !o.has(layout::SOCK) {
        count(Stat::Unresolved);
        return;
    }
    let sock = Sock::new(p.sk, &o);
    let port = sock.num().unwrap_or(0);
    if port != 0 {
        p.saddr = sock.local_addr(p.family, false);
        emit(c, p, port, 0, hook, 0);
    } else if p.op == Op::Autobind as u8 && ret == -(EAGAIN as i64) {
        emit(c, p, 0, EAGAIN, hook, 0);
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn pt_exit_connect(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, HookId::SysExitConnect);
    0
}
program_listed!(pt_exit_connect in TRACEPOINTS.name);

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn pt_exit_bind(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, HookId::SysExitBind);
    0
}
program_listed!(pt_exit_bind in TRACEPOINTS.name);

#[tracepoint(category = "syscalls", name = "sys_exit_listen")]
pub fn pt_exit_listen(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, HookId::SysExitListen);
    0
}
program_listed!(pt_exit_listen in TRACEPOINTS.name);

#[tracepoint(category = "syscalls", name = "sys_exit_sendto")]
pub fn pt_exit_sendto(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, HookId::SysExitSendto);
    0
}
program_listed!(pt_exit_sendto in TRACEPOINTS.name);

#[tracepoint(category = "syscalls", name = "sys_exit_sendmsg")]
pub fn pt_exit_sendmsg(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, HookId::SysExitSendmsg);
    0
}
program_listed!(pt_exit_sendmsg in TRACEPOINTS.name);

#[tracepoint(category = "syscalls", name = "sys_exit_sendmmsg")]
pub fn pt_exit_sendmmsg(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, HookId::SysExitSendmmsg);
    0
}
program_listed!(pt_exit_sendmmsg in TRACEPOINTS.name);
