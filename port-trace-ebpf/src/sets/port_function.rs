//! What the "fexit" and "kprobe" hook sets share: both hook the kernel functions that choose a
//! port, stash the entry state per thread, and report the outcome at the function's return.
//!
//! - `inet_hash_connect(death_row, sk)` / `inet6_hash_connect(death_row, sk)`: TCP connect()
//!   on a socket without a port (`inet_num == 0` at entry).
//! - `inet_csk_get_port(sk, snum)` with `snum == 0`: TCP bind(0), or listen() on an unbound
//!   socket (the state is already LISTEN at entry).
//! - `udp_lib_get_port(sk, snum, hash2_nulladdr)` with `snum == 0`: UDP bind(0) when the task
//!   is in bind(), otherwise an autobind (connect/sendto/sendmsg/sendmmsg), whose destination
//!   comes from the syscall's arguments.
//!
//! Every struct sock field is read through offsets resolved from the running kernel's BTF.

use aya_ebpf::{
    bindings::task_struct,
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_task_pt_regs},
    },
    macros::map,
    maps::LruHashMap,
};
use port_trace_common::{Family, KernelOffsets, Op, Proto, Stat, layout};

use crate::{EADDRINUSE, EAGAIN, OFFSETS, Pending, count, current, emit, empty_pending, read};

/// Which kernel function an entry belongs to.
pub const F_INET_HASH_CONNECT: u8 = 1;
pub const F_INET6_HASH_CONNECT: u8 = 2;
pub const F_INET_CSK_GET_PORT: u8 = 3;
pub const F_UDP_LIB_GET_PORT: u8 = 4;

const TCP_LISTEN: u8 = 10;

// x86_64 `struct pt_regs` (stable ABI) and syscall numbers.
const PT_REGS_ORIG_AX: u64 = 120;
const PT_REGS_SI: u64 = 104;
const PT_REGS_R8: u64 = 72;
const NR_CONNECT: u64 = 42;
const NR_SENDTO: u64 = 44;
const NR_SENDMSG: u64 = 46;
const NR_BIND: u64 = 49;
const NR_SENDMMSG: u64 = 307;

/// A thread's port choice in progress, from the function's entry to its return.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Entry {
    /// `struct sock *` passed to the function.
    sk: u64,
    /// `bpf_ktime_get_ns()` at entry.
    ts: u64,
    /// Local address at entry (reported on failure: the kernel resets it afterwards).
    saddr: [u8; 16],
    daddr: [u8; 16],
    dport: u16,
    func: u8,
    op: u8,
    proto: u8,
    family: u8,
    has_daddr: u8,
    _pad: u8,
}

#[map]
static ENTRIES: LruHashMap<u32, Entry> = LruHashMap::with_max_entries(16384, 0);

const NEEDED: u32 = layout::SOCK | layout::SOCK_PEER;

/// The socket's local address; `v4_fields` reads the IPv4 field of an IPv6 socket (a
/// v4-mapped connect through `inet_hash_connect`) and reports it v4-mapped.
#[inline(always)]
fn local_addr(o: &KernelOffsets, sk: u64, fam: u8, v4_fields: bool) -> [u8; 16] {
    if fam == Family::Inet as u8 || v4_fields {
        let a: [u8; 4] = unsafe { read(sk, o.sk_rcv_saddr).unwrap_or([0; 4]) };
        v4_in(fam, a)
    } else {
        unsafe { read(sk, o.sk_v6_rcv_saddr).unwrap_or([0; 16]) }
    }
}

#[inline(always)]
fn peer_addr(o: &KernelOffsets, sk: u64, fam: u8, v4_fields: bool) -> [u8; 16] {
    if fam == Family::Inet as u8 || v4_fields {
        let a: [u8; 4] = unsafe { read(sk, o.sk_daddr).unwrap_or([0; 4]) };
        v4_in(fam, a)
    } else {
        unsafe { read(sk, o.sk_v6_daddr).unwrap_or([0; 16]) }
    }
}

/// An IPv4 address as an IPv4 event stores it, or v4-mapped for an IPv6 socket.
#[inline(always)]
fn v4_in(fam: u8, a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    if fam == Family::Inet as u8 {
        out[..4].copy_from_slice(&a);
    } else {
        out[10] = 0xff;
        out[11] = 0xff;
        out[12..].copy_from_slice(&a);
    }
    out
}

/// The destination in a user sockaddr: (has_daddr, daddr, dport in host order).
#[inline(always)]
pub fn user_dest(uaddr: u64) -> (u8, [u8; 16], u16) {
    let mut daddr = [0u8; 16];
    if uaddr == 0 {
        return (0, daddr, 0);
    }
    let sa_family: u16 = unsafe { bpf_probe_read_user(uaddr as *const u16).unwrap_or(0) };
    if sa_family != Family::Inet as u8 as u16 && sa_family != Family::Inet6 as u8 as u16 {
        return (0, daddr, 0);
    }
    let port: u16 = unsafe { bpf_probe_read_user((uaddr + 2) as *const u16).unwrap_or(0) };
    if sa_family == Family::Inet as u8 as u16 {
        let addr: [u8; 4] =
            unsafe { bpf_probe_read_user((uaddr + 4) as *const [u8; 4]).unwrap_or([0; 4]) };
        daddr[..4].copy_from_slice(&addr);
    } else {
        daddr = unsafe { bpf_probe_read_user((uaddr + 8) as *const [u8; 16]).unwrap_or([0; 16]) };
    }
    (1, daddr, u16::from_be(port))
}

/// The syscall the current task is in (x86_64 `orig_ax`) and its user registers, or
/// `u64::MAX` when the task has none (a kernel thread).
#[inline(always)]
fn current_syscall() -> (u64, u64) {
    unsafe {
        let task: *mut task_struct = bpf_get_current_task_btf();
        if task.is_null() {
            return (u64::MAX, 0);
        }
        let regs = bpf_task_pt_regs(task) as u64;
        if regs == 0 {
            return (u64::MAX, 0);
        }
        let nr: u64 =
            bpf_probe_read_kernel((regs + PT_REGS_ORIG_AX) as *const u64).unwrap_or(u64::MAX);
        (nr, regs)
    }
}

#[inline(always)]
fn user_reg(regs: u64, off: u64) -> u64 {
    unsafe { bpf_probe_read_kernel((regs + off) as *const u64).unwrap_or(0) }
}

/// The first field of a `user_msghdr` (and of an `mmsghdr`): `msg_name`.
#[inline(always)]
fn msg_name(msg: u64) -> u64 {
    if msg == 0 {
        return 0;
    }
    unsafe { bpf_probe_read_user(msg as *const u64).unwrap_or(0) }
}

/// Function entry: note a port choice the kernel is about to make.
#[inline(always)]
pub fn on_enter(func: u8, sk: u64, snum: u16) {
    let Some((_, tid)) = current() else { return };
    if sk == 0 {
        return;
    }
    let o = OFFSETS.load();
    if o.valid & NEEDED != NEEDED {
        count(Stat::Unresolved);
        return;
    }
    let Some(fam) = (unsafe { read::<u16>(sk, o.sk_family) }) else {
        return;
    };
    let fam = fam as u8;
    if fam != Family::Inet as u8 && fam != Family::Inet6 as u8 {
        return;
    }
    let mut e = Entry {
        sk,
        ts: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        dport: 0,
        func,
        op: Op::Connect as u8,
        proto: Proto::Tcp as u8,
        family: fam,
        has_daddr: 0,
        _pad: 0,
    };
    if func == F_INET_HASH_CONNECT || func == F_INET6_HASH_CONNECT {
        // A socket that already has a port (bind() before connect()) keeps it.
        let Some(num) = (unsafe { read::<u16>(sk, o.sk_num) }) else {
            return;
        };
        if num != 0 {
            return;
        }
        let v4 = func == F_INET_HASH_CONNECT;
        // tcp_v{4,6}_connect sets the destination before choosing the port.
        e.daddr = peer_addr(&o, sk, fam, v4);
        let dport: u16 = unsafe { read(sk, o.sk_dport).unwrap_or(0) };
        e.dport = u16::from_be(dport);
        e.has_daddr = 1;
        e.saddr = local_addr(&o, sk, fam, v4);
    } else {
        if snum != 0 {
            return; // The user chose the port.
        }
        let Some(pr) = (unsafe { read::<u16>(sk, o.sk_protocol) }) else {
            return;
        };
        if func == F_INET_CSK_GET_PORT {
            if pr != Proto::Tcp as u8 as u16 {
                return;
            }
            // listen() sets LISTEN before it asks for a port; bind() leaves the socket CLOSE.
            let state: u8 = unsafe { read(sk, o.sk_state).unwrap_or(0) };
            e.op = if state == TCP_LISTEN {
                Op::Listen as u8
            } else {
                Op::Bind as u8
            };
        } else {
            if pr != Proto::Udp as u8 as u16 {
                return; // UDP-Lite shares udp_lib_get_port.
            }
            e.proto = Proto::Udp as u8;
            let (nr, regs) = current_syscall();
            if nr == NR_BIND {
                e.op = Op::Bind as u8;
            } else {
                e.op = Op::Autobind as u8;
                let uaddr = match nr {
                    NR_CONNECT => user_reg(regs, PT_REGS_SI),
                    NR_SENDTO => user_reg(regs, PT_REGS_R8),
                    NR_SENDMSG | NR_SENDMMSG => msg_name(user_reg(regs, PT_REGS_SI)),
                    _ => 0,
                };
                let (has, daddr, dport) = user_dest(uaddr);
                e.has_daddr = has;
                e.daddr = daddr;
                e.dport = dport;
            }
        }
        e.saddr = local_addr(&o, sk, fam, false);
    }
    e.ts = unsafe { bpf_ktime_get_ns() };
    let _ = ENTRIES.insert(tid, e, 0);
}

/// Function return: report the port the kernel chose, or its failure. `sk` is the argument
/// when the hook sees it (fexit), 0 when it does not (kretprobe).
#[inline(always)]
pub fn on_exit(func: u8, sk: u64, ret: i32, hook_id: u8) {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some((tgid, tid)) = current() else { return };
    let Some(entry) = (unsafe { ENTRIES.get(tid) }) else {
        return;
    };
    let e = *entry;
    let _ = ENTRIES.remove(tid);
    if e.func != func || (sk != 0 && sk != e.sk) {
        count(Stat::Unresolved);
        return;
    }
    let latency = now.saturating_sub(e.ts);
    let o = OFFSETS.load();
    let mut p: Pending = empty_pending(e.op, e.proto, e.family);
    p.sk = e.sk;
    p.saddr = e.saddr;
    p.daddr = e.daddr;
    p.dport = e.dport;
    p.has_daddr = e.has_daddr;
    if ret == 0 {
        let port: u16 = unsafe { read(e.sk, o.sk_num).unwrap_or(0) };
        if port == 0 {
            count(Stat::Unresolved);
            return;
        }
        p.saddr = local_addr(&o, e.sk, e.family, func == F_INET_HASH_CONNECT);
        emit(tgid, tid, &p, port, 0, hook_id, latency);
        return;
    }
    let errno = if func == F_INET_HASH_CONNECT || func == F_INET6_HASH_CONNECT {
        if ret > 0 {
            count(Stat::Unresolved);
            return;
        }
        -(ret as i64)
    } else if e.op == Op::Autobind as u8 {
        // inet_autobind turns any get_port failure into EAGAIN, the syscall's errno.
        EAGAIN
    } else if ret < 0 {
        -(ret as i64)
    } else {
        // Kernels before ~6.1 return 1 instead of -EADDRINUSE.
        EADDRINUSE
    };
    emit(tgid, tid, &p, 0, errno as i32, hook_id, latency);
}
