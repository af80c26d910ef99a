//! Every stream's verdict from events fed one at a time in time order: connect() streams through
//! one [`Analyzer`] (one range, one sequence across destinations), the others each through their
//! own [`Classifier`] on their namespace's range. State per stream, never per event. `serve`'s
//! pattern gauges need only this; [`super::Summarizer`] adds the rest of the summary.

use std::collections::{HashMap, HashSet};

use crate::{
    analysis::{
        Analyzer, Classifier, GlobalAnalysis, StreamAnalysis, StreamKey, StreamMap, classify_local,
        local_verdict,
    },
    event::Op,
    netns::UsableRange,
};

pub struct Verdicts {
    ranges: HashMap<u32, UsableRange>,
    default_range: UsableRange,
    connects: Analyzer,
    local: StreamMap<Classifier>,
    /// Connect streams seen failing (those that never succeed have no verdict of their own).
    failing: HashSet<StreamKey>,
}

impl Verdicts {
    /// `ranges` by namespace, `default_range` for the others. Every connect() stream is
    /// classified on the range of `connect_netns`, the namespace of the first successful
    /// connect() (in arrival order): the sequence across destinations needs one range.
    pub fn new(
        ranges: HashMap<u32, UsableRange>,
        default_range: UsableRange,
        connect_netns: Option<u32>,
    ) -> Self {
        let r = connect_netns
            .and_then(|n| ranges.get(&n))
            .unwrap_or(&default_range);
        let connects = Analyzer::new((r.low, r.high));
        Verdicts {
            ranges,
            default_range,
            connects,
            local: StreamMap::default(),
            failing: HashSet::new(),
        }
    }

    /// The range of a namespace.
    pub fn range(&self, netns: u32) -> &UsableRange {
        self.ranges.get(&netns).unwrap_or(&self.default_range)
    }

    /// One event of stream `key`: its port when `ok`.
    pub fn push(&mut self, key: &StreamKey, port: u16, ok: bool) {
        if key.op == Op::Connect {
            if ok {
                self.connects.push(key, port);
            } else if self.connects.ports(key) == 0 && !self.failing.contains(key) {
                self.failing.insert(key.clone());
            }
            return;
        }
        let c = match self.local.get_mut(key) {
            Some(c) => c,
            None => {
                let r = self.range(key.netns);
                let c = Classifier::new((r.low, r.high));
                self.local.entry(key.clone()).or_insert(c)
            }
        };
        if ok {
            c.push(port);
        }
    }

    /// Calls `f` with every stream's key, successful allocations, verdict and range, in key
    /// order and one at a time, dropping each stream's state as it goes; returns the verdict
    /// on the connect() sequence across destinations.
    pub fn finish(
        mut self,
        mut f: impl FnMut(&StreamKey, usize, StreamAnalysis, &UsableRange),
    ) -> GlobalAnalysis {
        let global = self.connects.global();
        let mut keys: Vec<StreamKey> = self
            .connects
            .keys()
            .chain(self.local.keys())
            .chain(self.failing.iter().filter(|k| self.connects.ports(k) == 0))
            .cloned()
            .collect();
        keys.sort_unstable();
        self.failing = HashSet::new();
        for key in keys {
            let range = self.ranges.get(&key.netns).unwrap_or(&self.default_range);
            if let Some(c) = self.local.remove(&key) {
                f(&key, c.ports(), local_verdict(c.finish()), range);
            } else if let Some((ports, a)) = self.connects.take(&key, &global) {
                f(&key, ports, a, range);
            } else {
                f(&key, 0, classify_local(&[], (range.low, range.high)), range);
            }
        }
        global
    }
}
