//! Hook sets: which kernel programs see which port-allocation path, which set to use, and
//! attaching it. One file per set ([`cgroup`], [`fexit`], [`kprobe`]; the last two share
//! [`port_function`]).
//!
//! Choosing a set is a pure function of the probed `KernelSupport`, so `check`, `trace` and
//! `serve` agree and the choice is unit-tested without root.

pub mod cgroup;
pub mod fexit;
pub mod kprobe;
pub mod port_function;

use std::{fmt, path::PathBuf};

use aya::{Ebpf, programs::ProgramError};

use crate::kernel::probe::KernelSupport;

/// The hook sets, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookSet {
    /// fexit on inet_hash_connect / inet_csk_get_port / udp_lib_get_port.
    Fexit,
    /// kprobe/kretprobe pairs on the same functions.
    Kprobe,
    /// sock_ops, cgroup sock/sock_addr programs and tracepoints: no kprobes or trampolines.
    Cgroup,
}

impl fmt::Display for HookSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
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
    /// Programs that report it.
    pub hooks: &'static str,
    pub seen: bool,
    pub why_not: Option<String>,
}

impl PathCoverage {
    /// A row; `why_not` says why the path is not seen here, `None` when it is.
    fn new(path: &'static str, hooks: &'static str, why_not: Option<String>) -> Self {
        Self {
            path,
            hooks,
            seen: why_not.is_none(),
            why_not,
        }
    }
}

/// Why a hook set cannot run on this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub Vec<String>);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// No hook set can run here: each one's reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no usable hook set on this kernel ({}); `port-trace check` shows the details", reasons(.0))]
pub struct NoHookSet(pub Vec<(HookSet, Unavailable)>);

fn reasons(r: &[(HookSet, Unavailable)]) -> String {
    let why: Vec<String> = r.iter().map(|(h, w)| format!("{h}: {w}")).collect();
    why.join("; ")
}

/// Attaching a hook set failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("program {0} is missing from the eBPF object")]
    Missing(String),
    // Boxed: aya's errors are large and every hook-set step returns this.
    #[error("the kernel rejected program {name}")]
    Program {
        name: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("failed to attach {name} to {target}")]
    Attach {
        name: String,
        target: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(
        "no cgroup v2 mount found; mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) or pass --cgroup"
    )]
    NoCgroup2,
    #[error("{} is not a cgroup v2 directory (pass a directory under the cgroup2 mount)", path.display())]
    NotCgroup2 { path: PathBuf },
    #[error("cannot open cgroup {}", path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel BTF")]
    Btf(#[source] aya::BtfError),
    #[error("map {name} of the eBPF object")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

/// What an attached hook set is made of.
pub struct Attached {
    /// The programs, as users see them (`tracing:` line, `check`).
    pub programs: Vec<String>,
    /// The cgroup v2 directory the cgroup set attached to; `None` for the other sets.
    pub cgroup: Option<PathBuf>,
    /// What an operator should know about how this attachment sees a path (`tracing:` line).
    pub note: Option<&'static str>,
}

impl HookSet {
    pub const ALL: [HookSet; 3] = [Self::Fexit, Self::Kprobe, Self::Cgroup];

    /// What stops this hook set on this kernel, if anything.
    pub fn availability(&self, k: &KernelSupport) -> Result<(), Unavailable> {
        let mut why = Vec::new();
        if !k.ringbuf.ok {
            why.push(format!("ring buffer: {}", k.ringbuf.note));
        }
        why.extend(match self {
            Self::Fexit => fexit::missing(k),
            Self::Kprobe => kprobe::missing(k),
            Self::Cgroup => cgroup::missing(k),
        });
        if why.is_empty() {
            Ok(())
        } else {
            Err(Unavailable(why))
        }
    }

    /// Which capture paths this hook set sees on this kernel.
    pub fn coverage(&self, k: &KernelSupport) -> Vec<PathCoverage> {
        match self {
            Self::Cgroup => cgroup::coverage(k),
            Self::Fexit => port_function::coverage(k, &fexit::HOOKS),
            Self::Kprobe => port_function::coverage(k, &kprobe::HOOKS),
        }
    }

    /// Loads and attaches this set's programs from the loaded object. `cgroup` overrides the
    /// cgroup v2 directory of the cgroup set; `udp_send_hooks` adds its opt-in programs.
    pub fn attach(
        &self,
        ebpf: &mut Ebpf,
        k: &KernelSupport,
        cgroup: Option<&std::path::Path>,
        udp_send_hooks: bool,
    ) -> Result<Attached, AttachError> {
        match self {
            Self::Cgroup => cgroup::attach(ebpf, k, cgroup, udp_send_hooks),
            Self::Fexit => fexit::attach(ebpf),
            Self::Kprobe => kprobe::attach(ebpf),
        }
    }
}

/// The hook sets to try here, in order of preference (a set that fails to load or attach falls
/// back to the next), or just the forced one; else why none can run.
pub fn choose(k: &KernelSupport, forced: Option<HookSet>) -> Result<Vec<HookSet>, NoHookSet> {
    let sets = match forced {
        Some(f) => vec![f],
        None => HookSet::ALL.to_vec(),
    };
    let mut usable = Vec::new();
    let mut reasons = Vec::new();
    for set in sets {
        match set.availability(k) {
            Ok(()) => usable.push(set),
            Err(why) => reasons.push((set, why)),
        }
    }
    if usable.is_empty() {
        return Err(NoHookSet(reasons));
    }
    // A set blind to some paths here (fexit and kprobe without the syscall registers cannot
    // tell a UDP bind(0) from an autobind) goes after one that sees more; the order above
    // decides between equals (a stable sort).
    if forced.is_none() {
        usable.sort_by_key(|set| set.coverage(k).iter().filter(|r| !r.seen).count());
    }
    Ok(usable)
}

/// Looks up a program by name and checks its type, without loading it.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, AttachError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| AttachError::Missing(name.into()))?
        .try_into()
        .map_err(rejected(name))
}

/// The error for a program the kernel refused to load.
fn rejected(name: &str) -> impl FnOnce(ProgramError) -> AttachError + '_ {
    move |source| AttachError::Program {
        name: name.into(),
        source: Box::new(source),
    }
}

/// The error for a program that loaded but could not be attached to `target`.
fn not_attached<'a>(
    name: &'a str,
    target: &'a str,
) -> impl FnOnce(ProgramError) -> AttachError + 'a {
    move |source| AttachError::Attach {
        name: name.into(),
        target: target.into(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{layout::Layout, probe::Fact};
    use port_trace_common::KernelOffsets;
    use port_trace_common::layout;
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
            caps: crate::kernel::privilege::Held::all(),
            privileged: yes(),
            btf: yes(),
            layout: Some(Layout {
                offsets: KernelOffsets {
                    valid: layout::SOCK | layout::NETNS,
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
            sock_ops_task: yes(),
            cgroup_sock: yes(),
            cgroup_sock_addr: yes(),
            raw_tracepoint: yes(),
            missing_tracepoints: vec![],
        }
    }

    #[test]
    fn falls_back_to_cgroup_without_kprobes_or_fentry() {
        assert_eq!(choose(&like_this_host(), None), Ok(vec![HookSet::Cgroup]));
    }

    #[test]
    fn forced_unavailable_set_explains_itself() {
        let err = choose(&like_this_host(), Some(HookSet::Kprobe))
            .unwrap_err()
            .0;
        assert_eq!(err.len(), 1);
        assert!(err[0].1.to_string().contains("kprobes"));
    }

    #[test]
    fn no_cgroup2_means_no_hook_set() {
        let mut k = like_this_host();
        k.cgroup2 = None;
        let err = choose(&k, None).unwrap_err();
        assert_eq!(err.0.len(), 3);
        assert!(err.0[2].1.to_string().contains("cgroup v2"));
        assert!(
            err.to_string()
                .starts_with("no usable hook set on this kernel (fexit: ")
        );
    }

    /// A stock kernel with kprobes and working trampolines.
    fn stock_kernel() -> KernelSupport {
        let mut k = like_this_host();
        k.kprobes = yes();
        k.fentry = yes();
        if let Some(l) = k.layout.as_mut() {
            l.offsets.valid |= layout::SOCK_PEER | layout::SYSCALL_REGS | layout::REGS_HELPER;
        }
        k
    }

    #[test]
    fn sets_blind_to_udp_bind_go_after_cgroup() {
        // A pt_regs layout port-trace does not know: fexit and kprobe cannot tell a UDP
        // bind(0) from an autobind, and report those paths as not seen.
        let mut k = stock_kernel();
        if let Some(l) = k.layout.as_mut() {
            l.offsets.valid &= !layout::SYSCALL_REGS;
        }
        let rows = HookSet::Kprobe.coverage(&k);
        let udp_bind = rows
            .iter()
            .find(|r| r.path == "udp bind(0) (v4/v6)")
            .unwrap();
        assert!(!udp_bind.seen);
        assert!(udp_bind.why_not.as_deref().unwrap().contains("pt_regs"));
        assert_eq!(
            choose(&k, None),
            Ok(vec![HookSet::Cgroup, HookSet::Fexit, HookSet::Kprobe])
        );
        // Forced, the set still runs: the user asked for it.
        assert_eq!(choose(&k, Some(HookSet::Fexit)), Ok(vec![HookSet::Fexit]));
        // Before 5.15 (no bpf_task_pt_regs) the registers are found below the kernel stack.
        let mut k = stock_kernel();
        if let Some(l) = k.layout.as_mut() {
            l.offsets.valid &= !layout::REGS_HELPER;
        }
        assert!(HookSet::Fexit.coverage(&k).iter().any(|r| !r.seen));
        if let Some(l) = k.layout.as_mut() {
            l.offsets.valid |= layout::TASK_STACK;
        }
        assert!(HookSet::Fexit.coverage(&k).iter().all(|r| r.seen));
    }

    #[test]
    fn stock_kernels_prefer_fexit_then_kprobe() {
        let mut k = stock_kernel();
        assert_eq!(HookSet::Fexit.availability(&k), Ok(()));
        assert_eq!(HookSet::Kprobe.availability(&k), Ok(()));
        assert_eq!(choose(&k, None), Ok(HookSet::ALL.to_vec()));
        k.fentry = no();
        assert_eq!(choose(&k, None), Ok(vec![HookSet::Kprobe, HookSet::Cgroup]));
        let k = stock_kernel();
        assert_eq!(choose(&k, Some(HookSet::Fexit)), Ok(vec![HookSet::Fexit]));
        assert_eq!(choose(&k, Some(HookSet::Kprobe)), Ok(vec![HookSet::Kprobe]));
    }

    #[test]
    fn forced_fexit_on_this_host_names_fentry() {
        let err = choose(&like_this_host(), Some(HookSet::Fexit))
            .unwrap_err()
            .0;
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
        let why = HookSet::Kprobe.availability(&k).unwrap_err().to_string();
        assert!(why.contains("struct sock"), "{why}");
        let rows = HookSet::Fexit.coverage(&k);
        assert!(rows.iter().any(|r| !r.seen));
    }

    #[test]
    fn function_sets_cover_every_path_with_their_hooks() {
        let k = stock_kernel();
        for (set, prefix) in [
            (HookSet::Fexit, "fentry+fexit/"),
            (HookSet::Kprobe, "kprobe+kretprobe/"),
        ] {
            let rows = set.coverage(&k);
            assert!(rows.iter().all(|r| r.seen), "{rows:?}");
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
        let unseen = |k: &KernelSupport| -> Vec<&'static str> {
            let rows = HookSet::Cgroup.coverage(k);
            rows.iter().filter(|r| !r.seen).map(|r| r.path).collect()
        };
        // With everything available only the failed autobind on send is out of sight.
        assert_eq!(unseen(&k), ["udp autobind failure EAGAIN on send"]);
        k.missing_tracepoints = vec!["sock/inet_sock_set_state".into()];
        k.layout = None;
        let unseen = unseen(&k);
        assert!(unseen.contains(&"tcp connect failure EADDRNOTAVAIL (inferred)"));
        assert!(unseen.contains(&"tcp listen() autobind (v4/v6)"));
        assert!(unseen.contains(&"udp autobind on connect(), EAGAIN inferred (at next use)"));
        assert!(unseen.contains(&"network namespace of each event"));
        assert!(!unseen.contains(&"tcp connect (v4/v6)"));
    }
}
