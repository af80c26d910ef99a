//! The "fexit" hook set: fentry stashes the entry state of each port-choosing function,
//! fexit reports the outcome (BPF trampolines; kernel BTF needed).
//!
//! fexit reads the return value from the context slot after the arguments (works since 5.5,
//! unlike `bpf_get_func_ret`, which needs 5.17). Kernel `int` returns are 32 bits wide.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use port_trace_common::{HookId, program::PORT_FUNCTIONS};

use super::port_function::{PortFn, on_enter, on_exit};

// int inet_hash_connect(struct inet_timewait_death_row *death_row, struct sock *sk)

#[fentry(function = "inet_hash_connect")]
pub fn pt_fentry_inet_hash_connect(ctx: FEntryContext) -> i32 {
    on_enter(PortFn::InetHashConnect, ctx.arg::<u64>(1), 0);
    0
}
program_listed!(pt_fentry_inet_hash_connect in PORT_FUNCTIONS.fentry);

#[fexit(function = "inet_hash_connect")]
pub fn pt_fexit_inet_hash_connect(ctx: FExitContext) -> i32 {
    let sk = ctx.arg::<u64>(1);
    let ret = ctx.arg::<u64>(2) as i32;
    on_exit(
        PortFn::InetHashConnect,
        sk,
        ret,
        HookId::FexitInetHashConnect,
    );
    0
}
program_listed!(pt_fexit_inet_hash_connect in PORT_FUNCTIONS.fexit);

// int inet6_hash_connect(struct inet_timewait_death_row *death_row, struct sock *sk)

#[fentry(function = "inet6_hash_connect")]
pub fn pt_fentry_inet6_hash_connect(ctx: FEntryContext) -> i32 {
    on_enter(PortFn::Inet6HashConnect, ctx.arg::<u64>(1), 0);
    0
}
program_listed!(pt_fentry_inet6_hash_connect in PORT_FUNCTIONS.fentry);

#[fexit(function = "inet6_hash_connect")]
pub fn pt_fexit_inet6_hash_connect(ctx: FExitContext) -> i32 {
    let sk = ctx.arg::<u64>(1);
    let ret = ctx.arg::<u64>(2) as i32;
    on_exit(
        PortFn::Inet6HashConnect,
        sk,
        ret,
        HookId::FexitInet6HashConnect,
    );
    0
}
program_listed!(pt_fexit_inet6_hash_connect in PORT_FUNCTIONS.fexit);

// int inet_csk_get_port(struct sock *sk, unsigned short snum)

#[fentry(function = "inet_csk_get_port")]
pub fn pt_fentry_inet_csk_get_port(ctx: FEntryContext) -> i32 {
    on_enter(
        PortFn::InetCskGetPort,
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1) as u16,
    );
    0
}
program_listed!(pt_fentry_inet_csk_get_port in PORT_FUNCTIONS.fentry);

#[fexit(function = "inet_csk_get_port")]
pub fn pt_fexit_inet_csk_get_port(ctx: FExitContext) -> i32 {
    let sk = ctx.arg::<u64>(0);
    let ret = ctx.arg::<u64>(2) as i32;
    on_exit(PortFn::InetCskGetPort, sk, ret, HookId::FexitInetCskGetPort);
    0
}
program_listed!(pt_fexit_inet_csk_get_port in PORT_FUNCTIONS.fexit);

// int udp_lib_get_port(struct sock *sk, unsigned short snum, unsigned int hash2_nulladdr)

#[fentry(function = "udp_lib_get_port")]
pub fn pt_fentry_udp_lib_get_port(ctx: FEntryContext) -> i32 {
    on_enter(
        PortFn::UdpLibGetPort,
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1) as u16,
    );
    0
}
program_listed!(pt_fentry_udp_lib_get_port in PORT_FUNCTIONS.fentry);

#[fexit(function = "udp_lib_get_port")]
pub fn pt_fexit_udp_lib_get_port(ctx: FExitContext) -> i32 {
    let sk = ctx.arg::<u64>(0);
    let ret = ctx.arg::<u64>(3) as i32;
    on_exit(PortFn::UdpLibGetPort, sk, ret, HookId::FexitUdpLibGetPort);
    0
}
program_listed!(pt_fexit_udp_lib_get_port in PORT_FUNCTIONS.fexit);
