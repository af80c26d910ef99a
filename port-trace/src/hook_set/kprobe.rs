//! The kprobe hook set, for kernels without BPF trampolines: kprobe + kretprobe on each
//! port-choosing function; the kprobe stashes the arguments per thread, since the kretprobe
//! sees only the return value.

use aya::{Ebpf, programs::KProbe};
use port_trace_common::program::PORT_FUNCTIONS;

use super::{AttachError, Attached, not_attached, port_function::FunctionHooks, program, rejected};
use crate::kernel::probe::KernelSupport;

pub(super) const HOOKS: FunctionHooks = FunctionHooks {
    tcp_connect: "kprobe+kretprobe/inet_hash_connect, kprobe+kretprobe/inet6_hash_connect",
    csk_get_port: "kprobe+kretprobe/inet_csk_get_port",
    udp_get_port: "kprobe+kretprobe/udp_lib_get_port",
};

/// What stops the kprobe set on this kernel.
pub(super) fn missing(k: &KernelSupport) -> Vec<String> {
    let mut why = Vec::new();
    if !k.kprobes.ok {
        why.push(format!("kprobes: {}", k.kprobes.note));
    }
    why.extend(super::port_function::sock_layout_missing(k));
    why
}

pub(super) fn attach(ebpf: &mut Ebpf) -> Result<Attached, AttachError> {
    let mut programs = Vec::new();
    for f in PORT_FUNCTIONS {
        for (kind, name) in [("kprobe", f.kprobe), ("kretprobe", f.kretprobe)] {
            let target = format!("{kind}/{}", f.function);
            let prog: &mut KProbe = program(ebpf, name)?;
            prog.load().map_err(rejected(name))?;
            prog.attach(f.function, 0)
                .map_err(not_attached(name, &target))?;
            programs.push(target);
        }
    }
    Ok(Attached {
        programs,
        cgroup: None,
        note: None,
    })
}
