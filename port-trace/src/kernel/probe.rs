//! What this kernel offers: probed once at start-up, shown by `port-trace check`, and used to
//! pick a hook set.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{maps::MapType, programs::ProgramType};

use port_trace_common::program;

use super::{
    layout::{self as kernel_layout, Layout},
    privilege::{self, Held},
};

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// One yes/no fact about the kernel, with a note for humans.
#[derive(Debug, Clone)]
pub struct Fact {
    pub ok: bool,
    pub note: String,
}

impl Fact {
    fn new(ok: bool, note: impl Into<String>) -> Self {
        Self {
            ok,
            note: note.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct KernelSupport {
    pub release: String,
    /// The capabilities this process holds.
    pub caps: Held,
    /// Whether they are enough to load eBPF (`privilege::LOAD`).
    pub privileged: Fact,
    pub btf: Fact,
    pub layout: Option<Layout>,
    pub ringbuf: Fact,
    pub kprobes: Fact,
    pub fentry: Fact,
    pub cgroup2: Option<PathBuf>,
    pub tracefs: Option<PathBuf>,
    pub sock_ops: Fact,
    /// Whether sock_ops programs may ask who the current task is (6.10+): then the cgroup set
    /// names a TCP connect's caller at `TCP_CONNECT_CB` and keeps no record from `connect4`.
    pub sock_ops_task: Fact,
    pub cgroup_sock: Fact,
    pub cgroup_sock_addr: Fact,
    pub raw_tracepoint: Fact,
    /// Tracepoints the cgroup hook set needs that this kernel lacks.
    pub missing_tracepoints: Vec<String>,
}

fn prog_supported(t: ProgramType) -> Fact {
    match aya::sys::is_program_supported(t) {
        Ok(true) => Fact::new(true, "loads"),
        Ok(false) => Fact::new(false, "the kernel refuses this program type"),
        Err(e) => Fact::new(false, format!("probe failed: {e}")),
    }
}

/// The helpers `Owner::of` (port-trace-ebpf/src/emit.rs) calls, all of which a sock_ops program
/// must be allowed for the cgroup set to name a connect's caller there.
const OWNER_HELPERS: [aya::sys::BpfHelper; 5] = [
    aya::sys::BpfHelper::BPF_FUNC_get_current_pid_tgid,
    aya::sys::BpfHelper::BPF_FUNC_get_current_uid_gid,
    aya::sys::BpfHelper::BPF_FUNC_get_current_comm,
    aya::sys::BpfHelper::BPF_FUNC_get_current_cgroup_id,
    aya::sys::BpfHelper::BPF_FUNC_get_current_task,
];

fn sock_ops_task() -> Fact {
    for h in OWNER_HELPERS {
        match aya::sys::is_helper_supported(ProgramType::SockOps, h) {
            Ok(true) => {}
            Ok(false) => {
                return Fact::new(
                    false,
                    "no current-task helpers (kernel < 6.10): a TCP connect's caller is kept from connect4 in an LRU record",
                );
            }
            Err(e) => return Fact::new(false, format!("probe failed: {e}")),
        }
    }
    Fact::new(
        true,
        "current-task helpers allowed: a TCP connect's caller is read at TCP_CONNECT_CB",
    )
}

/// Finds the cgroup v2 mount (often /sys/fs/cgroup, /sys/fs/cgroup/unified on hybrid hosts).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_mount(&info)
}

pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "... mount-point ... - fstype source opts"
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when nothing is mounted (needs root).
pub fn tracefs(mount_if_missing: bool) -> Option<PathBuf> {
    for p in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(p).join("events").is_dir() {
            return Some(p.into());
        }
    }
    if mount_if_missing
        && nix::mount::mount(
            Some("nodev"),
            TRACEFS,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .is_ok()
        && Path::new(TRACEFS).join("events").is_dir()
    {
        return Some(TRACEFS.into());
    }
    None
}

fn kprobes_available(tracefs: Option<&Path>) -> Fact {
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let events = tracefs.is_some_and(|t| t.join("kprobe_events").exists());
    if pmu || events {
        Fact::new(true, "kprobe PMU present")
    } else {
        Fact::new(
            false,
            "no kprobe PMU or kprobe_events (CONFIG_KPROBES off?)",
        )
    }
}

impl KernelSupport {
    pub fn probe(mount_tracefs: bool) -> Self {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let caps = Held::current();
        let lacking = caps.lacking(&privilege::LOAD);
        let root = lacking.is_empty();
        let privileged = if root {
            Fact::new(true, "CAP_BPF and CAP_PERFMON held")
        } else {
            Fact::new(false, format!("missing {}", privilege::describe(&lacking)))
        };
        let net_admin = caps.meets(&privilege::CGROUP);
        let sys_admin = caps.meets(&privilege::OTHER_NAMESPACES[1]);
        let btf_path = Path::new(kernel_layout::VMLINUX_BTF);
        let (btf, layout) = match kernel_layout::load(btf_path) {
            Ok(b) => (
                Fact::new(true, kernel_layout::VMLINUX_BTF),
                Some(kernel_layout::resolve(&b)),
            ),
            Err(e) => (Fact::new(false, crate::errors::chain(&e)), None),
        };
        let tracefs = tracefs(mount_tracefs && sys_admin);
        // Raw tracepoints need no tracefs; without it, attaching is the test.
        let missing_tracepoints = match &tracefs {
            Some(t) => program::RAW_TRACEPOINTS
                .iter()
                .filter(|p| !t.join("events").join(p.category).join(p.event).is_dir())
                .map(|p| format!("{}/{}", p.category, p.event))
                .collect(),
            None => Vec::new(),
        };
        let unknown = || Fact::new(false, "not probed: needs CAP_BPF and CAP_PERFMON");
        let ringbuf = if root {
            match aya::sys::is_map_supported(MapType::RingBuf) {
                Ok(true) => Fact::new(true, "BPF_MAP_TYPE_RINGBUF"),
                Ok(false) => Fact::new(false, "no BPF ring buffer (kernel < 5.8)"),
                Err(e) => Fact::new(false, format!("probe failed: {e}")),
            }
        } else {
            unknown()
        };
        let prog = |t| if root { prog_supported(t) } else { unknown() };
        // Loading a socket program type at all needs CAP_NET_ADMIN.
        let net_prog = |t| {
            if root && net_admin {
                prog_supported(t)
            } else {
                Fact::new(false, "not probed: needs CAP_NET_ADMIN")
            }
        };
        Self {
            release,
            caps,
            privileged,
            kprobes: kprobes_available(tracefs.as_deref()),
            fentry: fentry_fact(root, btf.ok),
            btf,
            layout,
            ringbuf,
            cgroup2: cgroup2_mount(),
            tracefs,
            sock_ops: net_prog(ProgramType::SockOps),
            sock_ops_task: if root && net_admin {
                sock_ops_task()
            } else {
                Fact::new(false, "not probed: needs CAP_NET_ADMIN")
            },
            cgroup_sock: net_prog(ProgramType::CgroupSock),
            cgroup_sock_addr: net_prog(ProgramType::CgroupSockAddr),
            raw_tracepoint: prog(ProgramType::RawTracePoint),
            missing_tracepoints,
        }
    }
}

/// fentry/fexit need BTF and trampolines; the program type loading is only part of the story
/// (some kernels load it and refuse the attach), so the fexit hook set probes for real.
fn fentry_fact(root: bool, btf: bool) -> Fact {
    if !btf {
        return Fact::new(false, "needs kernel BTF");
    }
    if !root {
        return Fact::new(false, "not probed: needs root");
    }
    match aya::sys::is_program_supported(ProgramType::Tracing) {
        Ok(true) => Fact::new(true, "BPF_PROG_TYPE_TRACING loads"),
        Ok(false) => Fact::new(false, "BPF_PROG_TYPE_TRACING refused"),
        Err(e) => Fact::new(false, format!("probe failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_cgroup2_mount() {
        let info = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            parse_cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }
}
