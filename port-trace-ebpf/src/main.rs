//! port-trace kernel side: every port the kernel picks for a socket (connect, bind(0), listen
//! autobind, UDP autobind) and every failure to pick one, as `PortEvent`s in a ring buffer.
//!
//! - `sets`: the three hook sets (cgroup, fexit, kprobe); the loader attaches one.
//! - `pending`: a request between where a set sees it and where it sees the outcome.
//! - `emit`: the ring buffer, counters, the caller's identity and the event.
//! - `kernel`: typed reads of kernel structures, user sockaddrs and syscall registers.
//!
//! The kernel behaviour all of this relies on, with its sources: docs/capture.md.
#![no_std]
#![no_main]

use aya_ebpf::Global;
use port_trace_common::{CgroupScope, KernelOffsets};

/// Fails the build unless program function `$f` is named in `port_trace_common::program`'s
/// `$list` (field `$field`), the names the loader looks programs up by.
macro_rules! program_listed {
    ($f:ident in $list:ident . $field:ident) => {
        const _: () = {
            let name = stringify!($f).as_bytes();
            let mut found = false;
            let mut i = 0;
            while i < $list.len() {
                let listed = $list[i].$field.as_bytes();
                if listed.len() == name.len() {
                    let mut j = 0;
                    while j < name.len() && listed[j] == name[j] {
                        j += 1;
                    }
                    found |= j == name.len();
                }
                i += 1;
            }
            assert!(
                found,
                concat!(stringify!($f), " is not in port_trace_common::program")
            );
        };
    };
}

mod emit;
mod kernel;
mod pending;
mod sets;

/// Set by the loader: the tracer's own process, whose sockets are not reported.
#[unsafe(no_mangle)]
static TRACER_TGID: Global<u32> = Global::new(0);

/// Set by the loader from the running kernel's BTF.
#[unsafe(no_mangle)]
static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::NONE);

/// Set by the loader: the cgroup subtree the cgroup hook set traces.
#[unsafe(no_mangle)]
static SCOPE: Global<CgroupScope> = Global::new(CgroupScope {
    id: 0,
    level: 0,
    _pad: 0,
});

/// Set by the loader when sock_ops programs may call the current-task helpers (6.10+): the
/// cgroup set then names a TCP connect's caller at TCP_CONNECT_CB. Read-only, so the verifier
/// never sees those calls on a kernel that would refuse them.
#[unsafe(no_mangle)]
static SOCK_OPS_TASK: Global<u8> = Global::new(0);

/// Wake userspace early once this many bytes wait in the ring buffer; otherwise it drains on
/// a timer. Per-event wake-ups cost 1.6-3 us each and cut connect() throughput 3-4x.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(256 * 1024);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
