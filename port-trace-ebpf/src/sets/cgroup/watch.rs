//! What the cgroup set remembers about one socket, keyed by the socket's address (`struct
//! sock *`, the same in every program type): who asked for a port and what, until the outcome
//! is seen. An entry is removed when its outcome is reported and, at the latest, by
//! sock_release; the LRU bound only matters for sockets no release hook sees (kernel sockets).
//! Socket storage (`BPF_MAP_TYPE_SK_STORAGE`) would free itself, but creating it allocates:
//! it cost ~1.5 us per UDP socket and per connect(), an LRU entry ~0.2 us.
//!
//! The commonest mark, "a UDP socket created while tracing, no port yet" (`fresh`), is not an
//! LRU entry but the socket's address in one slot of a direct-mapped array: every UDP socket
//! gets one, and a slot write and compare cost a few ns where an LRU insert, lookup and delete
//! cost a few hundred.
//!
//! Without syscall exit tracepoints some outcomes are not visible when they happen: a failed
//! bind(0), the port a UDP connect() autobound, and (without the sendmsg hooks) the port a UDP
//! send autobound. The request is kept here and settled the next time the socket passes a
//! hook (bind, connect, sendmsg, close), reported with the time it was made.

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::bpf_probe_read_kernel,
    macros::map,
    maps::{Array, LruHashMap},
};
use port_trace_common::{Family, HookId, Op, Proto, Stat, layout};

use crate::{
    OFFSETS,
    emit::{Owner, count, emit_owned, ipv4, ipv6_words},
    kernel::{EADDRINUSE, EAGAIN, Sock},
    pending::Pending,
};

/// Where a socket stands.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A request (`Watch::pending`) whose outcome is not known yet.
    Asked = 2,
    /// Nothing more to report for this socket.
    Done = 3,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Watch {
    pub owner: Owner,
    pub pending: Pending,
    pub state: State,
}

/// Sockets with an open request or a fresh mark. Sized for the sockets that hold one at once
/// (UDP sockets created while tracing that have not sent yet, requests in flight): ~5 MiB.
#[map]
static WATCHES: LruHashMap<u64, Watch> = LruHashMap::with_max_entries(32768, 0);

/// The key of a socket: its `struct sock` address (a `bpf_sock` pointer from any context).
#[inline(always)]
fn key(sk: *const bpf_sock) -> u64 {
    sk as u64
}

/// Slots of the fresh-socket table: 512 KiB. Two fresh sockets whose addresses share a slot
/// cannot both be held: the later one evicts the earlier, which is counted as unresolved.
const FRESH_SLOTS: u32 = 1 << 16;

/// UDP sockets created while tracing that have no port yet, by the slot of their address; 0
/// is an empty slot. A UDP socket is in it from sock_create until the first hook that sees it
/// (bind, connect, sendmsg, close), which takes it out; a fresh socket has no `WATCHES` entry.
#[map]
static FRESH: Array<u64> = Array::with_max_entries(FRESH_SLOTS, 0);

/// A socket's address as a number, and its fresh-table slot (the address hashed, Fibonacci, so
/// that slab neighbours spread over the table). The verifier forbids arithmetic on a socket
/// pointer, so the number is copied out of the stack slot holding the pointer.
#[inline(always)]
fn addr_and_slot(sk: *const bpf_sock) -> Option<(u64, u32)> {
    let held = sk;
    // SAFETY: reads the 8 bytes of `held`, a live local.
    let addr: u64 = unsafe { bpf_probe_read_kernel(core::ptr::addr_of!(held).cast()).ok()? };
    let slot = ((addr >> 6).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as u32 & (FRESH_SLOTS - 1);
    Some((addr, slot))
}

/// Marks `sk` fresh.
#[inline(always)]
pub fn mark_fresh(sk: *const bpf_sock) {
    let Some((addr, slot)) = addr_and_slot(sk) else {
        return;
    };
    if let Some(p) = FRESH.get_ptr_mut(slot) {
        // SAFETY: `p` is an array slot, valid while the program runs. Plain 8-byte stores and
        // loads: a race between two CPUs on one slot can at worst lose or miscount one mark.
        unsafe {
            if *p != 0 && *p != addr {
                count(Stat::Unresolved);
            }
            *p = addr;
        }
    }
}

/// Whether `sk` was fresh; it is not any more.
#[inline(always)]
pub fn take_fresh(sk: *const bpf_sock) -> bool {
    let Some((addr, slot)) = addr_and_slot(sk) else {
        return false;
    };
    let Some(p) = FRESH.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: as in `mark_fresh`.
    unsafe {
        if *p != addr {
            return false;
        }
        *p = 0;
    }
    true
}

/// The socket's watch, if it has one.
#[inline(always)]
pub fn get(sk: *const bpf_sock) -> Option<&'static mut Watch> {
    // SAFETY: the value lives until deleted, and only the programs of this socket's own
    // calls, one at a time (most under the socket lock), change or delete it.
    WATCHES
        .get_ptr_mut(key(sk))
        .and_then(|p| unsafe { p.as_mut() })
}

/// Drops the socket's watch.
#[inline(always)]
pub fn forget(sk: *const bpf_sock) {
    let _ = WATCHES.remove(key(sk));
}

/// The socket's local port (host order) and address, as the event reports them, from a
/// `bpf_sock` whose source fields the program may read (not sock_create/sock_release).
#[inline(always)]
pub fn local(sk: *const bpf_sock, family: u8) -> (u16, [u8; 16]) {
    // SAFETY: `sk` is a socket the verifier checked; each field is read once.
    unsafe {
        let port = core::ptr::read_volatile(core::ptr::addr_of!((*sk).src_port)) as u16;
        let addr = if family == Family::Inet as u8 {
            ipv4(core::ptr::read_volatile(core::ptr::addr_of!((*sk).src_ip4)).to_ne_bytes())
        } else {
            ipv6_words([
                core::ptr::read_volatile(core::ptr::addr_of!((*sk).src_ip6[0])),
                core::ptr::read_volatile(core::ptr::addr_of!((*sk).src_ip6[1])),
                core::ptr::read_volatile(core::ptr::addr_of!((*sk).src_ip6[2])),
                core::ptr::read_volatile(core::ptr::addr_of!((*sk).src_ip6[3])),
            ])
        };
        (port, addr)
    }
}

/// Why a request is settled: a connect() tells a deferred bind (`IP_BIND_ADDRESS_NO_PORT`) from
/// a failed one; another bind, a send or the close do not.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The socket's owner proceeded to connect() it.
    Connecting,
    /// It is bound or sent from again, or closed.
    Otherwise,
}

/// The local port and address of a cgroup sock program's socket (its context is the `struct
/// sock`), read through the kernel's layout: sock_release may not read them from the context.
#[inline(always)]
pub fn local_of_ctx(sk: *const bpf_sock, family: u8) -> Option<(u16, [u8; 16])> {
    let o = OFFSETS.load();
    if !o.has(layout::SOCK) {
        return None;
    }
    let sock = Sock::new(sk as u64, &o);
    Some((sock.num()?, sock.local_addr(family, false)))
}

/// Reports the outcome of an open request from what the socket shows now (`local`: its port
/// and address), and marks it done.
#[inline(always)]
pub fn settle(w: &mut Watch, seen: Seen, hook: HookId, local: (u16, [u8; 16])) {
    if w.state != State::Asked {
        return;
    }
    w.state = State::Done;
    let mut p = w.pending;
    let (port, saddr) = local;
    let errno = match Op::try_from(p.op) {
        // A UDP connect() autobinds before it connects: a port now means it got one, none
        // means the autobind failed (inet_dgram_connect returns EAGAIN).
        Ok(Op::Autobind) if port != 0 => 0,
        Ok(Op::Autobind) => EAGAIN,
        // bind(0) got its port at post_bind, which settled it; still none means get_port
        // failed (EADDRINUSE: the error the other bind failures can't be told from here), or
        // IP_BIND_ADDRESS_NO_PORT deferred the port, which a bound address or a connect()
        // shows.
        Ok(Op::Bind) if port == 0 && seen != Seen::Connecting && saddr == [0; 16] => EADDRINUSE,
        // TCP connect() reports at TCP_CONNECT_CB or at the failed state change.
        _ => return,
    };
    if errno == 0 {
        p.saddr = saddr;
    }
    emit_owned(
        &w.owner,
        &p,
        if errno == 0 { port } else { 0 },
        errno,
        hook,
        0,
    );
}

/// A request about to be made on socket `sk` by `owner`, replacing any the socket had.
#[inline(always)]
pub fn ask(sk: *const bpf_sock, owner: Owner, pending: Pending) {
    let w = Watch {
        owner,
        pending,
        state: State::Asked,
    };
    let _ = WATCHES.insert(key(sk), &w, 0);
}

/// The protocol id of an IP protocol number, for the two this tracer follows.
#[inline(always)]
pub fn proto_of(ip_proto: u32) -> Option<u8> {
    match ip_proto {
        6 => Some(Proto::Tcp as u8),
        17 => Some(Proto::Udp as u8),
        _ => None,
    }
}
