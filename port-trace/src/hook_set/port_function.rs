//! What the fexit and kprobe hook sets share: both hook the kernel functions that choose a
//! port (`port_trace_common::program::PORT_FUNCTIONS`), so they see the same paths.

use port_trace_common::layout;

use super::PathCoverage;
use crate::kernel::probe::KernelSupport;

/// The fexit and kprobe sets read `struct sock` (port, addresses, state) at the hooked
/// functions; without those offsets they see nothing.
pub(super) fn sock_layout_missing(k: &KernelSupport) -> Option<String> {
    let want = layout::SOCK | layout::SOCK_PEER;
    match &k.layout {
        Some(l) if l.has(want) => None,
        Some(l) => Some(format!(
            "kernel BTF lacks the struct sock layout ({})",
            l.problems.join("; ")
        )),
        None => Some("kernel BTF lacks the struct sock layout".into()),
    }
}

/// Program names of a hook set on the port-choosing functions, for the coverage table.
pub(super) struct FunctionHooks {
    pub tcp_connect: &'static str,
    pub csk_get_port: &'static str,
    pub udp_get_port: &'static str,
}

/// Coverage of the fexit and kprobe sets: every path goes through one of the hooked functions.
pub(super) fn coverage(k: &KernelSupport, h: &FunctionHooks) -> Vec<PathCoverage> {
    let has = |group| k.layout.as_ref().is_some_and(|l| l.has(group));
    let sock = sock_layout_missing(k);
    // udp_lib_get_port tells bind(0) from an autobind, and finds the destination, from the
    // syscall's saved registers: their layout must be known, and a way to find them.
    let syscall_regs = if !has(layout::SYSCALL_REGS) {
        Some(format!(
            "cannot tell bind(0) from an autobind: the kernel's struct pt_regs is not a layout \
             port-trace knows (x86_64, arm64; this is {})",
            std::env::consts::ARCH
        ))
    } else if !has(layout::REGS_HELPER) && !has(layout::TASK_STACK) {
        Some(
            "cannot tell bind(0) from an autobind: no bpf_task_pt_regs and no task_struct.stack"
                .into(),
        )
    } else {
        None
    };
    let row = PathCoverage::new;
    vec![
        row("tcp connect (v4/v6)", h.tcp_connect, sock.clone()),
        row(
            "tcp connect failure EADDRNOTAVAIL",
            h.tcp_connect,
            sock.clone(),
        ),
        row("tcp bind(0) (v4/v6)", h.csk_get_port, sock.clone()),
        row(
            "udp bind(0) (v4/v6)",
            h.udp_get_port,
            sock.clone().or_else(|| syscall_regs.clone()),
        ),
        row("bind(0) failure EADDRINUSE", h.csk_get_port, sock.clone()),
        row(
            "tcp listen() autobind (v4/v6)",
            h.csk_get_port,
            sock.clone(),
        ),
        row("listen() failure EADDRINUSE", h.csk_get_port, sock.clone()),
        row(
            "udp autobind on connect() (v4/v6) and EAGAIN",
            h.udp_get_port,
            sock.clone().or_else(|| syscall_regs.clone()),
        ),
        row(
            "udp autobind on sendto/sendmsg/sendmmsg (v4/v6) and EAGAIN",
            h.udp_get_port,
            sock.clone().or_else(|| syscall_regs.clone()),
        ),
        row("port-search latency of each event", h.tcp_connect, sock),
        row(
            "network namespace of each event",
            "task->nsproxy->net_ns",
            (!has(layout::NETNS)).then(|| "kernel BTF lacks the nsproxy layout".to_string()),
        ),
    ]
}
