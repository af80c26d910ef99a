//! What the kernel knew about each network namespace at one moment: its ephemeral range and
//! its socket table. Recordings end with one per namespace; `serve` takes one per refresh.

use std::{collections::BTreeSet, path::Path};

use serde::{Deserialize, Serialize};

use super::{
    NetnsRef, SocketRecord, UsableRange, dump_sockets, locate, own_netns,
    range::{TcpSysctls, read_tcp_sysctls},
    read_range,
};
use crate::{errors::chain, event::Event};

/// One namespace's range and socket table, or why they are missing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetnsState {
    pub netns: u32,
    pub range: Option<UsableRange>,
    pub sockets: Option<Vec<SocketRecord>>,
    /// Why range or sockets are missing.
    pub note: Option<String>,
    /// The TCP sysctls that decide how long closed connections hold their ports (absent in
    /// older recordings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSysctls>,
    /// When the socket table was read, on the events' clock (wall-clock ns since the Unix
    /// epoch): TIME_WAIT expiries count from here. Absent in older recordings (the last event
    /// stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_ns: Option<u64>,
}

/// Now on the clock events are reported on (wall-clock ns since the Unix epoch).
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl NetnsState {
    /// Reads the range and socket table of a namespace we can enter.
    pub fn read(netns: u32, at: &NetnsRef) -> Self {
        let mut notes = Vec::new();
        let range = read_range(at).map_err(|e| notes.push(chain(&e))).ok();
        let taken_ns = wall_ns();
        let sockets = dump_sockets(at).map_err(|e| notes.push(chain(&e))).ok();
        let tcp = read_tcp_sysctls(at).map_err(|e| notes.push(chain(&e))).ok();
        NetnsState {
            netns,
            range,
            sockets,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
            tcp,
            taken_ns: Some(taken_ns),
        }
    }
}

/// Reads the range and socket table of every namespace the events came from; `hint` is the
/// user's `--netns` path, tried first.
pub fn snapshot(events: &[Event], hint: Option<&Path>) -> Vec<NetnsState> {
    let seen: BTreeSet<u32> = events.iter().map(|e| e.netns).collect();
    seen.into_iter()
        .map(|netns| match locate(netns, events, hint) {
            Some(at) => NetnsState::read(netns, &at),
            None => NetnsState {
                netns,
                note: Some("no live process left in this namespace; range and sockets unknown (pass --netns PATH)".into()),
                ..Default::default()
            },
        })
        .collect()
}

/// [`snapshot`], plus our own namespace (the daemon watches it even before any event).
pub fn snapshot_with_own(events: &[Event]) -> Vec<NetnsState> {
    let mut out = snapshot(events, None);
    if let Some(own) = own_netns()
        && !out.iter().any(|n| n.netns == own)
    {
        out.push(NetnsState::read(own, &NetnsRef::Current));
    }
    out
}
