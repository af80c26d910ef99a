//! Loading the eBPF object, attaching a hook set, and reading what it reports.

use std::{fs, os::fd::AsFd, path::Path};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, FEntry, FExit, KProbe, SockOps, TracePoint,
    },
};
use port_trace_common::{PortEvent, Stat};

use crate::{
    event::parse_raw,
    hooks::HookSetName,
    probe::{KernelSupport, TRACEPOINTS},
};

/// The object built from port-trace-ebpf by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/port-trace"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "loading eBPF programs needs root (CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN); run port-trace as root"
    )]
    NotRoot,
    #[error(
        "kernel BTF is missing ({0}); port-trace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf(String),
    #[error("kernel layout: {0}")]
    Layout(String),
    #[error("no usable hook set: {0}")]
    NoHookSet(String),
    #[error(
        "tracepoint {0} has a layout this build does not know ({1}); please report the kernel version"
    )]
    TracepointLayout(String, String),
    #[error("failed to load the eBPF object: {0}")]
    Object(String),
    #[error("the kernel rejected program {name}: {reason}")]
    Program { name: String, reason: String },
    #[error("failed to attach {name} to {target}: {reason}")]
    Attach {
        name: String,
        target: String,
        reason: String,
    },
    #[error("cannot open cgroup {0}: {1}")]
    Cgroup(String, String),
    #[error("map {0} is missing from the eBPF object")]
    Map(&'static str),
}

/// How to start tracing.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub hook_set: HookSetName,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Wake userspace once this many bytes wait; otherwise the timer drains.
    pub wakeup_bytes: u64,
    /// Cgroup v2 directory to attach to; its whole subtree is traced.
    pub cgroup: std::path::PathBuf,
}

/// Attached programs plus the maps userspace reads. Dropping it detaches everything.
pub struct Tracer {
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    pub hook_set: HookSetName,
    pub attached: Vec<String>,
}

/// Expected offsets of `sock/inet_sock_set_state` fields, as compiled into the programs.
const SET_STATE_FIELDS: &[(&str, usize)] = &[
    ("oldstate", 16),
    ("newstate", 20),
    ("sport", 24),
    ("family", 28),
    ("protocol", 30),
    ("saddr", 32),
    ("saddr_v6", 40),
];

/// Checks a tracepoint format file against the offsets the programs read.
pub fn check_format(format: &str, fields: &[(&str, usize)]) -> Result<(), String> {
    for (name, want) in fields {
        let found = format.lines().find_map(|l| {
            let l = l.trim();
            let decl = l.strip_prefix("field:")?.split(';').next()?;
            let fname = decl.split_whitespace().last()?.split('[').next()?;
            if fname != *name {
                return None;
            }
            l.split(';')
                .find_map(|p| p.trim().strip_prefix("offset:"))
                .and_then(|v| v.parse::<usize>().ok())
        });
        match found {
            Some(off) if off == *want => {}
            Some(off) => return Err(format!("{name} at offset {off}, expected {want}")),
            None => return Err(format!("no field {name}")),
        }
    }
    Ok(())
}

/// Starts the first hook set of `sets` that loads and attaches; a set the kernel refuses at
/// load or attach time falls back to the next. Returns the tracer and why earlier sets failed.
pub fn start_first(
    k: &KernelSupport,
    sets: &[HookSetName],
    opts: &LoadOptions,
) -> Result<(Tracer, Vec<String>), LoadError> {
    let mut skipped = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let mut o = opts.clone();
        o.hook_set = *set;
        match Tracer::start(k, &o) {
            Ok(t) => return Ok((t, skipped)),
            Err(e @ (LoadError::NotRoot | LoadError::NoBtf(_))) => return Err(e),
            Err(e) if i + 1 < sets.len() => skipped.push(format!("{set}: {e}")),
            Err(e) => return Err(e),
        }
    }
    Err(LoadError::NoHookSet("no hook set to try".into()))
}

impl Tracer {
    pub fn start(k: &KernelSupport, opts: &LoadOptions) -> Result<Self, LoadError> {
        if !k.root.ok {
            return Err(LoadError::NotRoot);
        }
        if !k.btf.ok {
            return Err(LoadError::NoBtf(k.btf.note.clone()));
        }
        let layout = k
            .layout
            .as_ref()
            .ok_or_else(|| LoadError::Layout("kernel BTF could not be read".into()))?;
        if let Err(why) = opts.hook_set.availability(k) {
            return Err(LoadError::NoHookSet(format!("{}: {why}", opts.hook_set)));
        }
        if opts.hook_set == HookSetName::Cgroup {
            // Only the cgroup set reads tracepoint fields at compiled-in offsets.
            let tracefs = k.tracefs.clone().unwrap_or_default();
            let fmt_path = tracefs.join("events/sock/inet_sock_set_state/format");
            let fmt = fs::read_to_string(&fmt_path).unwrap_or_default();
            check_format(&fmt, SET_STATE_FIELDS)
                .map_err(|e| LoadError::TracepointLayout("sock/inet_sock_set_state".into(), e))?;
        }

        // Not needed on kernels with memcg accounting for BPF (5.11+); harmless where it fails.
        let _ = nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_MEMLOCK,
            nix::sys::resource::RLIM_INFINITY,
            nix::sys::resource::RLIM_INFINITY,
        );

        let tgid = std::process::id();
        let offsets = layout.offsets;
        let mut ebpf = EbpfLoader::new()
            .override_global("TRACER_TGID", &tgid, true)
            .override_global("OFFSETS", &offsets, true)
            .override_global("WAKEUP_BYTES", &opts.wakeup_bytes, true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| LoadError::Object(error_chain(&e)))?;

        let attached = match opts.hook_set {
            HookSetName::Cgroup => attach_cgroup_set(&mut ebpf, &opts.cgroup)?,
            HookSetName::Fexit => attach_fexit_set(&mut ebpf)?,
            HookSetName::Kprobe => attach_kprobe_set(&mut ebpf)?,
        };

        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").ok_or(LoadError::Map("EVENTS"))?)
            .map_err(|e| LoadError::Object(e.to_string()))?;
        let stats = PerCpuArray::try_from(ebpf.take_map("STATS").ok_or(LoadError::Map("STATS"))?)
            .map_err(|e| LoadError::Object(e.to_string()))?;
        Ok(Self {
            _ebpf: ebpf,
            ring,
            stats,
            hook_set: opts.hook_set,
            attached,
        })
    }

    /// Drains every record waiting in the ring buffer.
    pub fn drain(&mut self, mut f: impl FnMut(PortEvent)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if let Ok(raw) = parse_raw(&item) {
                f(raw);
                n += 1;
            }
        }
        n
    }

    /// Events the kernel could not queue because the ring buffer was full.
    pub fn lost(&self) -> u64 {
        self.stat(Stat::Lost)
    }

    /// Port choices seen whose socket could not be read back (missing kernel layout).
    pub fn unresolved(&self) -> u64 {
        self.stat(Stat::Unresolved)
    }

    pub fn stat(&self, which: Stat) -> u64 {
        self.stats
            .get(&(which as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    pub fn ring_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn program_err(name: &str, e: &dyn std::error::Error) -> LoadError {
    LoadError::Program {
        name: name.into(),
        reason: error_chain(e),
    }
}

fn attach_err(name: &str, target: &str, e: &dyn std::error::Error) -> LoadError {
    LoadError::Attach {
        name: name.into(),
        target: target.into(),
        reason: error_chain(e),
    }
}

/// Looks up a program by name, checks its type and loads it into the kernel.
macro_rules! load_program {
    ($ebpf:expr, $name:expr, $ty:ty) => {{
        let name: &str = $name;
        let prog: &mut $ty = $ebpf
            .program_mut(name)
            .ok_or_else(|| LoadError::Object(format!("program {name} missing")))?
            .try_into()
            .map_err(|e| program_err(name, &e))?;
        prog.load().map_err(|e| program_err(name, &e))?;
        prog
    }};
}

/// Attaches the cgroup hook set: sock_ops and cgroup programs on the cgroup v2 directory,
/// tracepoints globally.
fn attach_cgroup_set(ebpf: &mut Ebpf, cgroup_dir: &Path) -> Result<Vec<String>, LoadError> {
    let cg = fs::File::open(cgroup_dir)
        .map_err(|e| LoadError::Cgroup(cgroup_dir.display().to_string(), e.to_string()))?;
    let target = cgroup_dir.display().to_string();
    let mut attached = Vec::new();

    // Single: bpf_link_create rejects the multi flag, and links stack anyway.
    let mode = CgroupAttachMode::Single;
    for name in ["pt_connect4", "pt_connect6", "pt_bind4", "pt_bind6"] {
        load_program!(ebpf, name, CgroupSockAddr)
            .attach(&cg, mode)
            .map_err(|e| attach_err(name, &target, &e))?;
        attached.push(format!("cgroup_sock_addr/{}", &name[3..]));
    }
    for name in ["pt_post_bind4", "pt_post_bind6"] {
        load_program!(ebpf, name, CgroupSock)
            .attach(&cg, mode)
            .map_err(|e| attach_err(name, &target, &e))?;
        attached.push(format!("cgroup_sock/{}", &name[3..]));
    }
    load_program!(ebpf, "pt_sockops", SockOps)
        .attach(&cg, mode)
        .map_err(|e| attach_err("pt_sockops", &target, &e))?;
    attached.push("sock_ops".into());
    for (category, tp) in TRACEPOINTS {
        let name = match *tp {
            "inet_sock_set_state" => "pt_inet_sock_set_state".to_string(),
            other => format!("pt_{}", other.replacen("sys_", "", 1)),
        };
        load_program!(ebpf, &name, TracePoint)
            .attach(category, tp)
            .map_err(|e| attach_err(&name, &format!("{category}/{tp}"), &e))?;
        attached.push(format!("tracepoint/{category}/{tp}"));
    }
    Ok(attached)
}

/// The kernel functions that choose a port, hooked by the fexit and kprobe sets. Program
/// names in port-trace-ebpf are `pt_{fentry,fexit,kprobe,kretprobe}_<function>`.
pub const PORT_FUNCTIONS: [&str; 4] = [
    "inet_hash_connect",
    "inet6_hash_connect",
    "inet_csk_get_port",
    "udp_lib_get_port",
];

/// Attaches the fexit hook set: fentry + fexit on each port-choosing function (BPF
/// trampolines, attached by BTF id of the running kernel).
fn attach_fexit_set(ebpf: &mut Ebpf) -> Result<Vec<String>, LoadError> {
    let btf = Btf::from_sys_fs().map_err(|e| LoadError::NoBtf(error_chain(&e)))?;
    let mut attached = Vec::new();
    for func in PORT_FUNCTIONS {
        // fentry first: an fexit without its entry state reports nothing.
        let name = format!("pt_fentry_{func}");
        let prog: &mut FEntry = typed_program(ebpf, &name)?;
        prog.load(func, &btf).map_err(|e| program_err(&name, &e))?;
        prog.attach()
            .map_err(|e| attach_err(&name, &format!("fentry/{func}"), &e))?;
        attached.push(format!("fentry/{func}"));

        let name = format!("pt_fexit_{func}");
        let prog: &mut FExit = typed_program(ebpf, &name)?;
        prog.load(func, &btf).map_err(|e| program_err(&name, &e))?;
        prog.attach()
            .map_err(|e| attach_err(&name, &format!("fexit/{func}"), &e))?;
        attached.push(format!("fexit/{func}"));
    }
    Ok(attached)
}

/// Attaches the kprobe hook set: kprobe + kretprobe on each port-choosing function.
fn attach_kprobe_set(ebpf: &mut Ebpf) -> Result<Vec<String>, LoadError> {
    let mut attached = Vec::new();
    for func in PORT_FUNCTIONS {
        for kind in ["kprobe", "kretprobe"] {
            let name = format!("pt_{kind}_{func}");
            load_program!(ebpf, &name, KProbe)
                .attach(func, 0)
                .map_err(|e| attach_err(&name, &format!("{kind}/{func}"), &e))?;
            attached.push(format!("{kind}/{func}"));
        }
    }
    Ok(attached)
}

/// Looks up a program by name and checks its type, without loading it (fentry/fexit load
/// with a BTF target).
fn typed_program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| LoadError::Object(format!("program {name} missing")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| program_err(name, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_check_accepts_this_layout_and_rejects_a_shift() {
        let fmt = "\
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
";
        assert_eq!(check_format(fmt, SET_STATE_FIELDS), Ok(()));
        let shifted = fmt.replace("offset:30", "offset:32");
        assert!(
            check_format(&shifted, SET_STATE_FIELDS)
                .unwrap_err()
                .contains("protocol")
        );
        assert!(check_format("", SET_STATE_FIELDS).is_err());
    }
}
