//! NAT port spaces and how full they are: pure bookkeeping of the live source translations
//! that conntrack reported (NEW adds, DESTROY removes), and which space a NAT failure most
//! likely hit. No I/O.

use std::{collections::HashMap, net::IpAddr};

use super::decode::{SourceNat, Tuple5};
use crate::event::{NatRange, Proto};

/// One NAT port space: the kernel needs the whole translated tuple to be unique, so for a
/// given translated source address and destination (after any DNAT) only the NAT range's
/// ports are left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpaceKey {
    pub proto: Proto,
    pub translated: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl SpaceKey {
    pub fn of(n: &SourceNat) -> Self {
        SpaceKey {
            proto: n.orig.proto,
            translated: n.translated_addr,
            daddr: n.peer_addr,
            dport: n.peer_port,
        }
    }
}

/// Most live translations followed per namespace: conntrack's own default maximum
/// (`nf_conntrack_max`) is 262144 on most hosts; past this bound new ones are counted as
/// untracked and the occupancy is a lower bound.
pub const MAX_LIVE: usize = 1 << 20;

/// The live source translations of one namespace.
#[derive(Debug, Default)]
pub struct Occupancy {
    /// By original tuple, which DESTROY repeats.
    live: HashMap<Tuple5, SpaceKey>,
    counts: HashMap<SpaceKey, u32>,
    /// Translations not followed because of [`MAX_LIVE`].
    pub untracked: u64,
}

impl Occupancy {
    /// A new translation; returns its space's live count, it included.
    pub fn insert(&mut self, n: &SourceNat) -> u32 {
        let key = SpaceKey::of(n);
        if let Some(old) = self.live.get(&n.orig).copied() {
            // Seen already (a dump racing an event): counted once.
            return self.counts.get(&old).copied().unwrap_or(0);
        }
        if self.live.len() >= MAX_LIVE {
            self.untracked += 1;
            return self.counts.get(&key).copied().unwrap_or(0);
        }
        self.live.insert(n.orig, key);
        let c = self.counts.entry(key).or_default();
        *c += 1;
        *c
    }

    /// A connection conntrack destroyed.
    pub fn remove(&mut self, orig: &Tuple5) {
        if let Some(key) = self.live.remove(orig)
            && let Some(c) = self.counts.get_mut(&key)
        {
            *c -= 1;
            if *c == 0 {
                self.counts.remove(&key);
            }
        }
    }

    /// Forgets everything (before a fresh dump of the table).
    pub fn clear(&mut self) {
        self.live.clear();
        self.counts.clear();
    }

    /// Live translations in one space.
    pub fn in_use(&self, key: &SpaceKey) -> u32 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    /// The `n` fullest spaces, fullest first (ties by key).
    pub fn top(&self, n: usize) -> Vec<(SpaceKey, u32)> {
        let mut v: Vec<(SpaceKey, u32)> = self.counts.iter().map(|(k, c)| (*k, *c)).collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// The space a NAT failure is charged to: conntrack counts failed inserts without saying
    /// which tuple failed, so the failure is charged to the one space whose every port of
    /// `range` is taken. With none or several such spaces it stays unattributed.
    pub fn failing_space(&self, range: &NatRange) -> Option<(SpaceKey, u32)> {
        let mut full = self
            .counts
            .iter()
            .filter(|(_, c)| **c >= range.size())
            .map(|(k, c)| (*k, *c));
        let first = full.next()?;
        full.next().is_none().then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::NatRangeSource;
    use std::net::Ipv4Addr;

    fn nat(sport: u16, dport: u16, tport: u16) -> SourceNat {
        SourceNat {
            orig: Tuple5 {
                proto: Proto::Tcp,
                src: Ipv4Addr::new(192, 0, 2, 2).into(),
                sport,
                dst: Ipv4Addr::new(198, 51, 100, 2).into(),
                dport,
            },
            translated_addr: Ipv4Addr::new(198, 51, 100, 1).into(),
            translated_port: tport,
            peer_addr: Ipv4Addr::new(198, 51, 100, 2).into(),
            peer_port: dport,
        }
    }

    const RANGE: NatRange = NatRange {
        low: 40000,
        high: 40001,
        source: NatRangeSource::Configured,
    };

    #[test]
    fn counts_follow_new_and_destroy_per_destination() {
        let mut o = Occupancy::default();
        assert_eq!(o.insert(&nat(1000, 80, 40000)), 1);
        assert_eq!(o.insert(&nat(1000, 80, 40000)), 1, "a repeat counts once");
        assert_eq!(o.insert(&nat(1001, 80, 40001)), 2);
        assert_eq!(o.insert(&nat(1002, 81, 40000)), 1, "another destination");
        let full = o.failing_space(&RANGE).unwrap();
        assert_eq!(full.0.dport, 80);
        assert_eq!(o.insert(&nat(1003, 81, 40001)), 2);
        assert_eq!(o.failing_space(&RANGE), None, "two full spaces: ambiguous");
        o.remove(&nat(1000, 80, 40000).orig);
        o.remove(&nat(1000, 80, 40000).orig);
        assert_eq!(o.in_use(&SpaceKey::of(&nat(0, 80, 0))), 1);
        assert_eq!(o.top(1)[0].0.dport, 81);
        o.clear();
        assert!(o.top(5).is_empty());
    }
}
