//! The capabilities port-trace needs, checked before anything is loaded so that a missing one
//! is named, instead of surfacing as the kernel's bare `EPERM`. Root has them all; a dedicated
//! user can be given exactly these (systemd `AmbientCapabilities=`, `setpriv --ambient-caps`).
//!
//! Where the kernel checks them (kernel/bpf/syscall.c, 6.x): creating maps and loading any
//! program needs `CAP_BPF`; tracing program types (kprobe, tracing, raw tracepoint) and reading
//! kernel memory or using kernel addresses as map keys need `CAP_PERFMON`
//! (`is_perfmon_prog_type`, `allow_ptr_leaks`); cgroup socket and sock_ops programs need
//! `CAP_NET_ADMIN` (`is_net_admin_prog_type`). Kernels before 5.8 know neither `CAP_BPF` nor
//! `CAP_PERFMON` and ask for `CAP_SYS_ADMIN`, which also stands in for all three on newer ones
//! (`bpf_ns_capable`, kernel/bpf/token.c).
//! Reading another network namespace's port range and socket table means opening another
//! user's `/proc/PID/ns/net` (`CAP_SYS_PTRACE`) and `setns` into it (`CAP_SYS_ADMIN`).

use caps::{CapSet, Capability};

/// A capability port-trace asks for, and what for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub cap: Capability,
    /// Also enough on its own (`CAP_SYS_ADMIN`, which the kernel accepts in place of the others).
    pub or: Option<Capability>,
    pub why: &'static str,
}

/// Every hook set: maps and programs.
pub const LOAD: [Need; 2] = [
    Need {
        cap: Capability::CAP_BPF,
        or: Some(Capability::CAP_SYS_ADMIN),
        why: "to create BPF maps and load programs",
    },
    Need {
        cap: Capability::CAP_PERFMON,
        or: Some(Capability::CAP_SYS_ADMIN),
        why: "to load tracing programs and read kernel memory",
    },
];

/// The cgroup hook set's socket programs.
pub const CGROUP: Need = Need {
    cap: Capability::CAP_NET_ADMIN,
    or: Some(Capability::CAP_SYS_ADMIN),
    why: "to load and attach cgroup socket and sock_ops programs",
};

/// Reading other network namespaces (pressure per namespace); without them only the tracer's
/// own namespace is read.
pub const OTHER_NAMESPACES: [Need; 2] = [
    Need {
        cap: Capability::CAP_SYS_PTRACE,
        or: None,
        why: "to open other users' /proc/PID/ns/net",
    },
    Need {
        cap: Capability::CAP_SYS_ADMIN,
        or: None,
        why: "to enter other network namespaces (setns)",
    },
];

/// The capabilities this process holds (effective set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held(caps::CapsHashSet);

impl Held {
    /// This process's effective set; empty when it cannot be read.
    pub fn current() -> Self {
        Held(caps::read(None, CapSet::Effective).unwrap_or_default())
    }

    /// Every capability (root, for tests).
    pub fn all() -> Self {
        Held(caps::all())
    }

    pub fn of(caps: &[Capability]) -> Self {
        Held(caps.iter().copied().collect())
    }

    pub fn meets(&self, n: &Need) -> bool {
        self.0.contains(&n.cap) || n.or.is_some_and(|o| self.0.contains(&o))
    }

    /// The needs in `needs` this set does not meet.
    pub fn lacking<'a>(&self, needs: &'a [Need]) -> Vec<&'a Need> {
        needs.iter().filter(|n| !self.meets(n)).collect()
    }
}

/// `CAP_PERFMON (to load tracing programs and read kernel memory)`, joined with "and".
pub fn describe(lacking: &[&Need]) -> String {
    let parts: Vec<String> = lacking
        .iter()
        .map(|n| format!("{} ({})", n.cap, n.why))
        .collect();
    parts.join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_admin_stands_in_for_the_others() {
        let admin = Held::of(&[Capability::CAP_SYS_ADMIN]);
        assert!(admin.lacking(&LOAD).is_empty());
        assert!(admin.meets(&CGROUP));
        assert!(!Held::of(&[Capability::CAP_BPF]).meets(&CGROUP));
    }

    #[test]
    fn each_missing_capability_is_named_with_its_reason() {
        let held = Held::of(&[Capability::CAP_BPF]);
        let lacking = held.lacking(&LOAD);
        assert_eq!(lacking.len(), 1);
        assert_eq!(
            describe(&lacking),
            "CAP_PERFMON (to load tracing programs and read kernel memory)"
        );
        assert!(Held::all().lacking(&LOAD).is_empty());
        assert!(Held::all().meets(&CGROUP));
    }
}
