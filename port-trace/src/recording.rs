//! Recordings: the JSON lines of `trace --format json`, optionally followed by one
//! `{"meta": "netns", ...}` line per namespace with its range and socket table at the end of the
//! recording (written by `record`), so `analyze` can work offline.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    event::Event,
    pressure::{NetnsRef, dump_sockets, read_range},
    report::NetnsState,
};

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{path} line {line}: {reason}")]
    Parse {
        path: String,
        line: usize,
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "meta", rename_all = "snake_case")]
pub enum Meta {
    Netns(NetnsState),
}

#[derive(Debug, Default)]
pub struct Recording {
    pub events: Vec<Event>,
    pub namespaces: Vec<NetnsState>,
}

pub fn meta_line(state: &NetnsState) -> String {
    serde_json::to_string(&Meta::Netns(state.clone())).unwrap_or_default()
}

pub fn read(path: &Path) -> Result<Recording, RecordingError> {
    let io = |e: std::io::Error| RecordingError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let file = fs::File::open(path).map_err(io)?;
    let mut rec = Recording::default();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parse_err = |e: serde_json::Error| RecordingError::Parse {
            path: path.display().to_string(),
            line: i + 1,
            reason: e.to_string(),
        };
        if line.contains("\"meta\"") {
            let Meta::Netns(ns) = serde_json::from_str(line).map_err(parse_err)?;
            rec.namespaces.push(ns);
        } else {
            rec.events
                .push(serde_json::from_str(line).map_err(parse_err)?);
        }
    }
    Ok(rec)
}

/// Where each namespace seen in `events` can be entered: an explicit path, our own namespace,
/// a named one in /run/netns, then a thread or process that reported from it and still lives.
fn locate(netns: u32, events: &[Event], hint: Option<&Path>) -> Option<NetnsRef> {
    let ino = |p: &Path| fs::metadata(p).ok().map(|m| m.ino() as u32);
    if let Some(h) = hint
        && ino(h) == Some(netns)
    {
        return Some(NetnsRef::Path(h.to_path_buf()));
    }
    if ino(Path::new("/proc/self/ns/net")) == Some(netns) {
        return Some(NetnsRef::Current);
    }
    // Namespaces made with `ip netns add` outlive their processes.
    if let Ok(dir) = fs::read_dir("/run/netns") {
        for entry in dir.flatten() {
            if ino(&entry.path()) == Some(netns) {
                return Some(NetnsRef::Path(entry.path()));
            }
        }
    }
    let mut tried = 0;
    for e in events.iter().rev().filter(|e| e.netns == netns) {
        for p in [
            PathBuf::from(format!("/proc/{}/task/{}/ns/net", e.pid, e.tid)),
            PathBuf::from(format!("/proc/{}/ns/net", e.pid)),
        ] {
            if ino(&p) == Some(netns) {
                return Some(NetnsRef::Path(p));
            }
        }
        tried += 1;
        if tried > 64 {
            break;
        }
    }
    None
}

/// Reads the range and socket table of every namespace the events came from.
pub fn snapshot(events: &[Event], hint: Option<&Path>) -> Vec<NetnsState> {
    let mut seen: BTreeMap<u32, ()> = BTreeMap::new();
    for e in events {
        seen.insert(e.netns, ());
    }
    seen.into_keys()
        .map(|netns| match locate(netns, events, hint) {
            None => NetnsState {
                netns,
                note: Some("no live process left in this namespace; range and sockets unknown (pass --netns PATH)".into()),
                ..Default::default()
            },
            Some(r) => {
                let mut notes = Vec::new();
                let range = read_range(&r).map_err(|e| notes.push(e.to_string())).ok();
                let sockets = dump_sockets(&r).map_err(|e| notes.push(e.to_string())).ok();
                NetnsState {
                    netns,
                    range,
                    sockets,
                    note: (!notes.is_empty()).then(|| notes.join("; ")),
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pressure::UsableRange;

    #[test]
    fn events_and_meta_round_trip() {
        let dir = std::env::temp_dir().join(format!("pt-rec-{}", std::process::id()));
        let ev = r#"{"ts_ns":1,"op":"bind","proto":"udp","family":"ipv4","port":40000,"saddr":"0.0.0.0","daddr":null,"dport":null,"result":"ok","pid":1,"tid":1,"comm":"x","uid":0,"cgroup_id":1,"netns":9,"hook":"h"}"#;
        let ns = NetnsState {
            netns: 9,
            range: Some(UsableRange::new(40000, 40003, vec![])),
            sockets: Some(vec![]),
            note: None,
        };
        fs::write(&dir, format!("{ev}\n\n{}\n", meta_line(&ns))).unwrap();
        let rec = read(&dir).unwrap();
        fs::remove_file(&dir).unwrap();
        assert_eq!(rec.events.len(), 1);
        assert_eq!(rec.events[0].port, 40000);
        assert_eq!(rec.namespaces, vec![ns]);
    }

    #[test]
    fn bad_line_names_its_number() {
        let p = std::env::temp_dir().join(format!("pt-rec-bad-{}", std::process::id()));
        fs::write(&p, "{\"ts_ns\": 1}\n").unwrap();
        let err = read(&p).unwrap_err().to_string();
        fs::remove_file(&p).unwrap();
        assert!(err.contains("line 1"), "{err}");
    }
}
