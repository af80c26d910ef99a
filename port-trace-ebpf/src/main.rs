//! port-trace kernel side: the "cgroup" hook set, for kernels where kprobes and BPF trampolines
//! are unavailable. Every event is one kernel port choice or one failure to choose.
//!
//! How each path is seen (see ../shared/kernel-port-selection.md):
//! - TCP connect: cgroup connect4/6 notes that the socket has no port yet, sock_ops
//!   TCP_CONNECT_CB reports the chosen port; `inet_sock_set_state` SYN_SENT->CLOSE with port 0
//!   plus `sys_exit_connect` report the failure and its errno.
//! - bind(0): cgroup bind4/6 notes the request for port 0, post_bind4/6 reports the port,
//!   `sys_exit_bind` reports EADDRINUSE.
//! - listen() on an unbound socket: `inet_sock_set_state` CLOSE->LISTEN with port 0 notes it,
//!   sock_ops TCP_LISTEN_CB reports the port, `sys_exit_listen` the failure.
//! - UDP autobind: connect4/6 (connect) or a walk from the syscall's fd to the socket
//!   (sendto/sendmsg/sendmmsg) notes an unbound UDP socket at entry; the syscall's exit reads
//!   the port the kernel gave it, or reports EAGAIN.
//!
//! Pending state is keyed by thread id: a thread is in at most one syscall at a time.
//!
//! The "fexit" and "kprobe" hook sets (fexit.rs, kprobe.rs, sharing common.rs) hook the kernel
//! functions that choose the port instead; the loader loads and attaches one set only.
#![no_std]
#![no_main]

mod common;
mod fexit;
mod kprobe;

use aya_ebpf::Global;
use aya_ebpf::{
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_SOCK_OPS_TCP_CONNECT_CB,
        bpf_sock, bpf_sock_addr, bpf_sock_ops,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_socket_cookie,
            bpf_ktime_get_boot_ns,
        },
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{SockAddrContext, SockContext, SockOpsContext, TracePointContext},
};
use port_trace_common::{Family, HookId, KernelOffsets, Op, PortEvent, Proto, Stat, layout};

/// Context fields must be loaded at a constant offset from the context pointer, so every field
/// is read once, unconditionally, before any branch can make LLVM merge the addresses.
macro_rules! ctx_read {
    ($ptr:expr, $field:ident) => {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ptr).$field)) }
    };
}

/// An IPv6 address in a context: four separate 4-byte loads, the only size every kernel allows.
macro_rules! ctx_read6 {
    ($ptr:expr, $field:ident) => {
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

const EADDRINUSE: i64 = 98;
const EAGAIN: i64 = 11;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// Set by the loader: the tracer's own process, whose sockets are not reported.
#[unsafe(no_mangle)]
static TRACER_TGID: Global<u32> = Global::new(0);
/// Set by the loader from the running kernel's BTF.
#[unsafe(no_mangle)]
static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    file_private_data: 0,
    inode_mode: 0,
    socket_sk: 0,
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
    valid: 0,
});
/// Wake userspace early once this many bytes wait in the ring buffer; otherwise it drains on
/// a timer. Per-event wake-ups cost 1.6-3 us each and cut connect() throughput 3-4x.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(256 * 1024);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

/// What a thread's current syscall is about to do.
#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    /// `struct sock *` for paths whose port is read back at syscall exit.
    sk: u64,
    saddr: [u8; 16],
    daddr: [u8; 16],
    dport: u16,
    op: u8,
    proto: u8,
    family: u8,
    has_daddr: u8,
    /// TCP connect: the kernel failed to find a port (SYN_SENT -> CLOSE with port 0).
    failed: u8,
    _pad: u8,
    /// TCP connect: the socket's cookie, the key of its `CONNECTING` entry.
    cookie: u64,
}

#[map]
static PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(16384, 0);

/// Who made a socket's connect() call, captured in process context by connect4/6.
#[repr(C)]
#[derive(Clone, Copy)]
struct Owner {
    cgroup_id: u64,
    tgid: u32,
    tid: u32,
    uid: u32,
    netns: u32,
    comm: [u8; 16],
}

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

#[inline(always)]
fn count(which: Stat) {
    if let Some(p) = STATS.get_ptr_mut(which as u32) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn current() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == TRACER_TGID.load() {
        return None;
    }
    Some((tgid, id as u32))
}

#[inline(always)]
unsafe fn read<T>(base: u64, off: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

#[inline(always)]
fn current_netns(o: &KernelOffsets) -> u32 {
    if o.valid & layout::NETNS == 0 {
        return 0;
    }
    unsafe {
        let task = bpf_get_current_task();
        let Some(nsproxy) = read::<u64>(task, o.task_nsproxy) else {
            return 0;
        };
        if nsproxy == 0 {
            return 0;
        }
        let Some(net) = read::<u64>(nsproxy, o.nsproxy_net_ns) else {
            return 0;
        };
        read::<u32>(net, o.net_ns_inum).unwrap_or(0)
    }
}

/// Reserve, fill and submit one event; a full ring buffer is counted, never silent.
/// `latency_ns` is 0 where the hook set cannot measure the port search.
#[inline(always)]
fn emit(tgid: u32, tid: u32, p: &Pending, port: u16, errno: i32, hook_id: u8, latency_ns: u64) {
    emit_owned(&owner_now(tgid, tid), p, port, errno, hook_id, latency_ns);
}

/// The calling task's identity; only for programs that run in process context.
#[inline(always)]
fn owner_now(tgid: u32, tid: u32) -> Owner {
    let o = OFFSETS.load();
    Owner {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tgid,
        tid,
        uid: bpf_get_current_uid_gid() as u32,
        netns: current_netns(&o),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// Like `emit`, with the identity given: usable where current-task helpers are not.
#[inline(always)]
fn emit_owned(w: &Owner, p: &Pending, port: u16, errno: i32, hook_id: u8, latency_ns: u64) {
    let Some(mut entry) = EVENTS.reserve::<PortEvent>(0) else {
        count(Stat::Lost);
        return;
    };
    let ev = PortEvent {
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: w.cgroup_id,
        pid: w.tgid,
        tid: w.tid,
        uid: w.uid,
        netns: w.netns,
        errno,
        port,
        dport: p.dport,
        saddr: p.saddr,
        daddr: p.daddr,
        op: p.op,
        proto: p.proto,
        family: p.family,
        hook: hook_id,
        has_daddr: p.has_daddr,
        _pad: [0; 3],
        comm: w.comm,
        latency_ns,
    };
    entry.write(ev);
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

#[inline(always)]
fn ip4(addr: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    let b = addr.to_ne_bytes();
    out[0] = b[0];
    out[1] = b[1];
    out[2] = b[2];
    out[3] = b[3];
    out
}

#[inline(always)]
fn ip6(addr: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = addr[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

const fn empty_pending(op_id: u8, proto_id: u8, family_id: u8) -> Pending {
    Pending {
        sk: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        dport: 0,
        op: op_id,
        proto: proto_id,
        family: family_id,
        has_daddr: 0,
        failed: 0,
        _pad: 0,
        cookie: 0,
    }
}

fn proto_of(ip_proto: u32) -> Option<u8> {
    match ip_proto {
        6 => Some(Proto::Tcp as u8),
        17 => Some(Proto::Udp as u8),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// connect(): cgroup connect4/6 runs before the kernel picks a port.

#[cgroup_sock_addr(connect4)]
pub fn pt_connect4(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Family::Inet as u8);
    1
}

#[cgroup_sock_addr(connect6)]
pub fn pt_connect6(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Family::Inet6 as u8);
    1
}

/// The protocol, port (network order) and address the user passed to connect()/bind().
#[inline(always)]
fn user_sockaddr(sa: *const bpf_sock_addr, fam: u8) -> (u32, u32, [u8; 16]) {
    let protocol = ctx_read!(sa, protocol);
    let user_port = ctx_read!(sa, user_port);
    // connect4/bind4 may not touch user_ip6 (nor the 6 variants user_ip4): `fam` is a
    // constant here, so only one branch is compiled into each program.
    let addr = if fam == Family::Inet as u8 {
        ip4(ctx_read!(sa, user_ip4))
    } else {
        ip6(ctx_read6!(sa, user_ip6))
    };
    (protocol, user_port, addr)
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, fam: u8) {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    let (protocol, user_port, daddr) = user_sockaddr(sa, fam);
    let sk: *mut bpf_sock =
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sa).__bindgen_anon_1.sk)) };
    let Some((tgid, tid)) = current() else { return };
    let Some(pr) = proto_of(protocol) else { return };
    if sk.is_null() {
        return;
    }
    // A socket that already has a port keeps it: the kernel picks nothing.
    if ctx_read!(sk, src_port) != 0 {
        return;
    }
    let mut p = empty_pending(
        if pr == Proto::Tcp as u8 {
            Op::Connect as u8
        } else {
            Op::Autobind as u8
        },
        pr,
        fam,
    );
    p.sk = sk as u64;
    p.has_daddr = 1;
    p.dport = u16::from_be(user_port as u16);
    p.daddr = daddr;
    if pr == Proto::Tcp as u8 {
        p.cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        let c = Connecting {
            owner: owner_now(tgid, tid),
            pending: p,
        };
        let _ = CONNECTING.insert(p.cookie, c, 0);
    }
    let _ = PENDING.insert(tid, p, 0);
}

#[sock_ops]
pub fn pt_sockops(ctx: SockOpsContext) -> u32 {
    let so: *const bpf_sock_ops = ctx.ops;
    if ctx_read!(so, op) == BPF_SOCK_OPS_TCP_CONNECT_CB {
        on_connect_cb(so);
    }
    1
}

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
    let cookie = unsafe { bpf_get_socket_cookie(so as *mut _) };
    let Some(c) = (unsafe { CONNECTING.get(cookie) }) else {
        return;
    };
    let c = *c;
    let _ = CONNECTING.remove(cookie);
    let mut p = c.pending;
    p.family = fam;
    if fam == Family::Inet as u8 {
        p.saddr = ip4(local4);
        p.daddr = ip4(remote4);
    } else {
        p.saddr = ip6(local6);
        p.daddr = ip6(remote6);
    }
    // remote_port holds the big-endian port in its upper 16 bits.
    p.dport = u32::from_be(remote_port) as u16;
    p.has_daddr = 1;
    emit_owned(
        &c.owner,
        &p,
        local_port as u16,
        0,
        HookId::SockOpsConnect as u8,
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

#[cgroup_sock_addr(bind6)]
pub fn pt_bind6(ctx: SockAddrContext) -> i32 {
    on_bind(&ctx, Family::Inet6 as u8);
    1
}

#[inline(always)]
fn on_bind(ctx: &SockAddrContext, fam: u8) {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    let (protocol, user_port, daddr) = user_sockaddr(sa, fam);
    if user_port != 0 {
        return; // The user chose the port.
    }
    let Some((_, tid)) = current() else { return };
    let Some(pr) = proto_of(protocol) else { return };
    let mut p = empty_pending(Op::Bind as u8, pr, fam);
    p.saddr = daddr;
    let _ = PENDING.insert(tid, p, 0);
}

#[cgroup_sock(post_bind4)]
pub fn pt_post_bind4(ctx: SockContext) -> i32 {
    on_post_bind(&ctx, HookId::PostBind4 as u8);
    1
}

#[cgroup_sock(post_bind6)]
pub fn pt_post_bind6(ctx: SockContext) -> i32 {
    on_post_bind(&ctx, HookId::PostBind6 as u8);
    1
}

#[inline(always)]
fn on_post_bind(ctx: &SockContext, hook_id: u8) {
    let port = ctx_read!(ctx.sock, src_port) as u16;
    let Some((tgid, tid)) = current() else { return };
    let Some(pending) = (unsafe { PENDING.get(tid) }) else {
        return;
    };
    if pending.op != Op::Bind as u8 {
        return;
    }
    let p = *pending;
    let _ = PENDING.remove(tid);
    // IP_BIND_ADDRESS_NO_PORT: no port yet, connect() will pick it.
    if port == 0 {
        return;
    }
    emit(tgid, tid, &p, port, 0, hook_id, 0);
}

// ---------------------------------------------------------------------------------------------
// TCP state changes: listen() autobind and connect() failing to find a port.

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn pt_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = on_set_state(&ctx);
    0
}

#[inline(always)]
fn on_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    // Field offsets checked against the tracepoint's format file by the loader.
    let protocol: u16 = unsafe { ctx.read_at(30)? };
    let sport: u16 = unsafe { ctx.read_at(24)? };
    if protocol != Proto::Tcp as u8 as u16 || sport != 0 {
        return Ok(());
    }
    let oldstate: i32 = unsafe { ctx.read_at(16)? };
    let newstate: i32 = unsafe { ctx.read_at(20)? };
    let Some((_, tid)) = current() else {
        return Ok(());
    };
    if oldstate == TCP_CLOSE && newstate == TCP_LISTEN {
        let fam: u16 = unsafe { ctx.read_at(28)? };
        let mut p = empty_pending(Op::Listen as u8, Proto::Tcp as u8, fam as u8);
        // The socket, whose port is read back at sys_exit_listen.
        p.sk = unsafe { ctx.read_at(8)? };
        p.saddr = if fam == Family::Inet as u8 as u16 {
            let a: [u8; 4] = unsafe { ctx.read_at(32)? };
            let mut s = [0u8; 16];
            s[..4].copy_from_slice(&a);
            s
        } else {
            unsafe { ctx.read_at(40)? }
        };
        let _ = PENDING.insert(tid, p, 0);
    } else if oldstate == TCP_SYN_SENT
        && newstate == TCP_CLOSE
        && let Some(p) = PENDING.get_ptr_mut(tid)
    {
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

/// Follow fd -> file -> socket -> sock with offsets from the running kernel's BTF.
#[inline(always)]
fn sock_of_fd(o: &KernelOffsets, fd: u64) -> Option<u64> {
    if o.valid & layout::FD_WALK == 0 {
        return None;
    }
    unsafe {
        let task = bpf_get_current_task();
        let files: u64 = read(task, o.task_files)?;
        let fdt: u64 = read(files, o.files_fdt)?;
        let max_fds: u32 = read(fdt, o.fdt_max_fds)?;
        if fd >= max_fds as u64 {
            return None;
        }
        let fds: u64 = read(fdt, o.fdt_fd)?;
        let file: u64 = bpf_probe_read_kernel((fds + fd * 8) as *const u64).ok()?;
        let inode: u64 = read(file, o.file_inode)?;
        let mode: u16 = read(inode, o.inode_mode)?;
        if mode & S_IFMT != S_IFSOCK {
            return None;
        }
        let socket: u64 = read(file, o.file_private_data)?;
        read(socket, o.socket_sk)
    }
}

#[inline(always)]
fn on_send_enter(fd: u64, uaddr: u64) {
    if uaddr == 0 {
        return; // Without a destination an unbound socket's send fails; nothing to watch.
    }
    let Some((_, tid)) = current() else { return };
    let o = OFFSETS.load();
    if o.valid & layout::SOCK == 0 {
        return;
    }
    let Some(sk) = sock_of_fd(&o, fd) else { return };
    let (Some(fam), Some(pr), Some(num)) = (
        unsafe { read::<u16>(sk, o.sk_family) },
        unsafe { read::<u16>(sk, o.sk_protocol) },
        unsafe { read::<u16>(sk, o.sk_num) },
    ) else {
        return;
    };
    if pr != Proto::Udp as u8 as u16 || num != 0 {
        return;
    }
    let mut p = empty_pending(Op::Autobind as u8, Proto::Udp as u8, fam as u8);
    p.sk = sk;
    // The destination comes from the user's sockaddr.
    let (has_daddr, daddr, dport) = common::user_dest(uaddr);
    p.has_daddr = has_daddr;
    p.daddr = daddr;
    p.dport = dport;
    let _ = PENDING.insert(tid, p, 0);
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn pt_enter_sendto(ctx: TracePointContext) -> u32 {
    // sendto(fd, buf, len, flags, addr, addrlen)
    let fd: u64 = unsafe { ctx.read_at(16).unwrap_or(u64::MAX) };
    let addr: u64 = unsafe { ctx.read_at(48).unwrap_or(0) };
    on_send_enter(fd, addr);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn pt_enter_sendmsg(ctx: TracePointContext) -> u32 {
    // sendmsg(fd, msg, flags); msg_name is the first field of struct user_msghdr.
    let fd: u64 = unsafe { ctx.read_at(16).unwrap_or(u64::MAX) };
    let msg: u64 = unsafe { ctx.read_at(24).unwrap_or(0) };
    if msg != 0 {
        let name: u64 = unsafe { bpf_probe_read_user(msg as *const u64).unwrap_or(0) };
        on_send_enter(fd, name);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmmsg")]
pub fn pt_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    // sendmmsg(fd, mmsg, vlen, flags); the first message's name decides the autobind.
    let fd: u64 = unsafe { ctx.read_at(16).unwrap_or(u64::MAX) };
    let mmsg: u64 = unsafe { ctx.read_at(24).unwrap_or(0) };
    if mmsg != 0 {
        let name: u64 = unsafe { bpf_probe_read_user(mmsg as *const u64).unwrap_or(0) };
        on_send_enter(fd, name);
    }
    0
}

// ---------------------------------------------------------------------------------------------
// Syscall exit: the outcome of whatever is pending for this thread.

#[inline(always)]
fn on_exit(ctx: &TracePointContext, hook_id: u8) {
    let Some((tgid, tid)) = current() else { return };
    let Some(pending) = (unsafe { PENDING.get(tid) }) else {
        return;
    };
    let mut p = *pending;
    let _ = PENDING.remove(tid);
    let ret: i64 = unsafe { ctx.read_at(16).unwrap_or(0) };
    // Autobind and listen(): the port is read back from the socket.
    if p.op == Op::Autobind as u8 || (p.op == Op::Listen as u8 && ret >= 0) {
        let o = OFFSETS.load();
        if p.sk == 0 || o.valid & layout::SOCK == 0 {
            count(Stat::Unresolved);
            return;
        }
        let port: u16 = unsafe { read(p.sk, o.sk_num).unwrap_or(0) };
        if port != 0 {
            if p.family == Family::Inet as u8 {
                let a: [u8; 4] = unsafe { read(p.sk, o.sk_rcv_saddr).unwrap_or([0; 4]) };
                p.saddr[..4].copy_from_slice(&a);
            } else {
                p.saddr = unsafe { read(p.sk, o.sk_v6_rcv_saddr).unwrap_or([0; 16]) };
            }
            emit(tgid, tid, &p, port, 0, hook_id, 0);
        } else if p.op == Op::Autobind as u8 && ret == -EAGAIN {
            emit(tgid, tid, &p, 0, EAGAIN as i32, hook_id, 0);
        }
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
        Ok(Op::Bind) => ret == -EADDRINUSE,
        Ok(Op::Listen) => true,
        _ => false,
    };
    if report {
        emit(tgid, tid, &p, 0, (-ret) as i32, hook_id, 0);
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn pt_exit_connect(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, HookId::SysExitConnect as u8);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn pt_exit_bind(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, HookId::SysExitBind as u8);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_listen")]
pub fn pt_exit_listen(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, HookId::SysExitListen as u8);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendto")]
pub fn pt_exit_sendto(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, HookId::SysExitSendto as u8);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendmsg")]
pub fn pt_exit_sendmsg(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, HookId::SysExitSendmsg as u8);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendmmsg")]
pub fn pt_exit_sendmmsg(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, HookId::SysExitSendmmsg as u8);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
