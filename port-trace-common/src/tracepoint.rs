//! Field offsets of the tracepoints the cgroup hook set reads, as compiled into its programs.
//!
//! Tracepoint records are read at fixed offsets (no BTF for them in the programs); the loader
//! checks each `FIELDS` list against the running kernel's `format` file before attaching, so a
//! kernel that moved a field is refused with its name instead of being misread.

/// A tracepoint whose fields the programs read: (field name in the format file, offset).
pub struct Format {
    pub category: &'static str,
    pub event: &'static str,
    pub fields: &'static [(&'static str, usize)],
}

/// `sock/inet_sock_set_state` (include/trace/events/sock.h).
pub mod inet_sock_set_state {
    pub const SKADDR: usize = 8;
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const SADDR_V6: usize = 40;
}

/// `syscalls/sys_enter_*`: after the 8-byte common header and the syscall number, each
/// argument takes 8 bytes from offset 16 (kernel/trace/trace_syscalls.c).
pub mod sys_enter {
    /// Offset of argument `n` (0-based).
    pub const fn arg(n: usize) -> usize {
        16 + 8 * n
    }
}

/// `syscalls/sys_exit_*`: the return value, a `long` at offset 16.
pub mod sys_exit {
    pub const RET: usize = 16;
}

const SET_STATE_FIELDS: &[(&str, usize)] = {
    use inet_sock_set_state::*;
    &[
        ("skaddr", SKADDR),
        ("oldstate", OLDSTATE),
        ("newstate", NEWSTATE),
        ("sport", SPORT),
        ("family", FAMILY),
        ("protocol", PROTOCOL),
        ("saddr", SADDR),
        ("saddr_v6", SADDR_V6),
    ]
};
const EXIT_FIELDS: &[(&str, usize)] = &[("ret", sys_exit::RET)];

/// Every tracepoint of the cgroup hook set and the fields its programs read.
pub const FORMATS: &[Format] = &[
    Format {
        category: "sock",
        event: "inet_sock_set_state",
        fields: SET_STATE_FIELDS,
    },
    // sendto(fd, buff, len, flags, addr, addr_len)
    Format {
        category: "syscalls",
        event: "sys_enter_sendto",
        fields: &[("fd", sys_enter::arg(0)), ("addr", sys_enter::arg(4))],
    },
    // sendmsg(fd, msg, flags)
    Format {
        category: "syscalls",
        event: "sys_enter_sendmsg",
        fields: &[("fd", sys_enter::arg(0)), ("msg", sys_enter::arg(1))],
    },
    // sendmmsg(fd, mmsg, vlen, flags)
    Format {
        category: "syscalls",
        event: "sys_enter_sendmmsg",
        fields: &[("fd", sys_enter::arg(0)), ("mmsg", sys_enter::arg(1))],
    },
    Format {
        category: "syscalls",
        event: "sys_exit_connect",
        fields: EXIT_FIELDS,
    },
    Format {
        category: "syscalls",
        event: "sys_exit_bind",
        fields: EXIT_FIELDS,
    },
    Format {
        category: "syscalls",
        event: "sys_exit_listen",
        fields: EXIT_FIELDS,
    },
    Format {
        category: "syscalls",
        event: "sys_exit_sendto",
        fields: EXIT_FIELDS,
    },
    Format {
        category: "syscalls",
        event: "sys_exit_sendmsg",
        fields: EXIT_FIELDS,
    },
    Format {
        category: "syscalls",
        event: "sys_exit_sendmmsg",
        fields: EXIT_FIELDS,
    },
];
