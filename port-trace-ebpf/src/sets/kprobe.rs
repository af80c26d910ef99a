//! The "kprobe" hook set: a kprobe stashes the entry arguments of each port-choosing function
//! per thread, the kretprobe reports the outcome (it sees only the return value).

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use port_trace_common::{HookId, program::PORT_FUNCTIONS};

use super::port_function::{PortFn, on_enter, on_exit};

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

// int inet_hash_connect(struct inet_timewait_death_row *death_row, struct sock *sk)

#[kprobe(function = "inet_hash_connect")]
pub fn pt_kprobe_inet_hash_connect(ctx: ProbeContext) -> u32 {
    on_enter(PortFn::InetHashConnect, arg(&ctx, 1), 0);
    0
}
program_listed!(pt_kprobe_inet_hash_connect in PORT_FUNCTIONS.kprobe);

#[kretprobe(function = "inet_hash_connect")]
pub fn pt_kretprobe_inet_hash_connect(ctx: RetProbeContext) -> u32 {
    on_exit(
        PortFn::InetHashConnect,
        0,
        ctx.ret::<i32>(),
        HookId::KretprobeInetHashConnect,
    );
    0
}
program_listed!(pt_kretprobe_inet_hash_connect in PORT_FUNCTIONS.kretprobe);

// int inet6_hash_connect(struct inet_timewait_death_row *death_row, struct sock *sk)

#[kprobe(function = "inet6_hash_connect")]
pub fn pt_kprobe_inet6_hash_connect(ctx: ProbeContext) -> u32 {
    on_enter(PortFn::Inet6HashConnect, arg(&ctx, 1), 0);
    0
}
program_listed!(pt_kprobe_inet6_hash_connect in PORT_FUNCTIONS.kprobe);

#[kretprobe(function = "inet6_hash_connect")]
pub fn pt_kretprobe_inet6_hash_connect(ctx: RetProbeContext) -> u32 {
    on_exit(
        PortFn::Inet6HashConnect,
        0,
        ctx.ret::<i32>(),
        HookId::KretprobeInet6HashConnect,
    );
    0
}
program_listed!(pt_kretprobe_inet6_hash_connect in PORT_FUNCTIONS.kretprobe);

// int inet_csk_get_port(struct sock *sk, unsigned short snum)

#[kprobe(function = "inet_csk_get_port")]
pub fn pt_kprobe_inet_csk_get_port(ctx: ProbeContext) -> u32 {
    on_enter(PortFn::InetCskGetPort, arg(&ctx, 0), arg(&ctx, 1) as u16);
    0
}
program_listed!(pt_kprobe_inet_csk_get_port in PORT_FUNCTIONS.kprobe);

#[kretprobe(function = "inet_csk_get_port")]
pub fn pt_kretprobe_inet_csk_get_port(ctx: RetProbeContext) -> u32 {
    on_exit(
        PortFn::InetCskGetPort,
        0,
        ctx.ret::<i32>(),
        HookId::KretprobeInetCskGetPort,
    );
    0
}
program_listed!(pt_kretprobe_inet_csk_get_port in PORT_FUNCTIONS.kretprobe);

// int udp_lib_get_port(struct sock *sk, unsigned short snum, unsigned int hash2_nulladdr)

#[kprobe(function = "udp_lib_get_port")]
pub fn pt_kprobe_udp_lib_get_port(ctx: ProbeContext) -> u32 {
    on_enter(PortFn::UdpLibGetPort, arg(&ctx, 0), arg(&ctx, 1) as u16);
    0
}
program_listed!(pt_kprobe_udp_lib_get_port in PORT_FUNCTIONS.kprobe);

#[kretprobe(function = "udp_lib_get_port")]
pub fn pt_kretprobe_udp_lib_get_port(ctx: RetProbeContext) -> u32 {
    on_exit(
        PortFn::UdpLibGetPort,
        0,
        ctx.ret::<i32>(),
        HookId::KretprobeUdpLibGetPort,
    );
    0
}
program_listed!(pt_kretprobe_udp_lib_get_port in PORT_FUNCTIONS.kretprobe);
