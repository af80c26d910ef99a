//! What the "fexit" and "kprobe" hook sets share: both hook the kernel functions that choose a
//! port, save the request at the function's entry and report the outcome at its return.
//!
//! - `inet_hash_connect(death_row, sk)` / `inet6_hash_connect(death_row, sk)`: TCP connect()
//!   on a socket without a port (`inet_num == 0` at entry).
//! - `inet_csk_get_port(sk, snum)` with `snum == 0`: TCP bind(0), or listen() on an unbound
//!   socket (the state is already LISTEN at entry).
//! - `udp_lib_get_port(sk, snum, hash2_nulladdr)` with `snum == 0`: UDP bind(0) when the task
//!   is in bind(), otherwise an autobind (connect/sendto/sendmsg/sendmmsg), whose destination
//!   comes from the syscall's arguments.
//!
//! How each outcome maps to an errno: docs/capture.md.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use port_trace_common::{Family, HookId, Op, Proto, Stat, layout};

use crate::{
    OFFSETS,
    emit::{count, current, emit},
    kernel::{EADDRINUSE, EAGAIN, Sock, Syscall, TCP_LISTEN, current_syscall, user_dest},
    pending::{self, Pending},
};

/// The kernel function a request was seen entering.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PortFn {
    InetHashConnect = 1,
    Inet6HashConnect = 2,
    InetCskGetPort = 3,
    UdpLibGetPort = 4,
}

/// The offsets every read here needs.
const NEEDED: u32 = layout::SOCK | layout::SOCK_PEER;

/// Function entry: note a port choice the kernel is about to make.
#[inline(always)]
pub fn on_enter(func: PortFn, sk: u64, snum: u16) {
    let Some(c) = current() else { return };
    if sk == 0 {
        return;
    }
    let o = OFFSETS.load();
    if !o.has(NEEDED) {
        count(Stat::Unresolved);
        return;
    }
    let sock = Sock::new(sk, &o);
    let Some(fam) = sock.family() else { return };
    let fam = fam as u8;
    if fam != Family::Inet as u8 && fam != Family::Inet6 as u8 {
        return;
    }
    let mut p = Pending::new(Op::Connect as u8, Proto::Tcp as u8, fam);
    p.sk = sk;
    p.func = func as u8;
    if func == PortFn::InetHashConnect || func == PortFn::Inet6HashConnect {
        // A socket that already has a port (bind() before connect()) keeps it.
        let Some(num) = sock.num() else { return };
        if num != 0 {
            return;
        }
        let v4 = func == PortFn::InetHashConnect;
        // tcp_v{4,6}_connect sets the destination before choosing the port.
        p.daddr = sock.peer_addr(fam, v4);
        p.dport = sock.dport();
        p.has_daddr = 1;
        p.saddr = sock.local_addr(fam, v4);
    } else {
        if snum != 0 {
            return; // The user chose the port.
        }
        let Some(pr) = sock.protocol() else { return };
        if func == PortFn::InetCskGetPort {
            if pr != Proto::Tcp as u8 as u16 {
                return;
            }
            // listen() sets LISTEN before it asks for a port; bind() leaves the socket CLOSE.
            p.op = if sock.state() == TCP_LISTEN {
                Op::Listen as u8
            } else {
                Op::Bind as u8
            };
        } else {
            if pr != Proto::Udp as u8 as u16 {
                return; // UDP-Lite shares udp_lib_get_port.
            }
            p.proto = Proto::Udp as u8;
            match current_syscall() {
                Syscall::Bind => p.op = Op::Bind as u8,
                Syscall::Other { dest } => {
                    p.op = Op::Autobind as u8;
                    let d = user_dest(dest);
                    p.has_daddr = d.has_daddr;
                    p.daddr = d.daddr;
                    p.dport = d.dport;
                }
                // Neither bind nor autobind can be claimed.
                Syscall::Unknown => {
                    count(Stat::Unresolved);
                    return;
                }
            }
        }
        p.saddr = sock.local_addr(fam, false);
    }
    // SAFETY: the helper takes no arguments.
    p.ts = unsafe { bpf_ktime_get_ns() };
    pending::save(c.tid, &p);
}

/// Function return: report the port the kernel chose, or its failure. `sk` is the argument
/// when the hook sees it (fexit), 0 when it does not (kretprobe).
#[inline(always)]
pub fn on_exit(func: PortFn, sk: u64, ret: i32, hook: HookId) {
    // SAFETY: the helper takes no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(c) = current() else { return };
    let Some(mut p) = pending::take(c.tid) else {
        return;
    };
    if p.func != func as u8 || (sk != 0 && sk != p.sk) {
        count(Stat::Unresolved);
        return;
    }
    let latency = now.saturating_sub(p.ts);
    if ret == 0 {
        let o = OFFSETS.load();
        let sock = Sock::new(p.sk, &o);
        let port = sock.num().unwrap_or(0);
        if port == 0 {
            count(Stat::Unresolved);
            return;
        }
        p.saddr = sock.local_addr(p.family, func == PortFn::InetHashConnect);
        emit(c, &p, port, 0, hook, latency);
        return;
    }
    let errno = if func == PortFn::InetHashConnect || func == PortFn::Inet6HashConnect {
        if ret > 0 {
            count(Stat::Unresolved);
            return;
        }
        ret.wrapping_neg()
    } else if p.op == Op::Autobind as u8 {
        // inet_autobind turns any get_port failure into EAGAIN, the syscall's errno.
        EAGAIN
    } else if ret < 0 {
        ret.wrapping_neg()
    } else {
        // Kernels before ~6.1 return 1 instead of -EADDRINUSE.
        EADDRINUSE
    };
    emit(c, &p, 0, errno, hook, latency);
}
