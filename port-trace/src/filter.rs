//! Which events the user asked to see.

use std::{os::unix::fs::MetadataExt, path::Path};

use crate::event::Event;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub proto: Option<String>,
    pub netns: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetnsError {
    #[error("--netns {0}: not an inode number and not a namespace file ({1})")]
    Bad(String, String),
}

/// Accepts an inode number, a path such as /proc/PID/ns/net or /run/netns/NAME, or a bare
/// `ip netns` name.
pub fn parse_netns(arg: &str) -> Result<u32, NetnsError> {
    if let Ok(n) = arg.parse::<u32>() {
        return Ok(n);
    }
    let candidates = [arg.to_string(), format!("/run/netns/{arg}")];
    let mut last = String::new();
    for c in candidates.iter() {
        match std::fs::metadata(Path::new(c)) {
            Ok(m) => return Ok(m.ino() as u32),
            Err(e) => last = e.to_string(),
        }
    }
    Err(NetnsError::Bad(arg.into(), last))
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        (self.pids.is_empty() || self.pids.contains(&e.pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == &e.comm))
            && self.proto.as_ref().is_none_or(|p| p == &e.proto)
            && self.netns.is_none_or(|n| n == e.netns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Clock, decode};
    use port_trace_common::{PortEvent, Proto};

    fn ev(pid: u32, comm: &[u8], p: u8, netns: u32) -> Event {
        let mut r = PortEvent {
            pid,
            proto: p,
            netns,
            family: 2,
            op: 1,
            ..Default::default()
        };
        r.comm[..comm.len()].copy_from_slice(comm);
        decode(&r, &Clock::identity())
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(Filter::default().matches(&ev(1, b"a", Proto::Tcp as u8, 1)));
    }

    #[test]
    fn all_conditions_must_hold() {
        let f = Filter {
            pids: vec![5, 6],
            comms: vec!["curl".into()],
            proto: Some("udp".into()),
            netns: Some(77),
        };
        assert!(f.matches(&ev(6, b"curl", Proto::Udp as u8, 77)));
        assert!(!f.matches(&ev(7, b"curl", Proto::Udp as u8, 77)));
        assert!(!f.matches(&ev(6, b"wget", Proto::Udp as u8, 77)));
        assert!(!f.matches(&ev(6, b"curl", Proto::Tcp as u8, 77)));
        assert!(!f.matches(&ev(6, b"curl", Proto::Udp as u8, 78)));
    }

    #[test]
    fn netns_accepts_inode_and_path() {
        assert_eq!(parse_netns("4026531840"), Ok(4026531840));
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        assert_eq!(parse_netns("/proc/self/ns/net"), Ok(own));
        assert!(parse_netns("/nonexistent/ns").is_err());
    }
}
