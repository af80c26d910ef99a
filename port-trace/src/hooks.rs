//! Hook sets: which kernel programs see which port-allocation path, and which set to use.
//!
//! A hook set is a strategy. Choosing one is a pure function of the probed `KernelSupport`, so
//! `check` and `trace` agree and the choice is unit-tested without root.

use std::fmt;

use port_trace_common::layout;

use crate::probe::KernelSupport;

/// The hook sets in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookSetName {
    /// fexit on inet_hash_connect / inet_csk_get_port / udp_lib_get_port.
    Fexit,
    /// kprobe/kretprobe pairs on the same functions.
    Kprobe,
    /// sock_ops, cgroup sock/sock_addr programs and tracepoints: no kprobes or trampolines.
    Cgroup,
}

impl fmt::Display for HookSetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fexit => "fexit",
            Self::Kprobe => "kprobe",
            Self::Cgroup => "cgroup",
        })
    }
}

/// One row of the capture table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathCoverage {
    pub path: &'static str,
    /// Programs that report it; empty when this hook set cannot see it here.
    pub hooks: &'static str,
    pub seen: bool,
    pub why_not: Option<String>,
}

/// Why a hook set cannot run on this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub Vec<String>);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl HookSetName {
    pub const ALL: [HookSetName; 3] = [Self::Fexit, Self::Kprobe, Self::Cgroup];

    /// Whether this build carries programs for the hook set.
    pub fn built(&self) -> bool {
        true
    }

    /// Whether automatic selection may pick this hook set; unverified sets run only when
    /// forced with `--hooks`.
    pub fn verified(&self) -> bool {
        match self {
            // All three pass the capture tests on Debian 6.1 (`cargo xtask vm-test`); a new set
            // stays forced-only until it does.
            Self::Fexit | Self::Kprobe | Self::Cgroup => true,
        }
    }

    /// What stops this hook set on this kernel, if anything.
    pub fn availability(&self, k: &KernelSupport) -> Result<(), Unavailable> {
        let mut why = Vec::new();
        if !self.built() {
            why.push(format!(
                "the {self} hook set is not built into this version"
            ));
        }
        if !k.ringbuf.ok {
            why.push(format!("ring buffer: {}", k.ringbuf.note));
        }
        match self {
            Self::Fexit => {
                if !k.fentry.ok {
                    why.push(format!("fentry/fexit: {}", k.fentry.note));
                }
                why.extend(sock_layout_missing(k));
            }
            Self::Kprobe => {
                if !k.kprobes.ok {
                    why.push(format!("kprobes: {}", k.kprobes.note));
                }
                why.extend(sock_layout_missing(k));
            }
            Self::Cgroup => {
                if k.cgroup2.is_none() {
                    why.push(
                        "no cgroup v2 mount (mount one: mount -t cgroup2 none /sys/fs/cgroup/unified)"
                            .into(),
                    );
                }
                for (name, f) in [
                    ("sock_ops", &k.sock_ops),
                    ("cgroup_sock", &k.cgroup_sock),
                    ("cgroup_sock_addr", &k.cgroup_sock_addr),
                    ("tracepoint", &k.tracepoint),
                ] {
                    if !f.ok {
                        why.push(format!("{name} programs: {}", f.note));
                    }
                }
                if k.tracefs.is_none() {
                    why.push(
                        "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
                            .into(),
                    );
                }
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(Unavailable(why))
        }
    }

    /// Which capture paths this hook set sees on this kernel.
    pub fn coverage(&self, k: &KernelSupport) -> Vec<PathCoverage> {
        match self {
            Self::Cgroup => cgroup_coverage(k),
            Self::Fexit => function_coverage(k, &FEXIT_HOOKS),
            Self::Kprobe => function_coverage(k, &KPROBE_HOOKS),
        }
    }
}

/// The fexit and kprobe sets read `struct sock` (port, addresses, state) at the hooked
/// functions; without those offsets they see nothing.
fn sock_layout_missing(k: &KernelSupport) -> Option<String> {
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
struct FunctionHooks {
    tcp_connect: &'static str,
    csk_get_port: &'static str,
    udp_get_port: &'static str,
}

const FEXIT_HOOKS: FunctionHooks = FunctionHooks {
    tcp_connect: "fentry+fexit/inet_hash_connect, fentry+fexit/inet6_hash_connect",
    csk_get_port: "fentry+fexit/inet_csk_get_port",
    udp_get_port: "fentry+fexit/udp_lib_get_port",
};

const KPROBE_HOOKS: FunctionHooks = FunctionHooks {
    tcp_connect: "kprobe+kretprobe/inet_hash_connect, kprobe+kretprobe/inet6_hash_connect",
    csk_get_port: "kprobe+kretprobe/inet_csk_get_port",
    udp_get_port: "kprobe+kretprobe/udp_lib_get_port",
};

/// Coverage of the fexit and kprobe sets: every path goes through one of the hooked functions.
fn function_coverage(k: &KernelSupport, h: &FunctionHooks) -> Vec<PathCoverage> {
    let has = |group| k.layout.as_ref().is_some_and(|l| l.has(group));
    let sock = sock_layout_missing(k);
    // udp_lib_get_port tells bind(0) from an autobind, and finds the destination, from the
    // syscall registers; the programs read them with the x86_64 layout.
    let syscall_regs = (std::env::consts::ARCH != "x86_64").then(|| {
        format!(
            "syscall registers are read with the x86_64 layout, this is {}",
            std::env::consts::ARCH
        )
    });
    let row = |path, hooks, why: Option<String>| PathCoverage {
        path,
        hooks,
        seen: why.is_none(),
        why_not: why,
    };
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

fn cgroup_coverage(k: &KernelSupport) -> Vec<PathCoverage> {
    let has = |group| k.layout.as_ref().is_some_and(|l| l.has(group));
    let tp_missing = |names: &[&str]| -> Option<String> {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| k.missing_tracepoints.iter().any(|m| m == n))
            .collect();
        (!missing.is_empty()).then(|| format!("missing tracepoint {}", missing.join(", ")))
    };
    let layout_missing = |group, what: &str| -> Option<String> {
        (!has(group)).then(|| format!("kernel BTF lacks the {what} layout"))
    };
    let row = |path, hooks, why: Option<String>| PathCoverage {
        path,
        hooks,
        seen: why.is_none(),
        why_not: why,
    };
    vec![
        row(
            "tcp connect (v4/v6)",
            "cgroup/connect4+6, sock_ops/tcp_connect_cb",
            None,
        ),
        row(
            "tcp connect failure EADDRNOTAVAIL",
            "sock/inet_sock_set_state, syscalls/sys_exit_connect",
            tp_missing(&["sock/inet_sock_set_state", "syscalls/sys_exit_connect"]),
        ),
        row(
            "tcp+udp bind(0) (v4/v6)",
            "cgroup/bind4+6, cgroup/post_bind4+6",
            None,
        ),
        row(
            "bind(0) failure EADDRINUSE",
            "syscalls/sys_exit_bind",
            tp_missing(&["syscalls/sys_exit_bind"]),
        ),
        row(
            "tcp listen() autobind (v4/v6)",
            "sock/inet_sock_set_state, syscalls/sys_exit_listen",
            tp_missing(&["sock/inet_sock_set_state", "syscalls/sys_exit_listen"])
                .or_else(|| layout_missing(layout::SOCK, "struct sock")),
        ),
        row(
            "listen() failure EADDRINUSE",
            "syscalls/sys_exit_listen",
            tp_missing(&["sock/inet_sock_set_state", "syscalls/sys_exit_listen"]),
        ),
        row(
            "udp autobind on connect() (v4/v6) and EAGAIN",
            "cgroup/connect4+6, syscalls/sys_exit_connect",
            tp_missing(&["syscalls/sys_exit_connect"])
                .or_else(|| layout_missing(layout::SOCK, "struct sock")),
        ),
        row(
            "udp autobind on sendto/sendmsg/sendmmsg (v4/v6) and EAGAIN",
            "syscalls/sys_enter_send*, syscalls/sys_exit_send*",
            tp_missing(&[
                "syscalls/sys_enter_sendto",
                "syscalls/sys_enter_sendmsg",
                "syscalls/sys_exit_sendto",
                "syscalls/sys_exit_sendmsg",
            ])
            .or_else(|| layout_missing(layout::SOCK, "struct sock"))
            .or_else(|| layout_missing(layout::FD_WALK, "fd -> socket")),
        ),
        row(
            "network namespace of each event",
            "task->nsproxy->net_ns",
            layout_missing(layout::NETNS, "nsproxy"),
        ),
    ]
}

/// Every hook set automatic selection may use here, in order of preference (for falling back
/// when one fails to attach), or just the forced one.
pub fn candidates(k: &KernelSupport, forced: Option<HookSetName>) -> Vec<HookSetName> {
    match forced {
        Some(f) => vec![f],
        None => HookSetName::ALL
            .into_iter()
            .filter(|h| h.verified() && h.availability(k).is_ok())
            .collect(),
    }
}

/// The first usable hook set, or the reasons none is.
pub fn choose(
    k: &KernelSupport,
    forced: Option<HookSetName>,
) -> Result<HookSetName, Vec<(HookSetName, Unavailable)>> {
    let candidates: Vec<HookSetName> = match forced {
        Some(f) => vec![f],
        None => HookSetName::ALL.to_vec(),
    };
    let mut reasons = Vec::new();
    for c in candidates {
        if forced.is_none() && !c.verified() {
            reasons.push((
                c,
                Unavailable(vec![format!(
                    "not yet verified for automatic selection (force it with --hooks {c})"
                )]),
            ));
            continue;
        }
        match c.availability(k) {
            Ok(()) => return Ok(c),
            Err(why) => reasons.push((c, why)),
        }
    }
    Err(reasons)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kernel_layout::Layout, probe::Fact};
    use port_trace_common::KernelOffsets;
    use std::path::PathBuf;

    fn yes() -> Fact {
        Fact {
            ok: true,
            note: String::new(),
        }
    }
    fn no() -> Fact {
        Fact {
            ok: false,
            note: "refused".into(),
        }
    }

    /// This machine: no kprobes, fentry refused, cgroup programs fine.
    fn like_this_host() -> KernelSupport {
        KernelSupport {
            release: "6.18".into(),
            root: yes(),
            btf: yes(),
            layout: Some(Layout {
                offsets: KernelOffsets {
                    valid: layout::FD_WALK | layout::SOCK | layout::NETNS,
                    ..Default::default()
                },
                problems: vec![],
            }),
            ringbuf: yes(),
            kprobes: no(),
            fentry: no(),
            cgroup2: Some(PathBuf::from("/sys/fs/cgroup/unified")),
            tracefs: Some(PathBuf::from("/sys/kernel/tracing")),
            sock_ops: yes(),
            cgroup_sock: yes(),
            cgroup_sock_addr: yes(),
            tracepoint: yes(),
            missing_tracepoints: vec![],
        }
    }

    #[test]
    fn falls_back_to_cgroup_without_kprobes_or_fentry() {
        assert_eq!(choose(&like_this_host(), None), Ok(HookSetName::Cgroup));
    }

    #[test]
    fn forced_unavailable_set_explains_itself() {
        let err = choose(&like_this_host(), Some(HookSetName::Kprobe)).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(err[0].1.to_string().contains("kprobes"));
    }

    #[test]
    fn no_cgroup2_means_no_hook_set() {
        let mut k = like_this_host();
        k.cgroup2 = None;
        let err = choose(&k, None).unwrap_err();
        assert_eq!(err.len(), 3);
        assert!(err[2].1.to_string().contains("cgroup v2"));
    }

    /// A stock kernel with kprobes and working trampolines.
    fn stock_kernel() -> KernelSupport {
        let mut k = like_this_host();
        k.kprobes = yes();
        k.fentry = yes();
        if let Some(l) = k.layout.as_mut() {
            l.offsets.valid |= layout::SOCK_PEER;
        }
        k
    }

    #[test]
    fn stock_kernels_prefer_fexit_then_kprobe() {
        let mut k = stock_kernel();
        assert!(HookSetName::ALL.iter().all(|h| h.built() && h.verified()));
        assert_eq!(HookSetName::Fexit.availability(&k), Ok(()));
        assert_eq!(HookSetName::Kprobe.availability(&k), Ok(()));
        assert_eq!(choose(&k, None), Ok(HookSetName::Fexit));
        k.fentry = no();
        assert_eq!(choose(&k, None), Ok(HookSetName::Kprobe));
        let k = stock_kernel();
        assert_eq!(choose(&k, Some(HookSetName::Fexit)), Ok(HookSetName::Fexit));
        assert_eq!(
            choose(&k, Some(HookSetName::Kprobe)),
            Ok(HookSetName::Kprobe)
        );
    }

    #[test]
    fn forced_fexit_on_this_host_names_fentry() {
        let err = choose(&like_this_host(), Some(HookSetName::Fexit)).unwrap_err();
        assert_eq!(err.len(), 1);
        let why = err[0].1.to_string();
        assert!(why.contains("fentry/fexit"), "{why}");
        assert!(!why.contains("not built"), "{why}");
    }

    #[test]
    fn function_sets_need_the_sock_layout() {
        let mut k = stock_kernel();
        if let Some(l) = k.layout.as_mut() {
            l.offsets.valid &= !layout::SOCK_PEER;
        }
        let why = HookSetName::Kprobe
            .availability(&k)
            .unwrap_err()
            .to_string();
        assert!(why.contains("struct sock"), "{why}");
        let rows = HookSetName::Fexit.coverage(&k);
        assert!(rows.iter().any(|r| !r.seen));
    }

    #[test]
    fn function_sets_cover_every_path_with_their_hooks() {
        let k = stock_kernel();
        for (set, prefix) in [
            (HookSetName::Fexit, "fentry+fexit/"),
            (HookSetName::Kprobe, "kprobe+kretprobe/"),
        ] {
            let rows = set.coverage(&k);
            if std::env::consts::ARCH == "x86_64" {
                assert!(rows.iter().all(|r| r.seen), "{rows:?}");
            }
            let find = |p: &str| rows.iter().find(|r| r.path == p).unwrap().hooks;
            assert!(find("tcp connect (v4/v6)").contains(&format!("{prefix}inet_hash_connect")));
            assert!(find("tcp connect (v4/v6)").contains("inet6_hash_connect"));
            assert!(find("tcp listen() autobind (v4/v6)").contains("inet_csk_get_port"));
            assert!(
                find("udp autobind on sendto/sendmsg/sendmmsg (v4/v6) and EAGAIN")
                    .contains(&format!("{prefix}udp_lib_get_port"))
            );
        }
    }

    #[test]
    fn coverage_names_what_is_not_seen() {
        let mut k = like_this_host();
        assert!(HookSetName::Cgroup.coverage(&k).iter().all(|r| r.seen));
        k.missing_tracepoints = vec!["syscalls/sys_exit_bind".into()];
        k.layout = None;
        let rows = HookSetName::Cgroup.coverage(&k);
        let unseen: Vec<_> = rows.iter().filter(|r| !r.seen).map(|r| r.path).collect();
        assert!(unseen.contains(&"bind(0) failure EADDRINUSE"));
        assert!(unseen.iter().any(|p| p.contains("sendto")));
        assert!(unseen.contains(&"network namespace of each event"));
        assert!(!unseen.contains(&"tcp connect (v4/v6)"));
    }
}
