//! The "fexit" hook set: fentry stashes the entry state of each port-choosing function,
//! fexit reports the outcome (BPF trampolines; kernel BTF needed).
//!
//! fexit reads the return value from the context slot after the arguments (works since 5.5,
//! unlike `bpf_get_func_ret`, which needs 5.17). Kernel `int` returns are 32 bits wide.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use port_trace_common::HookId;

use crate::common::{
    F_INET_CSK_GET_PORT, F_INET_HASH_CONNECT, F_INET6_HASH_CONNECT, F_UDP_LIB_GET_PORT, on_enter,
    on_exit,
};

// int inet_hash_connect(struct inet_timewait_death_row *death_row, struct sock *sk)

#[fentry(function = "inet_hash_connect")]
pub fn pt_fentry_inet_hash_connect(ctx: FEntryContext) -> i32 {
    on_enter(F_INET_HASH_CONNECT, ctx.arg::<u64>(1), 0);
    0
}

#[fexit(function = "inet_hash_connect")]
pub fn pt_fexit_inet_hash_connect(ctx: FExitContext) -> i32 {
    let sk = ctx.arg::<u64>(1);
    let ret = ctx.arg::<u64>(2) as i32;
    on_exit(
        F_INET_HASH_CONNECT,
        sk,
        ret,
        HookId::FexitInetHashConnect as u8,
    );
    0
}

// int inet6_hash_connect(struct inet_timewait_death_row *death_row, struct sock *sk)

#[fentry(function = "inet6_hash_connect")]
pub fn pt_fentry_inet6_hash_connect(ctx: FEntryContext) -> i32 {
    on_enter(F_INET6_HASH_CONNECT, ctx.arg::<u64>(1), 0);
    0
}

#[fexit(function = "inet6_hash_connect")]
pub fn pt_fexit_inet6_hash_connect(ctx: FExitContext) -> i32 {
    let sk = ctx.arg::<u64>(1);
    let ret = ctx.arg::<u64>(2) as i32;
    on_exit(
        F_INET6_HASH_CONNECT,
        sk,
        ret,
        HookId::FexitInet6HashConnect as u8,
    );
    0
}

// int inet_csk_get_port(struct sock *sk, unsigned short snum)

#[fentry(function = "inet_csk_get_port")]
pub fn pt_fentry_inet_csk_get_port(ctx: FEntryContext) -> i32 {
    on_enter(
        F_INET_CSK_GET_PORT,
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1) as u16,
    );
    0
}

#[fexit(function = "inet_csk_get_port")]
pub fn pt_fexit_inet_csk_get_port(ctx: FExitContext) -> i32 {
    let sk = ctx.arg::<u64>(0);
    let ret = ctx.arg::<u64>(2) as i32;
    on_exit(
        F_INET_CSK_GET_PORT,
        sk,
        ret,
        HookId::FexitInetCskGetPort as u8,
    );
    0
}

// int udp_lib_get_port(struct sock *sk, unsigned short snum, unsigned int hash2_nulladdr)

#[fentry(function = "udp_lib_get_port")]
pub fn pt_fentry_udp_lib_get_port(ctx: FEntryContext) -> i32 {
    on_enter(
        F_UDP_LIB_GET_PORT,
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1) as u16,
    );
    0
}

#[fexit(function = "udp_lib_get_port")]
pub fn pt_fexit_udp_lib_get_port(ctx: FExitContext) -> i32 {
    let sk = ctx.arg::<u64>(0);
    let ret = ctx.arg::<u64>(3) as i32;
    on_exit(
        F_UDP_LIB_GET_PORT,
        sk,
        ret,
        HookId::FexitUdpLibGetPort as u8,
    );
    0
}
