//! Recordings: the JSON lines of `trace --format json`, optionally followed by one
//! `{"meta": "netns", ...}` line per namespace with its range and socket table at the end of the
//! recording (written by `record`), so `analyze` can work offline.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{event::Event, netns::NetnsState};

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} line {line}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
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

/// Whether a line is a namespace snapshot: it has a top-level `meta` key. (A line that merely
/// contains the word, e.g. an event whose comm is `meta`, is an event.)
fn is_meta(line: &str) -> Result<bool, serde_json::Error> {
    #[derive(Deserialize)]
    struct Kind {
        meta: Option<serde::de::IgnoredAny>,
    }
    Ok(serde_json::from_str::<Kind>(line)?.meta.is_some())
}

pub fn read(path: &Path) -> Result<Recording, RecordingError> {
    let io = |source| RecordingError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    let mut rec = Recording::default();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parse_err = |source| RecordingError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        };
        if is_meta(line).map_err(parse_err)? {
            let Meta::Netns(ns) = serde_json::from_str(line).map_err(parse_err)?;
            rec.namespaces.push(ns);
        } else {
            rec.events
                .push(serde_json::from_str(line).map_err(parse_err)?);
        }
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::UsableRange;

    /// Recordings made before sockets carried their TIME_WAIT expiry and snapshots their time
    /// and TCP sysctls still read.
    #[test]
    fn old_meta_lines_still_read() {
        let dir = std::env::temp_dir().join(format!("pt-rec-old-{}", std::process::id()));
        let meta = r#"{"meta":"netns","netns":9,"range":{"low":40000,"high":40003,"reserved":[],"usable":4},"sockets":[{"proto":"tcp","family":"v4","state":"time_wait","local_addr":"127.0.0.1","local_port":40000,"remote_addr":"127.0.0.1","remote_port":5000}],"note":null}"#;
        fs::write(&dir, format!("{meta}\n")).unwrap();
        let rec = read(&dir);
        fs::remove_file(&dir).unwrap();
        let rec = rec.unwrap();
        let ns = &rec.namespaces[0];
        assert_eq!((ns.tcp, ns.taken_ns), (None, None));
        assert_eq!(ns.sockets.as_ref().unwrap()[0].time_wait_ms, None);
    }

    #[test]
    fn events_and_meta_round_trip() {
        let dir = std::env::temp_dir().join(format!("pt-rec-{}", std::process::id()));
        let ev = r#"{"ts_ns":1,"op":"bind","proto":"udp","family":"ipv4","port":40000,"saddr":"0.0.0.0","daddr":null,"dport":null,"result":"ok","pid":1,"tid":1,"comm":"x","uid":0,"cgroup_id":1,"netns":9,"hook":"cgroup/post_bind4"}"#;
        let ns = NetnsState {
            netns: 9,
            range: Some(UsableRange::new(40000, 40003, vec![])),
            sockets: Some(vec![]),
            note: None,
            ..Default::default()
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
        let err = crate::errors::chain(&read(&p).unwrap_err());
        fs::remove_file(&p).unwrap();
        assert!(err.contains("line 1"), "{err}");
    }

    /// Issue row 4: a process named `meta` does not make its events unreadable.
    #[test]
    fn an_event_from_a_process_named_meta_is_an_event() {
        let p = std::env::temp_dir().join(format!("pt-rec-meta-{}", std::process::id()));
        let ev = r#"{"ts_ns":1,"op":"bind","proto":"udp","family":"ipv4","port":40000,"saddr":"0.0.0.0","daddr":null,"dport":null,"result":"ok","pid":1,"tid":1,"comm":"meta","uid":0,"cgroup_id":1,"netns":9,"hook":"cgroup/post_bind4"}"#;
        fs::write(&p, format!("{ev}\n")).unwrap();
        let rec = read(&p);
        fs::remove_file(&p).unwrap();
        let rec = rec.unwrap();
        assert_eq!(rec.events.len(), 1);
        assert_eq!(rec.events[0].comm, "meta");
        assert!(rec.namespaces.is_empty());
    }
}
