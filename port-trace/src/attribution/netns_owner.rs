//! Network namespace → the workload whose processes hold it, so a `netns` inode gets a
//! readable companion. Read from `/proc/PID/ns/net` (the namespace inode) and
//! `/proc/PID/cgroup` (the `0::` line: the cgroup v2 path, relative to our cgroup namespace's
//! root, which is the mount's root on a host).

use std::{collections::HashMap, fs};

use super::workload::{Workload, classify};

/// Most namespaces kept by one scan; a host with more names the first ones met.
pub const MAX_NAMESPACES: usize = 4_096;
/// Most processes one scan reads.
pub const MAX_PROCESSES: usize = 200_000;

/// Who holds a network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsOwner {
    /// Every process in it belongs to this workload (a pod's containers count as the pod).
    One(Workload),
    /// Processes of several workloads share it (the host's namespace): the most common one
    /// and how many distinct ones there are.
    Shared { most: Workload, workloads: usize },
}

impl NetnsOwner {
    /// `pod:<uid>`, `nginx.service`, or `shared: 12 workloads, most /` for the host.
    pub fn label(&self) -> String {
        match self {
            Self::One(w) => w.label(None),
            Self::Shared { most, workloads } => {
                format!("shared: {workloads} workloads, most {}", most.label(None))
            }
        }
    }
}

/// Pure: the owner of each namespace from (namespace inode, cgroup path) per process.
pub fn owners<'a>(processes: impl IntoIterator<Item = (u32, &'a str)>) -> HashMap<u32, NetnsOwner> {
    let mut by_ns: HashMap<u32, HashMap<Workload, usize>> = HashMap::new();
    for (ns, path) in processes {
        if !by_ns.contains_key(&ns) && by_ns.len() >= MAX_NAMESPACES {
            continue;
        }
        let w = classify(path).netns_owner();
        *by_ns.entry(ns).or_default().entry(w).or_default() += 1;
    }
    by_ns
        .into_iter()
        .map(|(ns, counts)| {
            let workloads = counts.len();
            // Most processes first; ties by name so the answer does not depend on hashing.
            let most = counts
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
                .map(|(w, _)| w)
                .unwrap_or(Workload::Unresolved);
            let owner = if workloads == 1 {
                NetnsOwner::One(most)
            } else {
                NetnsOwner::Shared { most, workloads }
            };
            (ns, owner)
        })
        .collect()
}

/// The namespace inode in a `net:[4026531840]` link.
fn parse_ns_link(link: &str) -> Option<u32> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// The cgroup v2 path in a `/proc/PID/cgroup` file (its `0::` line).
fn parse_cgroup_file(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Reads every process's namespace and cgroup now. Processes that exit meanwhile, or whose
/// namespace we may not read, are left out.
pub fn scan_proc() -> HashMap<u32, NetnsOwner> {
    let mut seen: Vec<(u32, String)> = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return HashMap::new();
    };
    for e in dir.flatten().take(MAX_PROCESSES) {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let ns = fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .and_then(|l| parse_ns_link(&l.to_string_lossy()));
        let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok();
        if let (Some(ns), Some(cg)) = (ns, cg)
            && let Some(path) = parse_cgroup_file(&cg)
        {
            seen.push((ns, path.to_string()));
        }
    }
    owners(seen.iter().map(|(ns, p)| (*ns, p.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8d3f1c2a-5b6e-4f70-9a1b-2c3d4e5f6a7b";

    #[test]
    fn a_pods_containers_own_its_namespace_together() {
        let u = UID.replace('-', "_");
        let pause = format!(
            "/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{}.scope",
            "a".repeat(64)
        );
        let app = format!(
            "/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{}.scope",
            "b".repeat(64)
        );
        let o = owners([
            (7, pause.as_str()),
            (7, app.as_str()),
            (1, "/"),
            (1, "/system.slice/sshd.service"),
            (1, "/"),
        ]);
        assert_eq!(o[&7].label(), format!("pod:{UID}"));
        assert_eq!(
            o[&1],
            NetnsOwner::Shared {
                most: Workload::Root,
                workloads: 2
            }
        );
        assert_eq!(o[&1].label(), "shared: 2 workloads, most /");
    }

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[4026531840]"), None);
        assert_eq!(
            parse_cgroup_file("4:memory:/x\n0::/system.slice/a.service\n"),
            Some("/system.slice/a.service")
        );
    }

    /// Our own namespace is found, with our own cgroup among its holders.
    #[test]
    fn scan_finds_our_namespace() {
        let o = scan_proc();
        let own = fs::read_link("/proc/self/ns/net").unwrap();
        let ns = parse_ns_link(&own.to_string_lossy()).unwrap();
        assert!(o.contains_key(&ns));
    }

    #[test]
    fn namespaces_are_bounded() {
        let paths: Vec<(u32, &str)> = (0..MAX_NAMESPACES as u32 + 10).map(|n| (n, "/")).collect();
        assert_eq!(owners(paths).len(), MAX_NAMESPACES);
    }
}
