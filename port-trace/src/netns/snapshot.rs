//! What the kernel knew about each network namespace at one moment: its ephemeral range and
//! its socket table. Recordings end with one per namespace; `serve` takes one per refresh.

use std::{collections::BTreeSet, path::Path};

use serde::{Deserialize, Serialize};

use super::{NetnsRef, SocketRecord, UsableRange, dump_sockets, locate, own_netns, read_range};
use crate::{errors::chain, event::Event};

/// One namespace's range and socket table, or why they are missing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetnsState {
    pub netns: u32,
    pub range: Option<UsableRange>,
    pub sockets: Option<Vec<SocketRecord>>,
    /// Why range or sockets are missing.
    pub note: Option<String>,
}

impl NetnsState {
    /// Reads the range and socket table of a namespace we can enter.
    pub fn read(netns: u32, at: &NetnsRef) -> Self {
        let mut notes = Vec::new();
        let range = read_range(at).map_err(|e| notes.push(chain(&e))).ok();
        let sockets = dump_sockets(at).map_err(|e| notes.push(chain(&e))).ok();
        NetnsState {
            netns,
            range,
            sockets,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
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
