//! The fexit hook set (preferred): fentry + fexit on each port-choosing function, through BPF
//! trampolines attached by BTF id of the running kernel. It sees the port and the exact return
//! value at the source, and the port-search latency.

use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit},
};
use port_trace_common::program::PORT_FUNCTIONS;

use super::{AttachError, Attached, not_attached, port_function::FunctionHooks, program, rejected};
use crate::kernel::probe::KernelSupport;

pub(super) const HOOKS: FunctionHooks = FunctionHooks {
    tcp_connect: "fentry+fexit/inet_hash_connect, fentry+fexit/inet6_hash_connect",
    csk_get_port: "fentry+fexit/inet_csk_get_port",
    udp_get_port: "fentry+fexit/udp_lib_get_port",
};

/// What stops the fexit set on this kernel.
pub(super) fn missing(k: &KernelSupport) -> Vec<String> {
    let mut why = Vec::new();
    if !k.fentry.ok {
        why.push(format!("fentry/fexit: {}", k.fentry.note));
    }
    why.extend(super::port_function::sock_layout_missing(k));
    why
}

pub(super) fn attach(ebpf: &mut Ebpf) -> Result<Attached, AttachError> {
    let btf = Btf::from_sys_fs().map_err(AttachError::Btf)?;
    let mut programs = Vec::new();
    for f in PORT_FUNCTIONS {
        // fentry first: an fexit without its entry state reports nothing.
        let target = format!("fentry/{}", f.function);
        let prog: &mut FEntry = program(ebpf, f.fentry)?;
        prog.load(f.function, &btf).map_err(rejected(f.fentry))?;
        prog.attach().map_err(not_attached(f.fentry, &target))?;
        programs.push(target);

        let target = format!("fexit/{}", f.function);
        let prog: &mut FExit = program(ebpf, f.fexit)?;
        prog.load(f.function, &btf).map_err(rejected(f.fexit))?;
        prog.attach().map_err(not_attached(f.fexit, &target))?;
        programs.push(target);
    }
    Ok(Attached {
        programs,
        cgroup: None,
        note: None,
    })
}
