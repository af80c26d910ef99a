//! Who picked the port: the event's cgroup id resolved to its cgroup v2 path ([`resolver`]),
//! the path read as a systemd unit, container or Kubernetes pod ([`workload`], pure), and
//! network namespaces named after the workload holding them ([`netns_owner`]).
//! How each is derived and its limits: docs/attribution.md.

pub mod netns_owner;
pub mod resolver;
pub mod workload;

use std::{path::Path, sync::Arc};

pub use netns_owner::{NetnsOwner, scan_proc};
pub use resolver::{CgroupResolver, Resolved};
pub use workload::{Container, QosClass, Runtime, Workload, classify};

use crate::event::Event;

/// Fills in events' `cgroup` and `workload`; without a cgroup v2 mount every workload is
/// [`Workload::Unresolved`].
pub struct Attributor {
    resolver: Option<CgroupResolver>,
}

impl Attributor {
    pub fn new(cgroup2_mount: Option<&Path>) -> Self {
        Self {
            resolver: cgroup2_mount.map(CgroupResolver::new),
        }
    }

    pub fn attribute(&mut self, e: &mut Event) {
        let r = match &mut self.resolver {
            Some(r) => r.resolve(e.cgroup_id),
            None => Resolved::Unresolved,
        };
        // Shared with the cache: an event costs two reference counts, not a copy.
        (e.cgroup, e.workload) = match r {
            Resolved::Path(path, workload) => (Some(path), Some(workload)),
            other => (None, Some(Arc::new(other.workload()))),
        };
    }

    pub fn resolver(&self) -> Option<&CgroupResolver> {
        self.resolver.as_ref()
    }

    /// How cgroup ids are resolved, when not one by one: for the `tracing:` line.
    pub fn limits(&self) -> Option<&'static str> {
        match &self.resolver {
            None => Some("no cgroup v2 mount: workloads are not resolved"),
            Some(r) if !r.resolves_by_handle() => Some(
                "cgroups resolved by walking the hierarchy (open_by_handle_at needs CAP_DAC_READ_SEARCH)",
            ),
            Some(_) => None,
        }
    }
}
