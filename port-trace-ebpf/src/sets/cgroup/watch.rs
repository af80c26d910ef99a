//! What the cgroup set remembers about one socket, keyed by the socket's address (`struct
//! sock *`, the same in every program type): who asked for a port and what, until the outcome
//! is seen. An entry is removed when its outcome is reported and, at the latest, by
//! sock_release; the LRU bound only matters for sockets no release hook sees (kernel sockets).
//! Socket storage (`BPF_MAP_TYPE_SK_STORAGE`) would free itself, but creating it allocates:
//! it cost ~1.5 us per UDP socket and per connect(), an LRU entry ~0.2 us.
//!
//! The two commonest marks are not LRU entries but the socket's address in one slot of a
//! direct-mapped array (`MARKS`), with the mark in its low bits: "a UDP socket created while
//! tracing, no port yet" (`Mark::Fresh`, every UDP socket gets it) and, where sock_ops may read
//! the current task, "a TCP connect() the kernel picks a port for" (`Mark::Connecting`). A slot
//! write and compare cost a few ns where an LRU insert, lookup and delete cost a few hundred.

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

/// Slots of the mark table: 512 KiB. Two marked sockets whose addresses share a slot cannot
/// both be held: the later one evicts the earlier, which is counted as unresolved.
const MARK_SLOTS: u32 = 1 << 16;

/// What a socket's slot in `MARKS` says about it. A `struct sock` is at least 8-byte aligned,
/// so the mark fits in the address's low bits.
#[repr(u64)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A UDP socket created while tracing, with no port yet: its first sendmsg (opt-in hooks)
    /// or its release reports the autobind.
    Fresh = 1,
    /// A TCP connect() on a socket with no port: TCP_CONNECT_CB reports the port the kernel
    /// chose, naming the caller itself.
    Connecting = 2,
}

const MARK_BITS: u64 = 0b11;

/// Marked sockets by the slot of their address; 0 is an empty slot. A socket stays marked
/// until the first hook that sees it again (bind, connect, sendmsg, TCP_CONNECT_CB, close)
/// takes the mark; a marked socket has no `WATCHES` entry.
#[map]
static MARKS: Array<u64> = Array::with_max_entries(MARK_SLOTS, 0);

/// A socket's address as a number, and its slot (the address hashed, Fibonacci, so that slab
/// neighbours spread over the table). The verifier forbids arithmetic on a socket pointer, so
/// the number is copied out of the stack slot holding the pointer.
#[inline(always)]
fn addr_and_slot(sk: *const bpf_sock) -> Option<(u64, u32)> {
    let held = sk;
    // SAFETY: reads the 8 bytes of `held`, a live local.
    let addr: u64 = unsafe { bpf_probe_read_kernel(core::ptr::addr_of!(held).cast()).ok()? };
    let slot = ((addr >> 6).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as u32 & (MARK_SLOTS - 1);
    Some((addr, slot))
}

/// Marks `sk`, replacing any mark it had.
#[inline(always)]
pub fn mark(sk: *const bpf_sock, m: Mark) {
    let Some((addr, slot)) = addr_and_slot(sk) else {
        return;
    };
    if let Some(p) = MARKS.get_ptr_mut(slot) {
        // SAFETY: `p` is an array slot, valid while the program runs. Plain 8-byte stores and
        // loads: a race between two CPUs on one slot can at worst lose or miscount one mark.
        unsafe {
            if *p != 0 && *p & !MARK_BITS != addr {
                count(Stat::Unresolved);
            }
            *p = addr | m as u64;
        }
    }
}

/// The mark `sk` had, if any; it has none any more.
#[inline(always)]
pub fn take(sk: *const bpf_sock) -> Option<Mark> {
    let (addr, slot) = addr_and_slot(sk)?;
    let p = MARKS.get_ptr_mut(slot)?;
    // SAFETY: as in `mark`.
    let v = unsafe { *p };
    if v & !MARK_BITS != addr {
        return None;
    }
    // SAFETY: as in `mark`.
    unsafe { *p = 0 };
    match v & MARK_BITS {
        1 => Some(Mark::Fresh),
        2 => Some(Mark::Connecting),
        _ => None,
    }
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

/// Who asked for `op` on this socket and what, if that request is still open; the watch is
/// dropped (its outcome is about to be reported).
#[inline(always)]
pub fn take_asked(sk: *const bpf_sock, op: Op) -> Option<(Owner, Pending)> {
    let w = get(sk)?;
    if w.state != State::Asked || w.pending.op != op as u8 {
        return None;
    }
    let asked = (w.owner, w.pending);
    forget(sk);
    Some(asked)
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
    let _ = WATCHES.insert(key(sk), w, 0);
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
