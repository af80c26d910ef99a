//! The programs of each hook set, by the names the eBPF object gives them, with what the
//! loader attaches them to. The eBPF crate names its functions after these; a root test loads
//! every one of them from the built object.

/// What a cgroup-attached program is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupKind {
    SockAddr,
    Sock,
    SockOps,
}

/// A program attached to the cgroup v2 directory.
pub struct CgroupProgram {
    pub name: &'static str,
    pub kind: CgroupKind,
    /// What users see in `check` and on the `tracing:` line.
    pub shown: &'static str,
    /// Attached only on request (`--udp-send-hooks`): it runs on a path the host uses often
    /// without choosing a port.
    pub opt_in: bool,
}

/// The cgroup hook set's cgroup programs.
pub const CGROUP: &[CgroupProgram] = &[
    cgroup(
        "pt_sock_create",
        CgroupKind::Sock,
        "cgroup_sock/sock_create",
    ),
    cgroup(
        "pt_sock_release",
        CgroupKind::Sock,
        "cgroup_sock/sock_release",
    ),
    cgroup(
        "pt_connect4",
        CgroupKind::SockAddr,
        "cgroup_sock_addr/connect4",
    ),
    cgroup(
        "pt_connect6",
        CgroupKind::SockAddr,
        "cgroup_sock_addr/connect6",
    ),
    cgroup("pt_bind4", CgroupKind::SockAddr, "cgroup_sock_addr/bind4"),
    cgroup("pt_bind6", CgroupKind::SockAddr, "cgroup_sock_addr/bind6"),
    cgroup("pt_post_bind4", CgroupKind::Sock, "cgroup_sock/post_bind4"),
    cgroup("pt_post_bind6", CgroupKind::Sock, "cgroup_sock/post_bind6"),
    opt_in(
        "pt_sendmsg4",
        CgroupKind::SockAddr,
        "cgroup_sock_addr/sendmsg4",
    ),
    opt_in(
        "pt_sendmsg6",
        CgroupKind::SockAddr,
        "cgroup_sock_addr/sendmsg6",
    ),
    cgroup("pt_sockops", CgroupKind::SockOps, "sock_ops"),
];

const fn cgroup(name: &'static str, kind: CgroupKind, shown: &'static str) -> CgroupProgram {
    CgroupProgram {
        name,
        kind,
        shown,
        opt_in: false,
    }
}

const fn opt_in(name: &'static str, kind: CgroupKind, shown: &'static str) -> CgroupProgram {
    CgroupProgram {
        name,
        kind,
        shown,
        opt_in: true,
    }
}

/// A raw tracepoint program of the cgroup hook set: it gets the tracepoint's arguments, not
/// its record, so it depends on no tracefs format.
pub struct RawTracepointProgram {
    pub name: &'static str,
    /// The tracepoint's category (its tracefs directory); attaching needs only `event`.
    pub category: &'static str,
    pub event: &'static str,
    /// What users see in `check` and on the `tracing:` line.
    pub shown: &'static str,
}

/// The cgroup hook set's raw tracepoint programs.
pub const RAW_TRACEPOINTS: &[RawTracepointProgram] = &[RawTracepointProgram {
    name: "pt_inet_sock_set_state",
    category: "sock",
    event: "inet_sock_set_state",
    shown: "raw_tracepoint/sock:inet_sock_set_state",
}];

/// A kernel function that chooses a port, and the programs of the fexit and kprobe hook sets
/// on it: the entry program stashes what was asked, the exit program reports the outcome.
pub struct PortFunction {
    pub function: &'static str,
    pub fentry: &'static str,
    pub fexit: &'static str,
    pub kprobe: &'static str,
    pub kretprobe: &'static str,
}

/// The functions hooked by the fexit and kprobe hook sets.
pub const PORT_FUNCTIONS: &[PortFunction] = &[
    PortFunction {
        function: "inet_hash_connect",
        fentry: "pt_fentry_inet_hash_connect",
        fexit: "pt_fexit_inet_hash_connect",
        kprobe: "pt_kprobe_inet_hash_connect",
        kretprobe: "pt_kretprobe_inet_hash_connect",
    },
    PortFunction {
        function: "inet6_hash_connect",
        fentry: "pt_fentry_inet6_hash_connect",
        fexit: "pt_fexit_inet6_hash_connect",
        kprobe: "pt_kprobe_inet6_hash_connect",
        kretprobe: "pt_kretprobe_inet6_hash_connect",
    },
    PortFunction {
        function: "inet_csk_get_port",
        fentry: "pt_fentry_inet_csk_get_port",
        fexit: "pt_fexit_inet_csk_get_port",
        kprobe: "pt_kprobe_inet_csk_get_port",
        kretprobe: "pt_kretprobe_inet_csk_get_port",
    },
    PortFunction {
        function: "udp_lib_get_port",
        fentry: "pt_fentry_udp_lib_get_port",
        fexit: "pt_fexit_udp_lib_get_port",
        kprobe: "pt_kprobe_udp_lib_get_port",
        kretprobe: "pt_kretprobe_udp_lib_get_port",
    },
];
