//! A port request in progress, from where a hook set first sees it to where it learns the
//! outcome. The fexit and kprobe sets keep it per thread here (one thread is in at most one
//! syscall at a time); the cgroup set keeps it in the socket's storage (`sets::cgroup::watch`).

use aya_ebpf::{macros::map, maps::LruHashMap};

/// What a thread is about to ask the kernel for; the event fields that are known before the
/// port is.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    /// `struct sock *` whose port is read back at the exit (0 when not needed).
    pub sk: u64,
    /// fexit/kprobe: `bpf_ktime_get_ns()` at the function's entry.
    pub ts: u64,
    /// cgroup: `bpf_ktime_get_boot_ns()` when the request was made, the event's time when its
    /// outcome is learned later (0: the event's time is when it is reported).
    pub asked_ns: u64,
    /// Local address; for fexit/kprobe the one at entry (reported on failure: the kernel resets
    /// it afterwards).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host order.
    pub dport: u16,
    /// `Op`, `Proto`, `Family` ids.
    pub op: u8,
    pub proto: u8,
    pub family: u8,
    pub has_daddr: u8,
    /// fexit/kprobe: the `PortFn` whose entry made this.
    pub func: u8,
}

impl Pending {
    /// A request with nothing but its op, protocol and family known yet.
    #[inline(always)]
    pub const fn new(op: u8, proto: u8, family: u8) -> Pending {
        Pending {
            sk: 0,
            ts: 0,
            asked_ns: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            dport: 0,
            op,
            proto,
            family,
            has_daddr: 0,
            func: 0,
        }
    }
}

#[map]
pub static PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(16384, 0);

/// Records `p` as thread `tid`'s request, replacing any older one.
#[inline(always)]
pub fn save(tid: u32, p: &Pending) {
    let _ = PENDING.insert(tid, p, 0);
}

/// A copy of thread `tid`'s request, left in place.
#[inline(always)]
pub fn peek(tid: u32) -> Option<Pending> {
    // SAFETY: the value is copied out at once; only this thread writes its own entry.
    unsafe { PENDING.get(tid) }.copied()
}

/// Thread `tid`'s request, removed.
#[inline(always)]
pub fn take(tid: u32) -> Option<Pending> {
    let p = peek(tid)?;
    forget(tid);
    Some(p)
}

#[inline(always)]
pub fn forget(tid: u32) {
    let _ = PENDING.remove(tid);
}
