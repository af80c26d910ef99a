//! The cgroup hook set, for kernels without kprobes or BPF trampolines: cgroup sock and
//! sock_addr programs and sock_ops on a cgroup v2 directory (its whole subtree is traced), plus
//! the `sock:inet_sock_set_state` tracepoint, attached raw. No syscall tracepoint: enabling one taxes every
//! system call on the host. How each path is seen: docs/capture.md.

use std::{
    fs,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::Path,
};

use aya::{
    Ebpf,
    maps::CgroupArray,
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, RawTracePoint, SockOps},
};
use port_trace_common::{
    CgroupScope, layout,
    program::{self, CgroupKind},
};

use super::{AttachError, Attached, PathCoverage, not_attached, program, rejected};
use crate::kernel::probe::KernelSupport;

/// What stops the cgroup set on this kernel.
pub(super) fn missing(k: &KernelSupport) -> Vec<String> {
    let need = &crate::kernel::privilege::CGROUP;
    if !k.caps.meets(need) {
        return vec![format!(
            "needs {}",
            crate::kernel::privilege::describe(&[need])
        )];
    }
    let mut why = Vec::new();
    if k.cgroup2.is_none() {
        why.push(
            "no cgroup v2 mount (mount one: mount -t cgroup2 none /sys/fs/cgroup/unified)".into(),
        );
    }
    for (name, f) in [
        ("sock_ops", &k.sock_ops),
        ("cgroup_sock", &k.cgroup_sock),
        ("cgroup_sock_addr", &k.cgroup_sock_addr),
        ("raw_tracepoint", &k.raw_tracepoint),
    ] {
        if !f.ok {
            why.push(format!("{name} programs: {}", f.note));
        }
    }
    if !k.missing_tracepoints.is_empty() {
        why.push(format!(
            "missing tracepoint {}",
            k.missing_tracepoints.join(", ")
        ));
    }
    if !k.layout.as_ref().is_some_and(|l| l.has(layout::SOCK)) {
        why.push("kernel BTF lacks the struct sock layout".into());
    }
    why
}

/// The subtree the set will trace, for its tracepoint: `dir`'s cgroup id (its inode number on
/// cgroup v2) and depth below the mount. The whole host (level 0) when `dir` is the mount
/// root, absent or unreadable; an unusable `dir` is refused at attach.
pub fn scope(k: &KernelSupport, dir: Option<&Path>) -> CgroupScope {
    let (Some(dir), Some(root)) = (dir, k.cgroup2.as_deref()) else {
        return CgroupScope::default();
    };
    let (Ok(dir), Ok(root)) = (dir.canonicalize(), root.canonicalize()) else {
        return CgroupScope::default();
    };
    let (Ok(rel), Ok(meta)) = (dir.strip_prefix(&root), fs::metadata(&dir)) else {
        return CgroupScope::default();
    };
    CgroupScope {
        id: meta.ino(),
        level: rel.components().count() as u32,
        _pad: 0,
    }
}

/// Whether an open directory is on a cgroup v2 file system.
fn is_cgroup2(dir: &fs::File) -> bool {
    nix::sys::statfs::fstatfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Attaches sock_ops and the cgroup programs to the cgroup v2 directory (`dir`, else the
/// root of the cgroup v2 mount), and the tracepoints globally.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    k: &KernelSupport,
    dir: Option<&Path>,
    udp_send_hooks: bool,
) -> Result<Attached, AttachError> {
    let dir = dir
        .map(Path::to_path_buf)
        .or_else(|| k.cgroup2.clone())
        .ok_or(AttachError::NoCgroup2)?;
    let cg = fs::File::open(&dir).map_err(|source| AttachError::Cgroup {
        path: dir.clone(),
        source,
    })?;
    // The kernel's own answer for another directory is "Bad file descriptor".
    if !is_cgroup2(&cg) {
        return Err(AttachError::NotCgroup2 { path: dir });
    }
    let target = dir.display().to_string();
    let mut programs = Vec::new();
    // Single: bpf_link_create rejects the multi flag, and links stack anyway.
    let mode = CgroupAttachMode::Single;
    for p in program::CGROUP
        .iter()
        .filter(|p| udp_send_hooks || !p.opt_in)
    {
        let attached = match p.kind {
            CgroupKind::SockAddr => {
                let prog: &mut CgroupSockAddr = program(ebpf, p.name)?;
                prog.load().map_err(rejected(p.name))?;
                prog.attach(&cg, mode).map(drop)
            }
            CgroupKind::Sock => {
                let prog: &mut CgroupSock = program(ebpf, p.name)?;
                prog.load().map_err(rejected(p.name))?;
                prog.attach(&cg, mode).map(drop)
            }
            CgroupKind::SockOps => {
                let prog: &mut SockOps = program(ebpf, p.name)?;
                prog.load().map_err(rejected(p.name))?;
                prog.attach(&cg, mode).map(drop)
            }
        };
        attached.map_err(not_attached(p.name, &target))?;
        programs.push(p.shown.to_string());
    }
    // The tracepoint's scope (`SCOPE_DIR`, read when `--cgroup` narrows the trace).
    if scope(k, Some(&dir)).level != 0 {
        let map_err = |source| AttachError::Map {
            name: "SCOPE_DIR",
            source: Box::new(source),
        };
        let map = ebpf
            .map_mut("SCOPE_DIR")
            .ok_or_else(|| AttachError::Missing("map SCOPE_DIR".into()))?;
        let mut scope_dir = CgroupArray::try_from(map).map_err(map_err)?;
        scope_dir.set(0, cg.as_fd(), 0).map_err(map_err)?;
    }
    for p in program::RAW_TRACEPOINTS {
        let prog: &mut RawTracePoint = program(ebpf, p.name)?;
        prog.load().map_err(rejected(p.name))?;
        prog.attach(p.event)
            .map_err(not_attached(p.name, p.event))?;
        programs.push(p.shown.to_string());
    }
    Ok(Attached {
        programs,
        cgroup: Some(dir),
        note: Some(if udp_send_hooks {
            "--udp-send-hooks: every unconnected UDP send on the host runs cgroup sendmsg4/6"
        } else {
            "a UDP port autobound on send is reported when its socket closes (--udp-send-hooks: at the send, at a cost to every unconnected UDP send)"
        }),
    })
}

pub(super) fn coverage(k: &KernelSupport) -> Vec<PathCoverage> {
    let has = |group| k.layout.as_ref().is_some_and(|l| l.has(group));
    let set_state = (k
        .missing_tracepoints
        .iter()
        .any(|m| m == "sock/inet_sock_set_state"))
    .then(|| "missing tracepoint sock/inet_sock_set_state".to_string());
    let row = PathCoverage::new;
    vec![
        row(
            "tcp connect (v4/v6)",
            "cgroup/connect4+6, sock_ops/tcp_connect_cb",
            None,
        ),
        row(
            "tcp connect failure EADDRNOTAVAIL (inferred)",
            "sock/inet_sock_set_state",
            set_state.clone(),
        ),
        row(
            "tcp+udp bind(0) (v4/v6)",
            "cgroup/bind4+6, cgroup/post_bind4+6",
            None,
        ),
        row(
            "bind(0) failure EADDRINUSE (inferred, at next use)",
            "cgroup/bind4+6, cgroup/sock_release",
            None,
        ),
        row(
            "tcp listen() autobind (v4/v6)",
            "sock/inet_sock_set_state, sock_ops/tcp_listen_cb",
            set_state.clone(),
        ),
        row(
            "listen() failure EADDRINUSE (inferred)",
            "sock/inet_sock_set_state",
            set_state,
        ),
        row(
            "udp autobind on connect(), EAGAIN inferred (at next use)",
            "cgroup/connect4+6, cgroup/sock_release",
            (!has(layout::SOCK)).then(|| "kernel BTF lacks the struct sock layout".to_string()),
        ),
        row(
            "udp autobind on sendto/sendmsg/sendmmsg (v4/v6), at close",
            "cgroup/sock_create, cgroup/sock_release; at the send with --udp-send-hooks: cgroup/sendmsg4+6",
            (!has(layout::SOCK)).then(|| "kernel BTF lacks the struct sock layout".to_string()),
        ),
        row(
            "udp autobind failure EAGAIN on send",
            "-",
            Some(
                "no hook runs after a failed autobind on send; use the fexit or kprobe set".into(),
            ),
        ),
        row(
            "network namespace of each event",
            "task->nsproxy->net_ns",
            (!has(layout::NETNS)).then(|| "kernel BTF lacks the nsproxy layout".to_string()),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cgroup2_directories_are_cgroups() {
        assert!(!is_cgroup2(&fs::File::open("/tmp").unwrap()));
        if let Some(root) = crate::kernel::probe::cgroup2_mount() {
            assert!(is_cgroup2(&fs::File::open(root).unwrap()));
        }
    }
}
