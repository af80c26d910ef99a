//! Loading the eBPF object with this kernel's offsets, attaching one hook set, and reading
//! what it reports.

use std::{os::fd::AsFd, path::PathBuf};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, MapError, PerCpuArray, RingBuf},
};
use port_trace_common::{PortEvent, Stat};

use super::decode::parse_raw;
use crate::{
    errors::chain,
    hook_set::{AttachError, HookSet},
    kernel::probe::KernelSupport,
};

/// The object built from port-trace-ebpf by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/port-trace"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "missing capability {0}; run port-trace as root or grant it (systemd AmbientCapabilities=, setpriv --ambient-caps)"
    )]
    MissingCapability(String),
    #[error(
        "kernel BTF is missing ({0}); port-trace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf(String),
    #[error("the {set} hook set cannot run here: {why}")]
    Unavailable { set: HookSet, why: String },
    // Boxed: aya's errors are large and every start-up step returns this.
    #[error("failed to load the eBPF object")]
    Object(#[source] Box<EbpfError>),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name} of the eBPF object")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("{set} hook set")]
    Attach {
        set: HookSet,
        #[source]
        source: Box<AttachError>,
    },
}

/// How to start tracing.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Wake userspace once this many bytes wait; otherwise the timer drains.
    pub wakeup_bytes: u64,
    /// Cgroup v2 directory for the cgroup hook set (default: the root of the cgroup v2 mount);
    /// its whole subtree is traced.
    pub cgroup: Option<PathBuf>,
    /// Also attach the cgroup set's sendmsg hooks (`--udp-send-hooks`).
    pub udp_send_hooks: bool,
}

/// Attached programs plus the maps userspace reads. Dropping it detaches everything.
pub struct Tracer {
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    pub hook_set: HookSet,
    /// The programs, as users see them.
    pub programs: Vec<String>,
    /// The cgroup v2 directory, for the cgroup hook set.
    pub cgroup: Option<PathBuf>,
    /// What the attachment says about itself (`Attached::note`).
    pub note: Option<&'static str>,
    /// Records that did not decode (size or an unknown id): counted, never silent.
    undecodable: u64,
}

/// Starts the first of `sets` that loads and attaches; a set the kernel refuses at load or
/// attach time falls back to the next. Returns the tracer and why earlier sets failed.
pub fn start_first(
    k: &KernelSupport,
    sets: &[HookSet],
    opts: &LoadOptions,
) -> Result<(Tracer, Vec<String>), LoadError> {
    can_load(k)?;
    let mut skipped = Vec::new();
    let mut sets = sets.iter().peekable();
    while let Some(&set) = sets.next() {
        match Tracer::start(k, set, opts) {
            Ok(t) => return Ok((t, skipped)),
            Err(e @ (LoadError::MissingCapability(_) | LoadError::NoBtf(_))) => return Err(e),
            Err(e) if sets.peek().is_some() => skipped.push(format!("{set}: {}", chain(&e))),
            Err(e) => return Err(e),
        }
    }
    Err(LoadError::Unavailable {
        set: HookSet::Cgroup,
        why: "no hook set to try".into(),
    })
}

/// What every hook set needs before anything is loaded: CAP_BPF and CAP_PERFMON (or root), and
/// the kernel's BTF.
pub fn can_load(k: &KernelSupport) -> Result<(), LoadError> {
    let lacking = k.caps.lacking(&crate::kernel::privilege::LOAD);
    if !lacking.is_empty() {
        return Err(LoadError::MissingCapability(
            crate::kernel::privilege::describe(&lacking),
        ));
    }
    if !k.btf.ok {
        return Err(LoadError::NoBtf(k.btf.note.clone()));
    }
    Ok(())
}

impl Tracer {
    fn start(k: &KernelSupport, set: HookSet, opts: &LoadOptions) -> Result<Self, LoadError> {
        let layout = k
            .layout
            .as_ref()
            .ok_or_else(|| LoadError::NoBtf("kernel BTF could not be read".into()))?;
        set.availability(k).map_err(|why| LoadError::Unavailable {
            set,
            why: why.to_string(),
        })?;

        // Not needed on kernels with memcg accounting for BPF (5.11+); harmless where it fails.
        let _ = nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_MEMLOCK,
            nix::sys::resource::RLIM_INFINITY,
            nix::sys::resource::RLIM_INFINITY,
        );

        let tgid = std::process::id();
        let scope = crate::hook_set::cgroup::scope(k, opts.cgroup.as_deref());
        let sock_ops_task = u8::from(k.sock_ops_task.ok);
        let mut ebpf = EbpfLoader::new()
            .override_global("TRACER_TGID", &tgid, true)
            .override_global("SCOPE", &scope, true)
            .override_global("OFFSETS", &layout.offsets, true)
            .override_global("WAKEUP_BYTES", &opts.wakeup_bytes, true)
            .override_global("SOCK_OPS_TASK", &sock_ops_task, true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| LoadError::Object(Box::new(e)))?;
        let attached = set
            .attach(&mut ebpf, k, opts.cgroup.as_deref(), opts.udp_send_hooks)
            .map_err(|e| LoadError::Attach {
                set,
                source: Box::new(e),
            })?;
        let map_err = |name| {
            move |e| LoadError::Map {
                name,
                source: Box::new(e),
            }
        };
        let ring = RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?).map_err(map_err("EVENTS"))?;
        let stats =
            PerCpuArray::try_from(take_map(&mut ebpf, "STATS")?).map_err(map_err("STATS"))?;
        Ok(Self {
            _ebpf: ebpf,
            ring,
            stats,
            hook_set: set,
            programs: attached.programs,
            cgroup: attached.cgroup,
            note: attached.note,
            undecodable: 0,
        })
    }

    /// Hands every record waiting in the ring buffer to `f`, in order; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(PortEvent)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            n += 1;
            match parse_raw(&item) {
                Ok(raw) => f(raw),
                Err(_) => self.undecodable += 1,
            }
        }
        n
    }

    /// Events the kernel could not queue because the ring buffer was full.
    pub fn lost(&self) -> u64 {
        self.stat(Stat::Lost)
    }

    /// Port choices seen whose socket could not be read back (`Stat::Unresolved`).
    pub fn unresolved(&self) -> u64 {
        self.stat(Stat::Unresolved)
    }

    /// Records that did not decode: short ones (here) and those `decode` refused (counted by
    /// the caller with [`Tracer::count_undecodable`]).
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// Adds `n` records that `decode` refused.
    pub fn count_undecodable(&mut self, n: u64) {
        self.undecodable += n;
    }

    fn stat(&self, which: Stat) -> u64 {
        self.stats
            .get(&(which as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    pub fn ring_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::MissingMap(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use port_trace_common::program;

    /// Every program the hook sets attach by name exists in the built object, with its type.
    #[test]
    fn the_object_has_every_program_the_hook_sets_name() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the built object parses");
        let mut names: Vec<&str> = program::CGROUP.iter().map(|p| p.name).collect();
        names.extend(program::RAW_TRACEPOINTS.iter().map(|p| p.name));
        for f in program::PORT_FUNCTIONS {
            names.extend([f.fentry, f.fexit, f.kprobe, f.kretprobe]);
        }
        for name in names {
            assert!(
                obj.programs.contains_key(name),
                "{name} is not in the object"
            );
        }
    }
}
