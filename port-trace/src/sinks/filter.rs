//! Which events the user asked to see.

use crate::event::{Event, Proto};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub proto: Option<Proto>,
    pub netns: Option<u32>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        (self.pids.is_empty() || self.pids.contains(&e.pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == &e.comm))
            && self.proto.is_none_or(|p| p == e.proto)
            && self.netns.is_none_or(|n| n == e.netns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Op, Outcome, test_event};

    fn ev(pid: u32, comm: &str, p: Proto, netns: u32) -> Event {
        let mut e = test_event(Op::Bind, p, 40000, None, Outcome::Ok, 1);
        e.pid = pid;
        e.comm = comm.into();
        e.netns = netns;
        e
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(Filter::default().matches(&ev(1, "a", Proto::Tcp, 1)));
    }

    #[test]
    fn all_conditions_must_hold() {
        let f = Filter {
            pids: vec![5, 6],
            comms: vec!["curl".into()],
            proto: Some(Proto::Udp),
            netns: Some(77),
        };
        assert!(f.matches(&ev(6, "curl", Proto::Udp, 77)));
        assert!(!f.matches(&ev(7, "curl", Proto::Udp, 77)));
        assert!(!f.matches(&ev(6, "wget", Proto::Udp, 77)));
        assert!(!f.matches(&ev(6, "curl", Proto::Tcp, 77)));
        assert!(!f.matches(&ev(6, "curl", Proto::Udp, 78)));
    }
}
