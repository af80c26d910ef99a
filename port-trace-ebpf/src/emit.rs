//! Reporting: the ring buffer and the `STATS` counters, the caller's identity, and the event
//! written for each port choice or failure.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use port_trace_common::{HookId, PortEvent, Stat};

use crate::{OFFSETS, TRACER_TGID, WAKEUP_BYTES, kernel::Task, pending::Pending};

/// Events for userspace; the loader sizes it (`--ring-bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU counters, indexed by `Stat`.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

#[inline(always)]
pub fn count(which: Stat) {
    if let Some(p) = STATS.get_ptr_mut(which as u32) {
        // SAFETY: `p` is this CPU's slot, which the map keeps alive while the program runs; a
        // program nested on this CPU can at worst make the plain increment lose a count.
        unsafe { *p += 1 };
    }
}

/// The thread making the current syscall.
#[derive(Clone, Copy)]
pub struct Caller {
    pub tgid: u32,
    pub tid: u32,
}

/// The current thread, or `None` for the tracer's own process, whose sockets are not reported.
#[inline(always)]
pub fn current() -> Option<Caller> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == TRACER_TGID.load() {
        return None;
    }
    Some(Caller {
        tgid,
        tid: id as u32,
    })
}

/// Who asked for a port, as the event reports it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Owner {
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub netns: u32,
    pub comm: [u8; 16],
}

impl Owner {
    /// The calling task's identity; only for programs that run in its process context.
    #[inline(always)]
    pub fn of(c: Caller) -> Owner {
        let o = OFFSETS.load();
        Owner {
            // SAFETY: the helper takes no arguments and reads the current task's cgroup.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            tgid: c.tgid,
            tid: c.tid,
            uid: bpf_get_current_uid_gid() as u32,
            netns: Task::current(&o).netns(),
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        }
    }
}

/// Reports `p` for the calling thread: port on success, errno on failure. `latency_ns` is 0
/// where the hook set cannot measure the port search.
#[inline(always)]
pub fn emit(c: Caller, p: &Pending, port: u16, errno: i32, hook: HookId, latency_ns: u64) {
    emit_owned(&Owner::of(c), p, port, errno, hook, latency_ns);
}

/// Like `emit`, with the identity given: usable where current-task helpers are not. A full
/// ring buffer is counted (`Stat::Lost`), never silent.
#[inline(always)]
pub fn emit_owned(w: &Owner, p: &Pending, port: u16, errno: i32, hook: HookId, latency_ns: u64) {
    let Some(mut entry) = EVENTS.reserve::<PortEvent>(0) else {
        count(Stat::Lost);
        return;
    };
    let ts_ns = if p.asked_ns != 0 {
        p.asked_ns
    } else {
        now_boot_ns()
    };
    let ev = PortEvent {
        ts_ns,
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
        hook: hook as u8,
        has_daddr: p.has_daddr,
        _pad: [0; 3],
        comm: w.comm,
        latency_ns,
    };
    entry.write(ev);
    // Waking the reader per event costs microseconds per connect(); userspace drains on a
    // timer and is woken early only once WAKEUP_BYTES wait (docs/capture.md).
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

/// CLOCK_BOOTTIME, the clock of `PortEvent::ts_ns`.
#[inline(always)]
pub fn now_boot_ns() -> u64 {
    // SAFETY: the helper takes no arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// An IPv4 address as events store it: the first 4 bytes, network order.
#[inline(always)]
pub fn ipv4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = a[0];
    out[1] = a[1];
    out[2] = a[2];
    out[3] = a[3];
    out
}

/// An IPv4 address of an IPv6 socket, v4-mapped (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[10] = 0xff;
    out[11] = 0xff;
    out[12..].copy_from_slice(&a);
    out
}

/// An IPv6 address held as four network-order u32 words (the BPF context layout).
#[inline(always)]
pub fn ipv6_words(w: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}
