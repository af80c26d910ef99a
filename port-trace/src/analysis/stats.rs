//! Step statistics and the statistical tests used by the classifier.
//!
//! Everything here works on *offsets*: a port `p` in the usable range
//! `[low, high]` becomes `p - low`, so the range is a ring of `size =
//! high - low + 1` positions and ports wrap from `high` back to `low`.
//! A *forward step* from offset `a` to offset `b` is `(b - a) mod size`, in
//! `0..size`.

use statrs::distribution::{Binomial, ChiSquared, ContinuousCDF, DiscreteCDF, StudentsT};
use std::collections::BTreeMap;

/// Steps with `0 < step <= SMALL_STEP` are "small" (Linux >= 5.18 connect()
/// steps by 2..=16 within one destination and one 10 s window).
pub const SMALL_STEP: u32 = 16;

/// The online predictor accepts a guess within this many ports of the truth.
pub const PREDICT_WINDOW: u32 = 8;

/// The usable port range seen as a ring of offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ring {
    pub low: u16,
    pub high: u16,
    /// Number of ports in the range, `high - low + 1`.
    pub size: u32,
}

impl Ring {
    /// Builds the ring; a reversed range is swapped.
    pub fn new(range: (u16, u16)) -> Self {
        let (low, high) = if range.0 <= range.1 {
            range
        } else {
            (range.1, range.0)
        };
        Ring {
            low,
            high,
            size: u32::from(high) - u32::from(low) + 1,
        }
    }

    /// Offset of `port` inside the range, `None` when it lies outside.
    pub fn offset(&self, port: u16) -> Option<u32> {
        (self.low..=self.high)
            .contains(&port)
            .then(|| u32::from(port - self.low))
    }

    /// Forward step from offset `from` to offset `to`, wrapping in the range.
    pub fn step(&self, from: u32, to: u32) -> u32 {
        (to + self.size - from) % self.size
    }

    /// Distance between two offsets going the short way round the ring.
    pub fn distance(&self, a: u32, b: u32) -> u32 {
        let d = self.step(a, b);
        d.min(self.size - d)
    }

    /// Largest forward step still counted as "near" (the kernel moved a
    /// counter forward rather than picking a fresh random port):
    /// `max(16, size / 16)`, capped at `size / 4` so that a uniform random
    /// step is near with probability at most 1/4 and the test keeps power
    /// on tiny ranges. For the default 32768..=60999 range this is 1764,
    /// which also covers RFC 6056 algorithm 5's increments (1..=500).
    pub fn near_max(&self) -> u32 {
        SMALL_STEP.max(self.size / 16).min((self.size / 4).max(1))
    }

    /// Probability that a uniformly random step is near (`0 < step <= near_max`).
    pub fn near_probability(&self) -> f64 {
        f64::from(self.near_max()) / f64::from(self.size)
    }

    /// Probability that the online predictor hits by chance when ports are
    /// uniformly random: the window holds `2 * PREDICT_WINDOW + 1` ports; one
    /// more is allowed for streams confined to one parity (Linux bind()).
    pub fn predictor_chance(&self) -> f64 {
        (f64::from(2 * PREDICT_WINDOW + 2) / f64::from(self.size)).min(1.0)
    }
}

/// Descriptive statistics of the forward steps of one sequence of offsets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepStats {
    /// Number of steps (offsets - 1, or 0).
    pub steps: usize,
    /// Lower median of the forward steps.
    pub median: Option<u32>,
    /// Most common forward step (ties: the smallest).
    pub mode: Option<u32>,
    /// Steps with `0 < step <= SMALL_STEP`.
    pub small: usize,
    /// Steps with `0 < step <= ring.near_max()`.
    pub near: usize,
    /// Steps with `SMALL_STEP < step <= ring.near_max()`: the kernel went past
    /// occupied ports (or other connects used the shared counter meanwhile).
    pub skips: usize,
    /// Steps with `0 < step < size / 2`: forward drift.
    pub forward: usize,
    /// Even ports among all offsets' ports.
    pub even_ports: usize,
    /// Even forward steps.
    pub even_steps: usize,
}

/// Step statistics and the online predictor of one sequence of offsets, fed one offset at a
/// time: what [`step_stats`] and [`predictor`] compute from a slice. Memory grows with the
/// number of *distinct* steps (at most the range size), not with the number of offsets.
#[derive(Debug, Clone, Default)]
pub struct Steps {
    last: Option<u32>,
    offsets: usize,
    even_ports: usize,
    small: usize,
    near: usize,
    skips: usize,
    forward: usize,
    even_steps: usize,
    /// Per forward step seen: how often it occurred (the median, the mode) and its score as
    /// the predictor's candidate (past steps within [`PREDICT_WINDOW`] of it).
    steps: StepTable,
    best: Option<(u32, usize)>,
    hits: usize,
    predictions: usize,
}

impl Steps {
    /// Adds the next offset (in time order).
    pub fn push(&mut self, offset: u32, ring: &Ring) {
        self.offsets += 1;
        if (offset + u32::from(ring.low)).is_multiple_of(2) {
            self.even_ports += 1;
        }
        let Some(prev) = self.last.replace(offset) else {
            return;
        };
        if let Some((m, _)) = self.best {
            self.predictions += 1;
            let guess = (prev + m) % ring.size;
            if ring.distance(guess, offset) <= PREDICT_WINDOW {
                self.hits += 1;
            }
        }
        let step = ring.step(prev, offset);
        let near_max = ring.near_max();
        self.small += usize::from(step > 0 && step <= SMALL_STEP);
        self.near += usize::from(step > 0 && step <= near_max);
        self.skips += usize::from(step > SMALL_STEP && step <= near_max);
        self.forward += usize::from(step > 0 && 2 * step < ring.size);
        self.even_steps += usize::from(step.is_multiple_of(2));
        self.score(step, ring);
    }

    /// The predictor's bookkeeping for one new step (see [`predictor`]): a new candidate
    /// counts every past step near it (itself included), existing candidates near the step
    /// gain one; the best is the first to reach the highest score.
    fn score(&mut self, step: u32, ring: &Ring) {
        let window = ring_window(step, PREDICT_WINDOW, ring.size);
        let ranges = &window.0[..window.1];
        let new = self.steps.count_one(step, ring);
        if new {
            let score = ranges
                .iter()
                .map(|&(lo, hi)| self.steps.sum_counts(lo, hi))
                .sum();
            self.steps.set_score(step, score);
            if self.best.is_none_or(|(_, b)| score > b) {
                self.best = Some((step, score));
            }
        }
        let best = &mut self.best;
        for &(lo, hi) in ranges {
            self.steps.each_mut(lo, hi, |s, c| {
                if s != step || !new {
                    c.score += 1;
                    if best.is_none_or(|(_, b)| c.score > b) {
                        *best = Some((s, c.score));
                    }
                }
            });
        }
    }

    /// The statistics of the offsets so far.
    pub fn stats(&self) -> StepStats {
        let steps = self.offsets.saturating_sub(1);
        // Lower median: the step at sorted position (steps - 1) / 2.
        let mut below = (steps.saturating_sub(1) / 2) as isize;
        let median = self.steps.iter().find_map(|(s, c)| {
            below -= c.count as isize;
            (below < 0).then_some(s)
        });
        // Most common; ties go to the smallest step.
        let mut mode: Option<(u32, usize)> = None;
        for (s, c) in self.steps.iter() {
            if mode.is_none_or(|(_, m)| c.count > m) {
                mode = Some((s, c.count));
            }
        }
        StepStats {
            steps,
            median,
            mode: mode.map(|(s, _)| s),
            small: self.small,
            near: self.near,
            skips: self.skips,
            forward: self.forward,
            even_ports: self.even_ports,
            even_steps: self.even_steps,
        }
    }

    /// Entries held: one per distinct step (at most the range size).
    #[cfg(test)]
    pub(crate) fn footprint(&self) -> usize {
        self.steps.len()
    }

    /// The predictor's `(hits, predictions)` so far.
    pub fn predictor(&self) -> (usize, usize) {
        (self.hits, self.predictions)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Candidate {
    count: usize,
    score: usize,
}

/// Distinct steps kept in a sorted vector before a tree: a destination's stream has a few
/// dozen at most, and a short vector is one block of memory where a tree is several.
const SHORT_STEPS: usize = 64;

/// The steps seen: a sorted vector while few, a tree while sparse, and dense (one slot per
/// possible step) once more than half the range: a random stream ends up with every step, and
/// the slots are then both smaller and faster than a tree.
#[derive(Debug, Clone)]
enum StepTable {
    /// Sorted by step; at most [`SHORT_STEPS`].
    Short(Vec<(u32, Candidate)>),
    Sparse(BTreeMap<u32, Candidate>),
    /// Indexed by step; a step not seen has count 0.
    Dense(Vec<Candidate>),
}

impl Default for StepTable {
    fn default() -> Self {
        StepTable::Short(Vec::new())
    }
}

impl StepTable {
    /// Steps held.
    #[cfg(test)]
    fn len(&self) -> usize {
        match self {
            StepTable::Short(v) => v.len(),
            StepTable::Sparse(m) => m.len(),
            StepTable::Dense(v) => v.len(),
        }
    }

    /// The entries of `lo..=hi` in a short table.
    fn short_range(v: &[(u32, Candidate)], lo: u32, hi: u32) -> std::ops::Range<usize> {
        let start = v.partition_point(|(s, _)| *s < lo);
        let end = start + v[start..].partition_point(|(s, _)| *s <= hi);
        start..end
    }

    /// Counts one more `step`; true when it is new.
    fn count_one(&mut self, step: u32, ring: &Ring) -> bool {
        match self {
            StepTable::Short(v) => match v.binary_search_by_key(&step, |(s, _)| *s) {
                Ok(i) => {
                    v[i].1.count += 1;
                    false
                }
                Err(i) => {
                    v.insert(i, (step, Candidate { count: 1, score: 0 }));
                    if v.len() > SHORT_STEPS {
                        let m: BTreeMap<u32, Candidate> = v.drain(..).collect();
                        *self = StepTable::Sparse(m);
                        self.densify(ring);
                    }
                    true
                }
            },
            StepTable::Sparse(m) => {
                let c = m.entry(step).or_default();
                c.count += 1;
                let new = c.count == 1;
                self.densify(ring);
                new
            }
            StepTable::Dense(v) => {
                let c = &mut v[step as usize];
                c.count += 1;
                c.count == 1
            }
        }
    }

    /// A sparse table holding more than half the range becomes dense.
    fn densify(&mut self, ring: &Ring) {
        if let StepTable::Sparse(m) = self
            && m.len() > ring.size as usize / 2
        {
            let mut dense = vec![Candidate::default(); ring.size as usize];
            for (&s, &c) in m.iter() {
                dense[s as usize] = c;
            }
            *self = StepTable::Dense(dense);
        }
    }

    fn set_score(&mut self, step: u32, score: usize) {
        match self {
            StepTable::Short(v) => {
                if let Ok(i) = v.binary_search_by_key(&step, |(s, _)| *s) {
                    v[i].1.score = score;
                }
            }
            StepTable::Sparse(m) => {
                if let Some(c) = m.get_mut(&step) {
                    c.score = score;
                }
            }
            StepTable::Dense(v) => v[step as usize].score = score,
        }
    }

    /// Steps counted in `lo..=hi`.
    fn sum_counts(&self, lo: u32, hi: u32) -> usize {
        match self {
            StepTable::Short(v) => v[Self::short_range(v, lo, hi)]
                .iter()
                .map(|(_, c)| c.count)
                .sum(),
            StepTable::Sparse(m) => m.range(lo..=hi).map(|(_, c)| c.count).sum(),
            StepTable::Dense(v) => v[lo as usize..=hi as usize].iter().map(|c| c.count).sum(),
        }
    }

    /// Every step seen in `lo..=hi`, in order.
    fn each_mut(&mut self, lo: u32, hi: u32, mut f: impl FnMut(u32, &mut Candidate)) {
        match self {
            StepTable::Short(v) => {
                let r = Self::short_range(v, lo, hi);
                for (s, c) in &mut v[r] {
                    f(*s, c);
                }
            }
            StepTable::Sparse(m) => {
                for (&s, c) in m.range_mut(lo..=hi) {
                    f(s, c);
                }
            }
            StepTable::Dense(v) => {
                for (s, c) in (lo..=hi).zip(&mut v[lo as usize..=hi as usize]) {
                    if c.count > 0 {
                        f(s, c);
                    }
                }
            }
        }
    }

    /// Every step seen, in order.
    fn iter(&self) -> Box<dyn Iterator<Item = (u32, &Candidate)> + '_> {
        match self {
            StepTable::Short(v) => Box::new(v.iter().map(|(s, c)| (*s, c))),
            StepTable::Sparse(m) => Box::new(m.iter().map(|(&s, c)| (s, c))),
            StepTable::Dense(v) => Box::new((0u32..).zip(v.iter()).filter(|(_, c)| c.count > 0)),
        }
    }
}

/// Computes [`StepStats`] for offsets in time order.
pub fn step_stats(offsets: &[u32], ring: &Ring) -> StepStats {
    let mut s = Steps::default();
    for &o in offsets {
        s.push(o, ring);
    }
    s.stats()
}

/// Inclusive, non-wrapping ranges of offsets within `w` of `c` on a ring of
/// `size` positions: one or two, and how many.
fn ring_window(c: u32, w: u32, size: u32) -> ([(u32, u32); 2], usize) {
    if 2 * w + 1 >= size {
        return ([(0, size - 1), (0, 0)], 1);
    }
    let lo = (c + size - w) % size;
    let hi = (c + w) % size;
    if lo <= hi {
        ([(lo, hi), (0, 0)], 1)
    } else {
        ([(lo, size - 1), (0, hi)], 2)
    }
}

/// Runs the online predictor over offsets in time order and returns
/// `(hits, predictions)`.
///
/// Before each port (from the third on) the predictor guesses `previous
/// port + the most common step seen so far` and scores a hit when the actual
/// port is within [`PREDICT_WINDOW`] ports of the guess, wrapping within the
/// range. The first two ports cannot be predicted (no step seen yet) and are
/// not counted.
///
/// "Most common" is counted with the same tolerance as the hits: the
/// predictor uses the past step `c` that has the most past steps within
/// `PREDICT_WINDOW` of it (ties: the one that got there first), i.e. the
/// step that would have scored best so far. For Linux connect() (steps
/// spread evenly over 2, 4, .., 16) that is a step near 9, whose window
/// covers all of them, where the exact mode would be an arbitrary one of the
/// eight values.
pub fn predictor(offsets: &[u32], ring: &Ring) -> (usize, usize) {
    let mut s = Steps::default();
    for &o in offsets {
        s.push(o, ring);
    }
    s.predictor()
}

/// `P(X >= k)` for `X ~ Binomial(n, p)`: the one-sided p-value of seeing at
/// least `k` successes when each has probability `p`.
pub fn binomial_upper_tail(k: usize, n: usize, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    let p = p.clamp(0.0, 1.0);
    match Binomial::new(p, n as u64) {
        Ok(b) => b.sf(k as u64 - 1),
        Err(_) => f64::NAN,
    }
}

/// Result of a chi-square goodness-of-fit test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChiSquare {
    pub statistic: f64,
    pub df: usize,
    pub p_value: f64,
}

/// Most bins the uniformity test uses.
pub const MAX_BINS: usize = 64;
/// Expected count per bin the uniformity test wants (the usual rule of 5).
pub const MIN_EXPECTED_PER_BIN: usize = 5;

/// Chi-square goodness-of-fit test of offsets against the uniform
/// distribution over the ring. The ring is cut into
/// `min(64, n / 5, size)` equal-width bins (so each expects at least about
/// 5 samples); `None` when that gives fewer than 2 bins (fewer than 10
/// samples), i.e. when the test cannot be run.
pub fn chi_square_uniform(offsets: &[u32], ring: &Ring) -> Option<ChiSquare> {
    let bins = bins_for(offsets.len(), ring);
    if bins < 2 {
        return None;
    }
    let mut observed = vec![0usize; bins];
    for &o in offsets {
        observed[bin_of(o, bins, ring)] += 1;
    }
    chi_square_counts(&observed, offsets.len(), ring)
}

/// The number of bins the uniformity test uses for `n` samples.
fn bins_for(n: usize, ring: &Ring) -> usize {
    MAX_BINS
        .min(n / MIN_EXPECTED_PER_BIN)
        .min(ring.size as usize)
}

fn bin_of(o: u32, bins: usize, ring: &Ring) -> usize {
    (u64::from(o) * bins as u64 / u64::from(ring.size)) as usize
}

/// The chi-square test from the counts of `n` samples in equal-width bins.
fn chi_square_counts(observed: &[usize], n: usize, ring: &Ring) -> Option<ChiSquare> {
    let bins = observed.len();
    if bins < 2 {
        return None;
    }
    let size = u64::from(ring.size);
    // Width of bin b: offsets o with floor(o * bins / size) == b.
    let start = |b: u64| (b * size).div_ceil(bins as u64);
    let mut statistic = 0.0;
    for (b, &obs) in observed.iter().enumerate() {
        let width = start(b as u64 + 1) - start(b as u64);
        let expected = n as f64 * width as f64 / size as f64;
        statistic += (obs as f64 - expected).powi(2) / expected;
    }
    let df = bins - 1;
    let p_value = ChiSquared::new(df as f64)
        .map(|d| d.sf(statistic))
        .unwrap_or(f64::NAN);
    Some(ChiSquare {
        statistic,
        df,
        p_value,
    })
}

/// The uniformity test's input, fed one offset at a time: the offsets themselves until there
/// are enough for the final number of bins (`min(64, size)`, 5 samples each: 320 on most
/// ranges), then only the bin counts. Gives what [`chi_square_uniform`] gives on all of them.
#[derive(Debug, Clone, Default)]
pub struct Uniformity {
    n: usize,
    /// Offsets fit in 16 bits (a range has at most 65,536 ports).
    offsets: Vec<u16>,
    /// Empty until the number of bins is final.
    bins: Vec<usize>,
}

impl Uniformity {
    pub fn push(&mut self, offset: u32, ring: &Ring) {
        self.n += 1;
        let last = MAX_BINS.min(ring.size as usize);
        if last < 2 {
            // A one-port range: the test never runs.
            return;
        }
        if self.bins.is_empty() {
            self.offsets.push(offset as u16);
            if bins_for(self.n, ring) == last {
                self.bins = vec![0; last];
                for o in std::mem::take(&mut self.offsets) {
                    self.bins[bin_of(u32::from(o), last, ring)] += 1;
                }
            }
        } else {
            let bins = self.bins.len();
            self.bins[bin_of(offset, bins, ring)] += 1;
        }
    }

    /// Offsets or bins held: at most `5 * 64`.
    #[cfg(test)]
    pub(crate) fn footprint(&self) -> usize {
        self.offsets.len() + self.bins.len()
    }

    pub fn test(&self, ring: &Ring) -> Option<ChiSquare> {
        if self.bins.is_empty() {
            let offsets: Vec<u32> = self.offsets.iter().map(|&o| u32::from(o)).collect();
            chi_square_uniform(&offsets, ring)
        } else {
            chi_square_counts(&self.bins, self.n, ring)
        }
    }
}

/// Ranks with ties given their average rank (1-based).
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut out = vec![0.0; values.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && values[idx[j + 1]] == values[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            out[k] = avg;
        }
        i = j + 1;
    }
    out
}

/// Pearson correlation; `None` when either side has no variance or the
/// lengths differ or there are fewer than 3 points.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 3 {
        return None;
    }
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    Some((sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
}

/// Spearman rank correlation (Pearson on average ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

/// [`spearman`] of integer pairs, for the same result to the bit: the same average ranks,
/// summed in the same order, without a rank per pair in 64 bits (a million pairs is common).
pub fn spearman_pairs(pairs: &[(u32, u32)]) -> Option<f64> {
    let n = pairs.len();
    if n < 3 {
        return None;
    }
    let xs = Ranks::of(pairs.iter().map(|p| p.0));
    let ys = Ranks::of(pairs.iter().map(|p| p.1));
    let nf = n as f64;
    let mx = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| xs.rank(i, p.0))
        .sum::<f64>()
        / nf;
    let my = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| ys.rank(i, p.1))
        .sum::<f64>()
        / nf;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (i, p) in pairs.iter().enumerate() {
        let (a, b) = (xs.rank(i, p.0), ys.rank(i, p.1));
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    Some((sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
}

/// Average 1-based ranks of one side of [`spearman_pairs`]. Few distinct values (a step takes
/// a few hundred at most): looked up in a table of them. Many (gaps): worked out once by
/// sorting and kept per value as twice the rank in 32 bits, which a search of the table twice
/// a pair would cost far more than.
enum Ranks {
    Table(Vec<(u32, f64)>),
    /// Twice each value's rank, in the side's order.
    Doubled(Vec<u32>),
}

/// Distinct values up to which a side's ranks are a table.
const RANK_TABLE_MAX: usize = 1024;

impl Ranks {
    fn of(side: impl ExactSizeIterator<Item = u32>) -> Self {
        let n = side.len();
        // Value and position, sorted: each run of equal values shares its average rank.
        let mut sorted: Vec<(u32, u32)> = side.zip(0..).collect();
        sorted.sort_unstable();
        let runs = sorted.chunk_by(|a, b| a.0 == b.0);
        // Twice a rank is at most 2n.
        if runs.clone().count() > RANK_TABLE_MAX && u32::try_from(2 * n).is_ok() {
            let mut doubled = vec![0; n];
            let mut first = 0;
            for run in runs {
                let last = first + run.len() - 1;
                for &(_, at) in run {
                    doubled[at as usize] = (first + last + 2) as u32;
                }
                first = last + 1;
            }
            return Ranks::Doubled(doubled);
        }
        let mut table = Vec::new();
        let mut first = 0;
        for run in runs {
            let last = first + run.len() - 1;
            // Ties share the average of their 1-based positions.
            table.push((run[0].0, (first + last) as f64 / 2.0 + 1.0));
            first = last + 1;
        }
        Ranks::Table(table)
    }

    /// The rank of `v`, the side's value at position `i`.
    fn rank(&self, i: usize, v: u32) -> f64 {
        match self {
            Ranks::Table(t) => t[t.partition_point(|e| e.0 < v)].1,
            Ranks::Doubled(d) => f64::from(d[i]) / 2.0,
        }
    }
}

/// One-sided p-value for `H0: rho = 0` against `rho > 0`, from the usual
/// t approximation `t = r sqrt((n-2)/(1-r^2))` with `n - 2` degrees of
/// freedom.
pub fn correlation_p_value(r: f64, n: usize) -> f64 {
    if n < 3 {
        return 1.0;
    }
    let df = (n - 2) as f64;
    if r >= 1.0 {
        return 0.0;
    }
    let t = r * (df / (1.0 - r * r)).sqrt();
    StudentsT::new(0.0, 1.0, df)
        .map(|d| d.sf(t))
        .unwrap_or(f64::NAN)
}

/// Upper bound of an approximate two-sided 99 % confidence interval for a
/// Spearman correlation `r` from `n` pairs (Fisher z with the Bonett-Wright
/// standard error `sqrt((1 + r^2/2) / (n - 3))`).
pub fn spearman_upper_bound(r: f64, n: usize) -> f64 {
    if n < 4 {
        return 1.0;
    }
    let r = r.clamp(-0.999_999, 0.999_999);
    let se = ((1.0 + r * r / 2.0) / (n as f64 - 3.0)).sqrt();
    (r.atanh() + 2.576 * se).tanh()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: (u16, u16) = (32768, 60999);

    #[test]
    fn ring_wraps() {
        let r = Ring::new(DEFAULT);
        assert_eq!(r.size, 28232);
        assert_eq!(r.offset(32767), None);
        assert_eq!(r.offset(61000), None);
        assert_eq!(r.offset(60999), Some(28231));
        assert_eq!(r.step(28230, 2), 4);
        assert_eq!(r.distance(28230, 2), 4);
        assert_eq!(r.distance(2, 28230), 4);
        assert_eq!(r.near_max(), 1764);
        assert_eq!(Ring::new((61000, 32768)), Ring::new((32768, 61000)));
        // Tiny ranges keep a testable near threshold.
        assert_eq!(Ring::new((1000, 1099)).near_max(), 16);
        assert_eq!(Ring::new((1000, 1019)).near_max(), 5);
    }

    #[test]
    fn step_stats_counts() {
        let r = Ring::new((100, 199));
        // offsets 0,2,4,30,31 -> steps 2,2,26,1 ; near_max = 16
        let s = step_stats(&[0, 2, 4, 30, 31], &r);
        assert_eq!(s.steps, 4);
        assert_eq!(s.mode, Some(2));
        assert_eq!(s.median, Some(2));
        assert_eq!(s.small, 3);
        assert_eq!(s.near, 3);
        assert_eq!(s.skips, 0);
        assert_eq!(s.even_ports, 4);
        assert_eq!(s.even_steps, 3);
        let r = Ring::new(DEFAULT);
        let s = step_stats(&[0, 100, 50], &r);
        assert_eq!(s.skips, 1);
        assert_eq!(s.near, 1);
    }

    #[test]
    fn predictor_on_counter() {
        let r = Ring::new(DEFAULT);
        let offs: Vec<u32> = (0..20).map(|i| (28200 + i * 3) % r.size).collect();
        assert_eq!(predictor(&offs, &r), (18, 18));
        // Step changes within the window still hit.
        assert_eq!(predictor(&[0, 4, 16, 20], &r), (2, 2));
        assert_eq!(predictor(&[0, 4, 1000, 1004], &r), (1, 2));
    }

    #[test]
    fn binomial_tail() {
        assert_eq!(binomial_upper_tail(0, 10, 0.5), 1.0);
        assert!((binomial_upper_tail(10, 10, 0.5) - 0.5f64.powi(10)).abs() < 1e-12);
        assert!((binomial_upper_tail(1, 2, 0.5) - 0.75).abs() < 1e-12);
        assert!(binomial_upper_tail(7, 7, 1.0 / 16.0) < 1e-8);
    }

    #[test]
    fn chi_square_detects_clustering() {
        let r = Ring::new(DEFAULT);
        assert!(chi_square_uniform(&[1, 2, 3], &r).is_none());
        let spread: Vec<u32> = (0..100).map(|i| i * 282).collect();
        let c = chi_square_uniform(&spread, &r).unwrap();
        assert_eq!(c.df, 19);
        assert!(c.p_value > 0.99);
        let clustered: Vec<u32> = (0..100).collect();
        assert!(chi_square_uniform(&clustered, &r).unwrap().p_value < 1e-10);
    }

    #[test]
    fn spearman_of_pairs_is_spearman() {
        let pairs: Vec<(u32, u32)> = (0..500u32)
            .map(|i| ((i * 7919) % 97 + 1, (i * 104_729) % 31 + (i % 5)))
            .collect();
        let (x, y): (Vec<f64>, Vec<f64>) = pairs
            .iter()
            .map(|&(a, b)| (f64::from(a), f64::from(b)))
            .unzip();
        assert_eq!(spearman_pairs(&pairs), spearman(&x, &y));
        // More distinct gaps than a table holds, with ties.
        let pairs: Vec<(u32, u32)> = (0..20_000u32)
            .map(|i| ((i * 7919) % 9973 + 1, (i * 104_729) % 31 + (i % 5)))
            .collect();
        let (x, y): (Vec<f64>, Vec<f64>) = pairs
            .iter()
            .map(|&(a, b)| (f64::from(a), f64::from(b)))
            .unzip();
        assert_eq!(spearman_pairs(&pairs), spearman(&x, &y));
        assert_eq!(spearman_pairs(&[(1, 1), (2, 2)]), None);
        assert_eq!(spearman_pairs(&[(1, 1), (2, 1), (3, 1)]), None);
    }

    #[test]
    fn correlations() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 4.0, 6.0, 8.0, 100.0];
        assert!((spearman(&x, &y).unwrap() - 1.0).abs() < 1e-12);
        assert!(pearson(&x, &y).unwrap() < 1.0);
        assert_eq!(spearman(&x, &[1.0; 5]), None);
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
        assert!(correlation_p_value(0.9, 30) < 1e-6);
        assert!(correlation_p_value(0.0, 30) > 0.49);
        assert!(spearman_upper_bound(0.0, 200) < 0.25);
        assert!(spearman_upper_bound(0.0, 10) > 0.5);
    }
}
