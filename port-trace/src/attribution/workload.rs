//! Pure: a cgroup v2 path → who runs there (systemd unit, container, Kubernetes pod).
//!
//! The naming conventions read here are the ones the managers write (docs/attribution.md):
//! systemd names a unit's cgroup after the unit (`nginx.service`, `session-3.scope`; a user's
//! manager is `user@1000.service`, its units below it); container runtimes put each container in
//! `<prefix>-<id>.scope` under the systemd cgroup driver (`docker-`, `cri-containerd-`, `crio-`,
//! `libpod-`) or in a directory named after the id under the cgroupfs driver (`/docker/<id>`);
//! the kubelet puts each pod in `kubepods[-<qos>]-pod<uid>.slice` (systemd driver, the UID's
//! dashes written as underscores) or `/kubepods[/<qos>]/pod<uid>` (cgroupfs driver).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A container runtime, by the prefix of its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// `docker-<id>.scope`, `/docker/<id>`.
    Docker,
    /// `cri-containerd-<id>.scope` (containerd's CRI plugin).
    Containerd,
    /// `crio-<id>.scope`, `/crio-<id>`.
    CriO,
    /// `libpod-<id>.scope`, `/libpod_parent/libpod-<id>` (podman).
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Podman => "podman",
        }
    }

    /// Scope prefixes, longest first where one is the start of another.
    const PREFIXES: [(&'static str, Runtime); 4] = [
        ("cri-containerd-", Self::Containerd),
        ("docker-", Self::Docker),
        ("crio-", Self::CriO),
        ("libpod-", Self::Podman),
    ];
}

/// A pod's Kubernetes QoS class, from the slice or directory the kubelet put it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QosClass {
    /// Directly under `kubepods`: requests equal limits.
    Guaranteed,
    Burstable,
    /// Spelled as the kubelet's cgroup names it (and as `name()` gives it).
    #[serde(rename = "besteffort")]
    BestEffort,
}

impl QosClass {
    pub fn name(self) -> &'static str {
        match self {
            Self::Guaranteed => "guaranteed",
            Self::Burstable => "burstable",
            Self::BestEffort => "besteffort",
        }
    }
}

/// One container: its runtime (unknown under the kubelet's cgroupfs driver, which names the
/// directory after the bare id) and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Container {
    pub runtime: Option<Runtime>,
    pub id: String,
}

impl Container {
    /// `docker:0123456789ab`: the runtime and the id's first 12 characters, as `docker ps`
    /// shows it.
    pub fn short(&self) -> String {
        let id: String = self.id.chars().take(12).collect();
        match self.runtime {
            Some(r) => format!("{}:{id}", r.name()),
            None => id,
        }
    }
}

/// Who a cgroup belongs to. Serialized with a `kind` tag:
/// `{"kind":"pod","uid":"…","qos":"burstable","container":{"runtime":"containerd","id":"…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Workload {
    /// A Kubernetes pod, and the container inside it when the cgroup is a container's.
    Pod {
        uid: String,
        qos: QosClass,
        container: Option<Container>,
    },
    /// A container outside Kubernetes.
    Container(Container),
    /// A systemd unit; `user_unit` is the unit inside a user's manager
    /// (`user@1000.service` → `app.slice/foo.service` gives `foo.service`).
    Unit {
        unit: String,
        user_unit: Option<String>,
    },
    /// The root cgroup: processes nobody moved anywhere.
    Root,
    /// A cgroup whose name follows none of the conventions: the path is all there is.
    Other,
    /// The cgroup was removed before its id could be resolved (short-lived containers).
    Removed,
    /// The id could not be resolved (no cgroup v2 mount, not permitted, not found).
    Unresolved,
}

impl Workload {
    /// A short readable name: `pod 1f2e…/containerd:0123456789ab`, `docker:0123456789ab`,
    /// `nginx.service`, `user@1000.service/foo.service`; for [`Workload::Other`] the path.
    pub fn label(&self, path: Option<&str>) -> String {
        match self {
            Self::Pod { uid, container, .. } => match container {
                Some(c) => format!("pod:{uid}/{}", c.short()),
                None => format!("pod:{uid}"),
            },
            Self::Container(c) => c.short(),
            Self::Unit { unit, user_unit } => match user_unit {
                Some(u) => format!("{unit}/{u}"),
                None => unit.clone(),
            },
            Self::Root => "/".into(),
            Self::Other => path.unwrap_or("(unresolved)").into(),
            Self::Removed => "(removed cgroup)".into(),
            Self::Unresolved => "(unresolved)".into(),
        }
    }

    /// The `kind` tag's value.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Pod { .. } => "pod",
            Self::Container(_) => "container",
            Self::Unit { .. } => "unit",
            Self::Root => "root",
            Self::Other => "other",
            Self::Removed => "removed",
            Self::Unresolved => "unresolved",
        }
    }

    /// What owns a network namespace: a pod rather than one of its containers (they share
    /// the pod's namespace), anything else as it is.
    pub fn netns_owner(&self) -> Workload {
        match self {
            Self::Pod { uid, qos, .. } => Self::Pod {
                uid: uid.clone(),
                qos: *qos,
                container: None,
            },
            other => other.clone(),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.label(None))
    }
}

/// Classifies a path relative to the cgroup v2 mount (`/system.slice/nginx.service`).
/// The innermost pod, container and unit win: a kind node (`docker-<id>.scope/…/kubepods…`)
/// is attributed to the pod inside it.
pub fn classify(path: &str) -> Workload {
    // `..` steps: /proc/PID/cgroup read from a cgroup namespace other than the process's
    // (a DaemonSet's) shows the path from our own cgroup (`/../../kubepods.slice/…`).
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != "..")
        .collect();
    if parts.is_empty() {
        return Workload::Root;
    }
    // The innermost pod; then a container below it (or anywhere, without a pod).
    if let Some((i, uid, qos)) = parts
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, p)| pod(&parts[..i], p).map(|(uid, qos)| (i, uid, qos)))
    {
        let container = parts[i + 1..].iter().rev().find_map(|p| container(p, true));
        return Workload::Pod {
            uid,
            qos,
            container,
        };
    }
    // A bare id is a container only below `/docker` (docker's cgroupfs driver).
    let outside_pod = parts.iter().enumerate().rev().find_map(|(i, p)| {
        let under_docker = i > 0 && parts[i - 1] == "docker";
        let mut c = container(p, under_docker)?;
        if under_docker {
            c.runtime.get_or_insert(Runtime::Docker);
        }
        Some(c)
    });
    if let Some(c) = outside_pod {
        return Workload::Container(c);
    }
    unit(&parts).unwrap_or(Workload::Other)
}

/// `kubepods-burstable-pod<uid>.slice` (systemd driver; also with a prefix such as
/// `kubelet-kubepods-…`) or `pod<uid>` below a `kubepods` directory (cgroupfs driver).
fn pod(above: &[&str], part: &str) -> Option<(String, QosClass)> {
    if let Some(name) = part.strip_suffix(".slice") {
        let at = name.rfind("kubepods")?;
        let rest = &name[at + "kubepods".len()..];
        let (qos, rest) = if let Some(r) = rest.strip_prefix("-burstable") {
            (QosClass::Burstable, r)
        } else if let Some(r) = rest.strip_prefix("-besteffort") {
            (QosClass::BestEffort, r)
        } else {
            (QosClass::Guaranteed, rest)
        };
        let uid = rest.strip_prefix("-pod")?;
        // systemd reserves '-' for nesting, so the kubelet writes the UID's dashes as '_'.
        return pod_uid(&uid.replace('_', "-")).map(|u| (u, qos));
    }
    let uid = pod_uid(part.strip_prefix("pod")?)?;
    let k = above.iter().rposition(|p| *p == "kubepods")?;
    let qos = match &above[k + 1..] {
        [] => QosClass::Guaranteed,
        ["burstable"] => QosClass::Burstable,
        ["besteffort"] => QosClass::BestEffort,
        _ => return None,
    };
    Some((uid, qos))
}

/// A pod UID: a UUID, or the 32 hex digits of a static pod's config hash.
fn pod_uid(s: &str) -> Option<String> {
    let ok = (1..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    ok.then(|| s.to_ascii_lowercase())
}

/// A container id as runtimes write it: 12 to 64 hex digits.
fn container_id(s: &str) -> Option<String> {
    let ok = (12..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit());
    ok.then(|| s.to_ascii_lowercase())
}

/// `<prefix>-<id>.scope` (systemd driver), `<prefix>-<id>` or, where `bare` (inside a pod, below
/// `/docker`), a bare id (cgroupfs drivers). Monitors (`crio-conmon-`, `libpod-conmon-`) are not
/// containers.
fn container(part: &str, bare: bool) -> Option<Container> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in Runtime::PREFIXES {
        if let Some(id) = name.strip_prefix(prefix).and_then(container_id) {
            return Some(Container {
                runtime: Some(runtime),
                id,
            });
        }
    }
    // The kubelet's cgroupfs driver does not name the runtime; docker's is known by `/docker`.
    (bare && name == part)
        .then(|| container_id(part))
        .flatten()
        .map(|id| Container { runtime: None, id })
}

/// The innermost systemd unit, and the unit inside a user manager (`user@UID.service`).
fn unit(parts: &[&str]) -> Option<Workload> {
    let is_unit = |p: &str| {
        [".service", ".scope", ".socket", ".mount", ".swap"]
            .iter()
            .any(|s| p.len() > s.len() && p.ends_with(s))
    };
    let first = parts.iter().position(|p| is_unit(p))?;
    let unit = parts[first].to_string();
    let user_unit = (unit.starts_with("user@"))
        .then(|| parts[first + 1..].iter().rev().find(|p| is_unit(p)))
        .flatten()
        .map(|u| u.to_string());
    Some(Workload::Unit { unit, user_unit })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904d7e0f4f7a8e3b39e2b3a1c5d";
    const UID: &str = "8d3f1c2a-5b6e-4f70-9a1b-2c3d4e5f6a7b";

    fn uid_underscored() -> String {
        UID.replace('-', "_")
    }

    fn c(runtime: Option<Runtime>) -> Option<Container> {
        Some(Container {
            runtime,
            id: ID.into(),
        })
    }

    #[test]
    fn systemd_units() {
        assert_eq!(
            classify("/system.slice/nginx.service"),
            Workload::Unit {
                unit: "nginx.service".into(),
                user_unit: None
            }
        );
        assert_eq!(
            classify("/user.slice/user-1000.slice/session-3.scope"),
            Workload::Unit {
                unit: "session-3.scope".into(),
                user_unit: None
            }
        );
        let w =
            classify("/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox.scope");
        assert_eq!(
            w,
            Workload::Unit {
                unit: "user@1000.service".into(),
                user_unit: Some("app-firefox.scope".into())
            }
        );
        assert_eq!(w.label(None), "user@1000.service/app-firefox.scope");
        assert_eq!(
            classify("/user.slice/user-1000.slice/user@1000.service/init.scope"),
            Workload::Unit {
                unit: "user@1000.service".into(),
                user_unit: Some("init.scope".into())
            }
        );
        // A service's own sub-cgroups (delegation) still belong to it.
        assert_eq!(
            classify("/system.slice/foo.service/worker"),
            Workload::Unit {
                unit: "foo.service".into(),
                user_unit: None
            }
        );
    }

    #[test]
    fn root_and_other() {
        assert_eq!(classify("/"), Workload::Root);
        assert_eq!(classify(""), Workload::Root);
        assert_eq!(classify("/system.slice"), Workload::Other);
        assert_eq!(classify("/mygroup/sub"), Workload::Other);
        assert_eq!(Workload::Other.label(Some("/mygroup/sub")), "/mygroup/sub");
        // A "service" with nothing before the suffix is not a unit name.
        assert_eq!(classify("/.service"), Workload::Other);
    }

    #[test]
    fn containers_outside_kubernetes() {
        for (path, runtime) in [
            (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker),
            (format!("/docker/{ID}"), Runtime::Docker),
            (
                format!("/system.slice/cri-containerd-{ID}.scope"),
                Runtime::Containerd,
            ),
            (format!("/system.slice/crio-{ID}.scope"), Runtime::CriO),
            (format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Runtime::Podman,
            ),
            (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman),
            // Rootless podman under a user's manager: the container, not the manager.
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                Runtime::Podman,
            ),
        ] {
            let w = classify(&path);
            assert_eq!(w, Workload::Container(c(Some(runtime)).unwrap()), "{path}");
        }
        assert_eq!(
            classify(&format!("/system.slice/docker-{ID}.scope")).label(None),
            "docker:4b825dc642cb"
        );
        // Monitors and look-alikes are units, not containers.
        assert_eq!(
            classify(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            Workload::Unit {
                unit: format!("libpod-conmon-{ID}.scope"),
                user_unit: None
            }
        );
        assert_eq!(
            classify("/system.slice/docker-compose.scope").kind(),
            "unit"
        );
        assert_eq!(classify("/system.slice/docker.service").kind(), "unit");
        // A bare hex directory outside a pod or /docker is nobody's container.
        assert_eq!(classify(&format!("/{ID}")), Workload::Other);
    }

    #[test]
    fn kubernetes_systemd_driver() {
        let u = uid_underscored();
        for (slice, qos) in [
            (
                format!("kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
                QosClass::Burstable,
            ),
            (
                format!("kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"),
                QosClass::BestEffort,
            ),
            (format!("kubepods-pod{u}.slice"), QosClass::Guaranteed),
        ] {
            let pod = format!("/kubepods.slice/{slice}");
            let expect = |container| Workload::Pod {
                uid: UID.into(),
                qos,
                container,
            };
            assert_eq!(classify(&pod), expect(None), "{pod}");
            for (scope, runtime) in [
                (format!("cri-containerd-{ID}.scope"), Runtime::Containerd),
                (format!("crio-{ID}.scope"), Runtime::CriO),
                (format!("docker-{ID}.scope"), Runtime::Docker),
            ] {
                let path = format!("{pod}/{scope}");
                assert_eq!(classify(&path), expect(c(Some(runtime))), "{path}");
            }
        }
        let w = classify(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(w.label(None), format!("pod:{UID}/containerd:4b825dc642cb"));
        assert_eq!(
            w.netns_owner().label(None),
            format!("pod:{UID}"),
            "a pod's containers share its namespace"
        );
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        for (dir, qos) in [
            ("/kubepods/burstable", QosClass::Burstable),
            ("/kubepods/besteffort", QosClass::BestEffort),
            ("/kubepods", QosClass::Guaranteed),
        ] {
            let path = format!("{dir}/pod{UID}/{ID}");
            assert_eq!(
                classify(&path),
                Workload::Pod {
                    uid: UID.into(),
                    qos,
                    container: c(None)
                },
                "{path}"
            );
        }
        // `pod…` outside kubepods is not a pod.
        assert_eq!(classify(&format!("/pod{UID}")), Workload::Other);
    }

    #[test]
    fn paths_seen_from_another_cgroup_namespace() {
        let u = uid_underscored();
        let w = classify(&format!(
            "/../../kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(w.kind(), "pod");
        assert_eq!(classify("/../.."), Workload::Root);
    }

    #[test]
    fn kind_node_inside_docker_is_the_pod() {
        let u = uid_underscored();
        let path = format!(
            "/system.slice/docker-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            classify(&path),
            Workload::Pod {
                uid: UID.into(),
                qos: QosClass::BestEffort,
                container: c(Some(Runtime::Containerd))
            }
        );
    }

    #[test]
    fn serde_round_trip_is_tagged() {
        let w = classify(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        let j = serde_json::to_value(&w).unwrap();
        assert_eq!(j["kind"], "pod");
        assert_eq!(j["qos"], "burstable");
        assert_eq!(j["uid"], UID);
        assert!(j["container"]["runtime"].is_null());
        assert_eq!(serde_json::from_value::<Workload>(j).unwrap(), w);
        let u: Workload =
            serde_json::from_str(r#"{"kind":"unit","unit":"a.service","user_unit":null}"#).unwrap();
        assert_eq!(u.label(None), "a.service");
        for q in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            assert_eq!(serde_json::to_value(q).unwrap(), q.name());
        }
        assert_eq!(
            serde_json::to_string(&Workload::Removed).unwrap(),
            r#"{"kind":"removed"}"#
        );
    }
}
