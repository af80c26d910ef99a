//! What the cgroup set remembers about one socket, in the socket's own BPF storage
//! (`BPF_MAP_TYPE_SK_STORAGE`): the kernel frees it with the socket, and a socket without it
//! costs one pointer test in every program that looks.
//!
//! Without syscall exit tracepoints some outcomes are not visible when they happen: a failed
//! bind(0), and the port a UDP connect() autobound. The request is kept here and settled the
//! next time the socket passes a hook (bind, connect, sendmsg, close), reported with the time
//! it was made.

use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    btf_maps::SkStorage,
    helpers::generated::{bpf_sk_storage_delete, bpf_sk_storage_get},
    macros::btf_map,
};
use port_trace_common::{Family, HookId, Op, Proto, layout};

use crate::{
    OFFSETS,
    emit::{Owner, emit_owned, ipv4, ipv6_words},
    kernel::{EADDRINUSE, EAGAIN, Sock},
    pending::Pending,
};

/// Where a socket stands.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A UDP socket created while tracing, with no port yet: its first sendmsg with a
    /// destination reports the autobind.
    Fresh = 1,
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

#[btf_map]
static SOCKETS: SkStorage<Watch> = SkStorage::new();

fn map() -> *mut core::ffi::c_void {
    core::ptr::from_ref(&SOCKETS).cast_mut().cast()
}

/// The socket's watch, if it has one. `sk` is the program's socket: a `bpf_sock` from a
/// sock_addr or sock_ops context, or a cgroup sock program's context itself.
#[inline(always)]
pub fn get(sk: *mut bpf_sock) -> Option<&'static mut Watch> {
    // SAFETY: the helper checks the socket; a non-null result points into the socket's
    // storage, which lives as long as the socket and so outlasts this program run.
    unsafe {
        bpf_sk_storage_get(map(), sk.cast(), core::ptr::null_mut(), 0)
            .cast::<Watch>()
            .as_mut()
    }
}

/// Gives the socket the watch `w`, replacing any it had.
#[inline(always)]
pub fn set(sk: *mut bpf_sock, w: &Watch) {
    // SAFETY: as `get`; the kernel copies `w` into new storage when there is none.
    let p = unsafe {
        bpf_sk_storage_get(
            map(),
            sk.cast(),
            core::ptr::from_ref(w).cast_mut().cast(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
        .cast::<Watch>()
    };
    if !p.is_null() {
        // SAFETY: as `get`.
        unsafe { *p = *w };
    }
}

/// Drops the socket's watch (sock_addr and sock_ops programs only: cgroup sock programs may
/// not delete, they mark the watch `Done`).
#[inline(always)]
pub fn forget(sk: *mut bpf_sock) {
    // SAFETY: the helper checks the socket and the map.
    unsafe { bpf_sk_storage_delete(map(), sk.cast()) };
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

/// Why a request is settled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The socket is being bound, connected or sent from again.
    Again,
    /// The socket's owner proceeded to connect() it.
    Connecting,
    /// The socket is being closed.
    Closing,
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

/// A request about to be made on socket `sk` by `owner`.
#[inline(always)]
pub fn ask(sk: *mut bpf_sock, owner: Owner, pending: Pending) {
    set(
        sk,
        &Watch {
            owner,
            pending,
            state: State::Asked,
        },
    );
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
