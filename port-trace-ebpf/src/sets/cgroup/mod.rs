//! The "cgroup" hook set, for kernels where kprobes and BPF trampolines are unavailable: cgroup
//! sock/sock_addr and sock_ops programs plus the `sock:inet_sock_set_state` tracepoint. No
//! syscall tracepoint: enabling one slows every system call of every task on the host. Each
//! program here runs only on the path it watches. How each path is seen (details and kernel
//! sources: docs/capture.md):
//!
//! - TCP connect: connect4/6 records the request in the socket's storage (`watch`), sock_ops
//!   TCP_CONNECT_CB reports the port. A failure to find one is `inet_sock_set_state`
//!   SYN_SENT->CLOSE with local port 0, reported there as EADDRNOTAVAIL.
//! - bind(0): bind4/6 records, post_bind4/6 reports. A failure is settled the next time the
//!   socket is seen (bind, sendmsg, close) and reported as EADDRINUSE with the bind's time.
//! - listen() on an unbound socket: CLOSE->LISTEN with port 0 records who asked (`LISTENING`),
//!   sock_ops TCP_LISTEN_CB reports the port, LISTEN->CLOSE with port 0 the failure
//!   (EADDRINUSE, the one error of get_port).
//! - UDP autobind on send: sock_create marks UDP sockets created while tracing (`watch`'s fresh
//!   table); sendmsg4/6 (opt-in), which runs after the autobind, or else sock_release reports the
//!   port of a marked socket once. A failed autobind on send is not seen (no hook runs after it).
//! - UDP autobind on connect: connect4/6 records; settled when the socket is next seen or
//!   closed, with the connect's time.

mod watch;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB, bpf_sock, bpf_sock_addr,
        bpf_sock_ops,
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, raw_tracepoint, sock_ops},
    maps::CgroupArray,
    programs::{RawTracePointContext, SockAddrContext, SockContext, SockOpsContext},
};
use port_trace_common::{
    Family, HookId, Op, Proto, Stat,
    program::{CGROUP, RAW_TRACEPOINTS},
};
use watch::{Mark, Seen, State, proto_of};

use crate::{
    OFFSETS, SCOPE, SOCK_OPS_TASK,
    emit::{Owner, count, current, emit, emit_owned, ipv4, ipv6_words, now_boot_ns, v4_mapped},
    kernel::{EADDRINUSE, EADDRNOTAVAIL, Sock, TCP_CLOSE, TCP_LISTEN, TCP_SYN_SENT},
    pending::Pending,
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

/// The socket of a sock_addr context.
#[inline(always)]
fn sock_of(sa: *const bpf_sock_addr) -> *mut bpf_sock {
    // SAFETY: as `ctx_read!`; `sk` is a union member, hence no macro.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sa).__bindgen_anon_1.sk)) }
}

/// The protocol, port (network order) and address the user passed to connect()/bind()/
/// sendmsg().
#[inline(always)]
fn user_sockaddr(sa: *const bpf_sock_addr, fam: u8) -> (u32, u32, [u8; 16]) {
    let protocol = ctx_read!(sa, protocol);
    let user_port = ctx_read!(sa, user_port);
    // The 4 hooks may not touch user_ip6 (nor the 6 hooks user_ip4): `fam` is a constant
    // here, so only one branch is compiled into each program.
    let addr = if fam == Family::Inet as u8 {
        ipv4(ctx_read!(sa, user_ip4).to_ne_bytes())
    } else {
        ipv6_words(ctx_read6!(sa, user_ip6))
    };
    (protocol, user_port, addr)
}

/// The request a connect()/sendmsg() destination makes; reported with the time of the report
/// unless the caller sets `asked_ns`.
#[inline(always)]
fn toward(op: Op, pr: u8, fam: u8, user_port: u32, daddr: [u8; 16]) -> Pending {
    let mut p = Pending::new(op as u8, pr, fam);
    p.has_daddr = 1;
    p.dport = u16::from_be(user_port as u16);
    p.daddr = daddr;
    p
}

// ---------------------------------------------------------------------------------------------
// Cgroup programs return 1 (allow); anything else would fail the user's syscall.

#[cgroup_sock(sock_create)]
pub fn pt_sock_create(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // Only a UDP socket can get a port with no cgroup hook running before it (autobind on
    // send), so only UDP sockets are marked.
    if ctx_read!(sk, protocol) == 17 && current().is_some() {
        watch::mark(sk, Mark::Fresh);
    }
    1
}
program_listed!(pt_sock_create in CGROUP.name);

#[cgroup_sock(sock_release)]
pub fn pt_sock_release(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    let family = ctx_read!(sk, family) as u8;
    // A socket whose connect() never reached TCP_CONNECT_CB (it failed first) just loses its
    // mark; a fresh one is reported.
    if let Some(m) = watch::take(sk) {
        if m != Mark::Fresh {
            return 1;
        }
        // A fresh UDP socket with a port got it on a send no sendmsg hook saw (they are
        // opt-in): reported now, by whoever closes it, with no destination.
        if let Some((port, saddr)) = watch::local_of_ctx(sk, family)
            && port != 0
            && let Some(c) = current()
        {
            let mut p = Pending::new(Op::Autobind as u8, Proto::Udp as u8, family);
            p.saddr = saddr;
            emit(c, &p, port, 0, HookId::SockRelease, 0);
        }
        return 1;
    }
    let Some(w) = watch::get(sk) else {
        return 1;
    };
    match watch::local_of_ctx(sk, w.pending.family) {
        Some(local) => watch::settle(w, Seen::Otherwise, HookId::SockRelease, local),
        // An open request whose outcome cannot be read is counted, not guessed.
        None if w.state == State::Asked => count(Stat::Unresolved),
        None => {}
    }
    watch::forget(sk);
    1
}
program_listed!(pt_sock_release in CGROUP.name);

// connect(): connect4/6 run before the kernel picks a port.

#[cgroup_sock_addr(connect4)]
pub fn pt_connect4(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Family::Inet as u8, HookId::Connect4);
    1
}
program_listed!(pt_connect4 in CGROUP.name);

#[cgroup_sock_addr(connect6)]
pub fn pt_connect6(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Family::Inet6 as u8, HookId::Connect6);
    1
}
program_listed!(pt_connect6 in CGROUP.name);

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, fam: u8, hook: HookId) {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    let (protocol, user_port, daddr) = user_sockaddr(sa, fam);
    let sk = sock_of(sa);
    if sk.is_null() {
        return;
    }
    let src_port = ctx_read!(sk, src_port);
    // A marked socket has no request to settle; it is fresh no more either way.
    let mut watched = false;
    if watch::take(sk).is_none()
        && let Some(w) = watch::get(sk)
    {
        watched = true;
        watch::settle(
            w,
            Seen::Connecting,
            hook,
            watch::local(sk, w.pending.family),
        );
    }
    let Some(c) = current() else { return };
    let Some(pr) = proto_of(protocol) else { return };
    // A socket that already has a port keeps it: the kernel picks nothing.
    if src_port != 0 {
        watch::forget(sk);
        return;
    }
    if pr == Proto::Tcp as u8 && SOCK_OPS_TASK.load() != 0 {
        // TCP_CONNECT_CB names the caller and reads the rest from the socket: a mark is all
        // it needs.
        if watched {
            watch::forget(sk);
        }
        watch::mark(sk, Mark::Connecting);
        return;
    }
    let mut p = toward(Op::Connect, pr, fam, user_port, daddr);
    if pr == Proto::Udp as u8 {
        // Settled later (`watch::settle`), and reported with this time.
        p.op = Op::Autobind as u8;
        p.asked_ns = now_boot_ns();
    }
    watch::ask(sk, Owner::of(c), p);
}

// bind(): bind4/6 see the requested port, post_bind4/6 the one the kernel gave.

#[cgroup_sock_addr(bind4)]
pub fn pt_bind4(ctx: SockAddrContext) -> i32 {
    on_bind(&ctx, Family::Inet as u8, HookId::Bind4);
    1
}
program_listed!(pt_bind4 in CGROUP.name);

#[cgroup_sock_addr(bind6)]
pub fn pt_bind6(ctx: SockAddrContext) -> i32 {
    on_bind(&ctx, Family::Inet6 as u8, HookId::Bind6);
    1
}
program_listed!(pt_bind6 in CGROUP.name);

#[inline(always)]
fn on_bind(ctx: &SockAddrContext, fam: u8, hook: HookId) {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    let (protocol, user_port, saddr) = user_sockaddr(sa, fam);
    let sk = sock_of(sa);
    if sk.is_null() {
        return;
    }
    if watch::take(sk).is_none()
        && let Some(w) = watch::get(sk)
    {
        watch::settle(w, Seen::Otherwise, hook, watch::local(sk, w.pending.family));
    }
    // The user chose the port: nothing to report, now or at a later send.
    if user_port != 0 {
        watch::forget(sk);
        return;
    }
    let Some(c) = current() else { return };
    let Some(pr) = proto_of(protocol) else { return };
    let mut p = Pending::new(Op::Bind as u8, pr, fam);
    p.saddr = saddr;
    p.asked_ns = now_boot_ns();
    watch::ask(sk, Owner::of(c), p);
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
    let Some(w) = watch::get(ctx.sock) else {
        return;
    };
    if w.state != State::Asked || w.pending.op != Op::Bind as u8 {
        return;
    }
    w.state = State::Done;
    // post_bind4 may read src_port and src_ip4 only, post_bind6 src_port and src_ip6.
    let port = ctx_read!(ctx.sock, src_port) as u16;
    // The time of the report is the time of the choice.
    w.pending.asked_ns = 0;
    emit_owned(&w.owner, &w.pending, port, 0, hook, 0);
}

// UDP sendmsg with a destination: after inet_send_prepare autobound the socket.

#[cgroup_sock_addr(sendmsg4)]
pub fn pt_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx, Family::Inet as u8, HookId::Sendmsg4);
    1
}
program_listed!(pt_sendmsg4 in CGROUP.name);

#[cgroup_sock_addr(sendmsg6)]
pub fn pt_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx, Family::Inet6 as u8, HookId::Sendmsg6);
    1
}
program_listed!(pt_sendmsg6 in CGROUP.name);

#[inline(always)]
fn on_sendmsg(ctx: &SockAddrContext, fam: u8, hook: HookId) {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    let (_, user_port, daddr) = user_sockaddr(sa, fam);
    let sk = sock_of(sa);
    if sk.is_null() {
        return;
    }
    if let Some(m) = watch::take(sk) {
        let Some(c) = current() else { return };
        if m != Mark::Fresh {
            return;
        }
        // SAFETY: as `ctx_read!`, on the socket the verifier checked.
        let sk_fam = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sk).family)) } as u8;
        // An IPv6 socket sending to a v4-mapped address runs the 4 hook.
        let daddr = if sk_fam != fam {
            v4_mapped([daddr[0], daddr[1], daddr[2], daddr[3]])
        } else {
            daddr
        };
        let mut p = toward(Op::Autobind, Proto::Udp as u8, sk_fam, user_port, daddr);
        let (port, saddr) = watch::local(sk, sk_fam);
        p.saddr = saddr;
        if port != 0 {
            emit(c, &p, port, 0, hook, 0);
        }
        return;
    }
    // The common case, a socket with no watch, ends here.
    let Some(w) = watch::get(sk) else {
        return;
    };
    watch::settle(w, Seen::Otherwise, hook, watch::local(sk, w.pending.family));
    watch::forget(sk);
}

// ---------------------------------------------------------------------------------------------
// sock_ops: the port chosen by connect() and listen().

#[sock_ops]
pub fn pt_sockops(ctx: SockOpsContext) -> u32 {
    let so: *const bpf_sock_ops = ctx.ops;
    let op = ctx_read!(so, op);
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        on_connect_cb(so);
    } else if op == BPF_SOCK_OPS_TCP_LISTEN_CB {
        on_listen_cb(so);
    }
    1
}
program_listed!(pt_sockops in CGROUP.name);

/// The socket of a sock_ops context (null for a request or time-wait socket).
#[inline(always)]
fn ops_sock(so: *const bpf_sock_ops) -> *mut bpf_sock {
    // SAFETY: as `ctx_read!`; `sk` is a union member, hence no macro.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*so).__bindgen_anon_2.sk)) }
}

/// The port inet_hash_connect chose, seen from tcp_connect().
#[inline(always)]
fn on_connect_cb(so: *const bpf_sock_ops) {
    let fam = ctx_read!(so, family) as u8;
    let local4 = ctx_read!(so, local_ip4);
    let remote4 = ctx_read!(so, remote_ip4);
    let local6 = ctx_read6!(so, local_ip6);
    let remote6 = ctx_read6!(so, remote_ip6);
    let local_port = ctx_read!(so, local_port);
    let remote_port = ctx_read!(so, remote_port);
    let sk = ops_sock(so);
    if sk.is_null() {
        return;
    }
    let (owner, mut p) = if SOCK_OPS_TASK.load() != 0 {
        if watch::take(sk) != Some(Mark::Connecting) {
            return;
        }
        let Some(c) = current() else {
            return;
        };
        (
            Owner::of(c),
            Pending::new(Op::Connect as u8, Proto::Tcp as u8, fam),
        )
    } else {
        let Some(asked) = watch::take_asked(sk, Op::Connect) else {
            return;
        };
        asked
    };
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
    p.asked_ns = 0;
    emit_owned(&owner, &p, local_port as u16, 0, HookId::SockOpsConnect, 0);
}

/// The port a listen() on an unbound socket got.
#[inline(always)]
fn on_listen_cb(so: *const bpf_sock_ops) {
    let local_port = ctx_read!(so, local_port);
    let sk = ops_sock(so);
    if sk.is_null() {
        return;
    }
    let Some((owner, p)) = watch::take_asked(sk, Op::Listen) else {
        return;
    };
    emit_owned(&owner, &p, local_port as u16, 0, HookId::SockOpsListen, 0);
}

// ---------------------------------------------------------------------------------------------
// TCP state changes with no local port: listen() about to choose one, and a connect() or
// listen() that found none.

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn pt_inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    on_set_state(&ctx);
    0
}
program_listed!(pt_inet_sock_set_state in RAW_TRACEPOINTS.name);

/// The traced cgroup v2 directory (`--cgroup`), at index 0; the loader fills it only when the
/// trace is scoped.
#[map]
static SCOPE_DIR: CgroupArray = CgroupArray::with_max_entries(1, 0);

/// Whether the current task is in the traced cgroup subtree (the cgroup programs see only
/// that subtree; the tracepoint sees the whole host). `bpf_current_task_under_cgroup` (4.9+) and
/// not `bpf_get_current_ancestor_cgroup_id`, which 5.10 refuses in tracing programs. `SCOPE` is
/// read-only, so an unscoped trace never reaches the helper.
#[inline(always)]
fn in_scope() -> bool {
    SCOPE.load().level == 0 || SCOPE_DIR.current_task_under_cgroup(0) == Ok(true)
}

/// A raw tracepoint, not the classic one: it gets the tracepoint's arguments (`sk`,
/// `oldstate`, `newstate`) without the kernel first building a record, and the states alone
/// dismiss the transitions of every TCP connection that chose its port (most calls) before
/// anything is read.
#[inline(always)]
fn on_set_state(ctx: &RawTracePointContext) {
    let oldstate: u64 = ctx.arg(1);
    let newstate: u64 = ctx.arg(2);
    let (old, new) = (oldstate as u8, newstate as u8);
    let closing = new == TCP_CLOSE;
    let listen_failed = old == TCP_LISTEN && closing;
    let opening = old == TCP_CLOSE && new == TCP_LISTEN;
    let failed_connect = old == TCP_SYN_SENT && closing;
    if !listen_failed && !opening && !failed_connect {
        return;
    }
    let skaddr: u64 = ctx.arg(0);
    let o = OFFSETS.load();
    let sk = Sock::new(skaddr, &o);
    // A socket with a port did not ask for one (or got it).
    if sk.protocol() != Some(6) || sk.num() != Some(0) {
        return;
    }
    if listen_failed {
        // get_port failed; -EADDRINUSE is all it returns.
        let ptr = skaddr as *const bpf_sock;
        if let Some(w) = watch::get(ptr)
            && w.state == State::Asked
            && w.pending.op == Op::Listen as u8
        {
            let (owner, p) = (w.owner, w.pending);
            watch::forget(ptr);
            emit_owned(&owner, &p, 0, EADDRINUSE, HookId::SetState, 0);
        }
        return;
    }
    let Some(c) = current() else {
        return;
    };
    if !in_scope() {
        return;
    }
    let Some(fam) = sk.family() else {
        return;
    };
    let fam = fam as u8;
    let op = if opening { Op::Listen } else { Op::Connect };
    let mut p = Pending::new(op as u8, Proto::Tcp as u8, fam);
    p.saddr = sk.local_addr(fam, false);
    if opening {
        watch::ask(skaddr as *const bpf_sock, Owner::of(c), p);
    } else {
        // inet_hash_connect found no port (it returns -EADDRNOTAVAIL); the socket still
        // holds the destination, which the kernel clears only after this state change.
        p.has_daddr = 1;
        p.dport = sk.dport();
        p.daddr = sk.peer_addr(fam, false);
        emit(c, &p, 0, EADDRNOTAVAIL, HookId::SetState, 0);
    }
}
