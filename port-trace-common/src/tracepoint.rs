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
    /// Host order.
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
}

const SET_STATE_FIELDS: &[(&str, usize)] = {
    use inet_sock_set_state::*;
    &[
        ("skaddr", SKADDR),
        ("oldstate", OLDSTATE),
        ("newstate", NEWSTATE),
        ("sport", SPORT),
        ("dport", DPORT),
        ("family", FAMILY),
        ("protocol", PROTOCOL),
        ("saddr", SADDR),
        ("daddr", DADDR),
        ("saddr_v6", SADDR_V6),
        ("daddr_v6", DADDR_V6),
    ]
};
/// Every tracepoint of the cgroup hook set and the fields its programs read.
pub const FORMATS: &[Format] = &[Format {
    category: "sock",
    event: "inet_sock_set_state",
    fields: SET_STATE_FIELDS,
}];
