//! Pattern verdicts for one stream ([`classify`]) and for the time-ordered
//! sequence across destinations ([`classify_global`]).
//!
//! A verdict has two parts. The **pattern** answers "sequential or random?":
//! `sequential` (a counter: steps small and forward), `random`, or
//! `insufficient-data` (too few samples for either, or evidence that points
//! nowhere). The **counter scope** answers the second question, only for
//! `sequential`: `global` (one counter shared by all destinations: RFC 6056
//! algorithms 3 and 5, Linux connect() before 5.12), `per-destination` (a
//! counter per destination: algorithm 4, Linux since 5.12) or `undetermined`
//! (e.g. one destination, where both look the same). For other patterns the
//! scope is absent (`null`).
//!
//! # Per-stream decision ([`classify`])
//!
//! Ports outside the usable range are dropped (counted in `out_of_range`).
//! With `n` in-range ports and `m = n - 1` forward steps:
//!
//! * `n < 3`: `insufficient-data`.
//! * `3 <= n < MIN_SAMPLES` (8): **sequential-like** when at least
//!   [`SEQ_MIN_SHARE_NEAR`] (50 %) of the steps are *small* (`0 < step <=
//!   16`) and the binomial test of that count against uniform random ports
//!   (`p0 = 16 / size`) has p < [`SEQ_MAX_P`] (1e-6): on the default range
//!   two small steps out of two already do (p = 3e-7). Otherwise
//!   `insufficient-data`: too few samples to call anything random.
//! * `n >= MIN_SAMPLES`, **sequential-like** when either
//!   - at least 50 % of the steps are *near* (`0 < step <= near_max`, see
//!     [`Ring::near_max`]) and the binomial test of that count against
//!     uniform random ports (`p0 = near_max / size`, 1/16 on the default
//!     range) has p < [`SEQ_MAX_P`]: with 8 samples, 6 of the 7 steps near; or
//!   - at least [`COUNTER_MIN_SHARE_FORWARD`] (75 %) of the steps are forward
//!     drift (`0 < step < size/2`, probability 1/2 under uniform random) with
//!     binomial p < [`SEQ_MAX_P`]: a counter whose increments are too wide to
//!     be near (RFC 6056 algorithm 5 on a 1000-port range, a constant stride).
//! * **Random** when none of four tests finds structure at
//!   [`RANDOM_ALPHA`] (1e-5): (a) the binomial test of near steps above,
//!   (b) a binomial test of the online predictor's hits against its chance
//!   rate `(2*8 + 2) / size` (catches any repeated stride), (c) the binomial
//!   test of forward-drift steps, and (d) a chi-square goodness-of-fit test
//!   of the port values against the uniform distribution over the range
//!   (`min(64, n/5)` bins; skipped below 10 samples, where it has no power).
//! * Anything else (structure that is not a forward counter, e.g. a
//!   descending stride) is `insufficient-data`: the classifier never calls
//!   structure random.
//!
//! A sequential-like stream is `sequential`; [`super::analyze`] adds the
//! counter scope from the global verdict (streams without destination:
//! `global`, there is one counter for all their allocations).
//!
//! # Global decision ([`classify_global`])
//!
//! The global sequence is every sample that has a destination (connect),
//! in time order; when there is none, every sample. Let a *stream* be the
//! samples of one [`StreamKey`].
//!
//! 1. **One counter without per-destination offset** (RFC 6056 algorithm 5,
//!    BSD-style global counters): at least 2 streams, at least
//!    [`MIN_CROSS_STEPS`] (7) steps between consecutive samples of
//!    *different* streams, at least [`SINGLE_MIN_SHARE_NEAR`] (90 %) of those
//!    cross steps near, with binomial p < [`SEQ_MAX_P`]: `sequential`, scope
//!    `global` (`single_sequence = true`). The 90 % matters: per-destination
//!    counters that happen to sit close together give near steps one way and
//!    backward steps the other way, about 50 % each.
//! 2. Each stream is classified alone (above). Sequential-like streams and
//!    no random one: `sequential`. Random streams and no sequential-like
//!    one: `random` when the global sequence looks random too. Both: the
//!    side holding at least [`MIXED_MIN_MAJORITY`] (3/4) of their samples
//!    wins when it is the sequential side (a counter is there); otherwise
//!    `insufficient-data`. Neither (every stream too small or undecided): the
//!    global sequence classified like one stream decides `sequential`, else
//!    `insufficient-data`.
//! 3. **Counter scope** of a `sequential` verdict: shared counter with
//!    per-destination offsets (RFC 6056 algorithm 3, Linux before 5.12)
//!    versus per-destination counters (algorithm 4, Linux since 5.12). For
//!    every pair of consecutive samples of one sequential-like stream whose
//!    step is at most [`counter_max_step`] (`max(64, near_max / 8)`, 220 on
//!    the default range), take the step `s` and the *gap* `g` (how many
//!    global samples later the second one came). With one shared counter `s`
//!    grows with `g` (every connect in between advanced it); with
//!    per-destination counters `s` does not depend on `g`. With at least
//!    [`MIN_COUNTER_PAIRS`] (20) pairs and gaps that vary, the Spearman
//!    correlation `rho(g, s)` decides: `rho >= SHARED_MIN_RHO` (0.5) with
//!    one-sided p < [`SHARED_MAX_P`] (1e-3): `global`; the upper end of its
//!    99 % confidence interval below [`SHARED_MIN_RHO`]: `per-destination`;
//!    otherwise `undetermined`. Constant steps (no variance in `s`) count as
//!    `rho = 0`.
//!
//! One destination alone can never separate algorithm 3 from algorithm 4
//! (the gaps are all 1): a counter toward one destination is `sequential`
//! with scope `undetermined`.

use super::stats::{
    ChiSquare, Ring, SMALL_STEP, StepStats, Steps, Uniformity, binomial_upper_tail,
    correlation_p_value, spearman_pairs, spearman_upper_bound,
};
use super::{PortRange, StreamKey};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Fewer in-range samples than this give `insufficient-data`.
pub const MIN_SAMPLES: usize = 8;
/// Sequential-like needs at least this share of near forward steps...
pub const SEQ_MIN_SHARE_NEAR: f64 = 0.5;
/// ...and a binomial p-value (near steps vs. uniform random) below this.
pub const SEQ_MAX_P: f64 = 1e-6;
/// Random needs every structure test's p-value to be at least this.
pub const RANDOM_ALPHA: f64 = 1e-5;
/// Share of near cross-stream steps that marks one counter without
/// per-destination offsets.
pub const SINGLE_MIN_SHARE_NEAR: f64 = 0.9;
/// Minimum number of cross-stream steps for the single-counter test.
pub const MIN_CROSS_STEPS: usize = 7;
/// Minimum number of (gap, step) pairs for the shared-counter test.
pub const MIN_COUNTER_PAIRS: usize = 20;
/// Share of forward-drift steps that marks a counter with wide increments.
pub const COUNTER_MIN_SHARE_FORWARD: f64 = 0.75;
/// Share of the classified samples the sequential streams must hold when
/// streams disagree.
pub const MIXED_MIN_MAJORITY: f64 = 0.75;
/// Most (gap, step) pairs one stream gives the shared-counter test: its first 1,024. Bounds
/// the test's memory per stream; a shared counter shows in far fewer.
pub const MAX_PAIRS_PER_STREAM: usize = 1024;
/// Correlation between gap and step that marks a shared counter.
pub const SHARED_MIN_RHO: f64 = 0.5;
/// One-sided p-value the shared-counter correlation must beat.
pub const SHARED_MAX_P: f64 = 1e-3;

/// Largest step used by the shared-counter test: `max(64, near_max / 8)`.
///
/// Smaller than `near_max` on purpose: a re-salted destination (Linux 5.18+,
/// every 10 s) jumps to a random port, and the chance that a pair spans a
/// re-salt grows with the gap, so a random jump that happens to land near
/// would fake a gap/step correlation. Keeping steps this small makes such
/// accidents about 8 times rarer (0.8 % of re-salted pairs on the default
/// range) while still covering a shared counter with dozens of
/// destinations.
pub fn counter_max_step(ring: &Ring) -> u32 {
    (4 * super::stats::SMALL_STEP).max(ring.near_max() / 8)
}

/// Verdict about how ports are allocated: "sequential or random?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// A counter: steps small (or at least consistently) forward. Which
    /// counter is [`CounterScope`]. Reports written before the scope existed
    /// said `per-destination-sequential`; they read as `sequential`.
    #[serde(alias = "per-destination-sequential")]
    Sequential,
    /// No structure found (RFC 6056 algorithms 1 and 2, Linux bind(0), UDP).
    Random,
    /// Too few samples for either (or structure that is not a counter).
    InsufficientData,
}

impl Pattern {
    pub const ALL: [Pattern; 3] = [
        Pattern::Sequential,
        Pattern::Random,
        Pattern::InsufficientData,
    ];

    /// The serde name, e.g. `insufficient-data`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Sequential => "sequential",
            Pattern::Random => "random",
            Pattern::InsufficientData => "insufficient-data",
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which counter a `sequential` verdict sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CounterScope {
    /// One counter shared by all destinations (RFC 6056 algorithms 3 and 5,
    /// Linux connect() before 5.12); for a stream without destination
    /// (bind/listen/autobind), its one counter.
    Global,
    /// A counter per destination (RFC 6056 algorithm 4, Linux connect()
    /// since 5.12).
    PerDestination,
    /// Sequential, but the data cannot tell which: one destination, too few
    /// interleaved connects, or an inconclusive correlation.
    Undetermined,
}

impl CounterScope {
    pub const ALL: [CounterScope; 3] = [
        CounterScope::Global,
        CounterScope::PerDestination,
        CounterScope::Undetermined,
    ];

    /// The serde name, e.g. `per-destination`.
    pub fn as_str(self) -> &'static str {
        match self {
            CounterScope::Global => "global",
            CounterScope::PerDestination => "per-destination",
            CounterScope::Undetermined => "undetermined",
        }
    }

    /// The scope's name, `none` when there is no counter (metric label, table column).
    pub fn label(scope: Option<CounterScope>) -> &'static str {
        scope.map_or("none", CounterScope::as_str)
    }
}

impl fmt::Display for CounterScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parity of ports and steps.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Parity {
    /// Share of even port numbers (Linux connect() prefers `low`'s parity,
    /// bind() the other one).
    pub even_ports: Option<f64>,
    /// Share of even forward steps.
    pub even_steps: Option<f64>,
}

/// p-values and statistics behind a stream's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct StreamTests {
    /// One-sided binomial p-value of the number of near steps under uniform
    /// random ports.
    pub near_steps_p: Option<f64>,
    /// One-sided binomial p-value of the predictor's hits under uniform
    /// random ports.
    pub predictor_p: Option<f64>,
    /// One-sided binomial p-value of the number of forward-drift steps
    /// (`0 < step < size/2`) against 1/2.
    pub forward_p: Option<f64>,
    /// Chi-square statistic of port values against uniform over the range.
    pub uniformity_chi2: Option<f64>,
    pub uniformity_df: Option<usize>,
    pub uniformity_p: Option<f64>,
}

/// Analysis of one stream (or of the global sequence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamAnalysis {
    /// Final verdict (for connect streams, after combining with the global
    /// verdict in [`super::analyze`]).
    pub pattern: Pattern,
    /// Which counter, for `sequential` only (`None` otherwise). [`classify`]
    /// alone says `undetermined`; [`super::analyze`] fills in the global
    /// verdict's scope.
    #[serde(default)]
    pub counter_scope: Option<CounterScope>,
    /// What the stream alone shows: `sequential` here means sequential-like.
    pub local_pattern: Pattern,
    /// In-range samples used.
    pub samples: usize,
    /// Samples outside the usable range, ignored.
    pub out_of_range: usize,
    /// Share of ports the online predictor guessed (see
    /// [`super::stats::predictor`]); `None` with fewer than 3 samples.
    pub predictability: Option<f64>,
    /// Lower median forward step (wrapping within the range).
    pub median_step: Option<u32>,
    /// Most common forward step.
    pub mode_step: Option<u32>,
    /// Share of forward steps with `0 < step <= 16`.
    pub share_small_steps: Option<f64>,
    /// Share of forward steps with `0 < step <= near_max`.
    pub share_near_steps: Option<f64>,
    pub parity: Parity,
    /// Steps with `16 < step <= near_max` (`near_max` = range/16 on ranges
    /// of 256 ports or more): occupied ports jumped over.
    pub skips: usize,
    /// The largest step counted as near for this range.
    pub near_max: u32,
    pub tests: StreamTests,
    /// Human-readable reason for the verdict.
    pub reason: String,
}

fn share(k: usize, n: usize) -> Option<f64> {
    (n > 0).then(|| k as f64 / n as f64)
}

/// Is this step count sequential-like? Returns (verdict, p-value).
fn near_test(near: usize, steps: usize, ring: &Ring, min_share: f64) -> (bool, Option<f64>) {
    if steps == 0 {
        return (false, None);
    }
    let p = binomial_upper_tail(near, steps, ring.near_probability());
    let sequential = near as f64 / steps as f64 >= min_share && p < SEQ_MAX_P;
    (sequential, Some(p))
}

/// Classifies one stream of ports given in time order.
pub fn classify(ports: &[u16], range: PortRange) -> StreamAnalysis {
    let mut c = Classifier::new(range);
    for &p in ports {
        c.push(p);
    }
    c.finish()
}

/// [`classify`] fed one port at a time, in time order. Memory grows with the number of
/// distinct steps (at most the range size), not with the number of ports.
#[derive(Debug, Clone)]
pub struct Classifier {
    ring: Ring,
    samples: usize,
    out_of_range: usize,
    first: Option<u32>,
    /// From the second in-range port on. Inline: a stream with one port only (most streams of
    /// a busy host) is held as a port by its caller (see [`StreamTrack`]'s), so a classifier is
    /// made for streams with more, and then a box here would cost a second lookup per port.
    more: Option<Tally>,
}

#[derive(Debug, Clone, Default)]
struct Tally {
    steps: Steps,
    uniformity: Uniformity,
}

impl Tally {
    fn push(&mut self, offset: u32, ring: &Ring) {
        self.steps.push(offset, ring);
        self.uniformity.push(offset, ring);
    }
}

impl Classifier {
    pub fn new(range: PortRange) -> Self {
        Classifier {
            ring: Ring::new(range),
            samples: 0,
            out_of_range: 0,
            first: None,
            more: None,
        }
    }

    /// Adds the next port; returns its offset in the range, `None` when it lies outside.
    pub fn push(&mut self, port: u16) -> Option<u32> {
        let Some(o) = self.ring.offset(port) else {
            self.out_of_range += 1;
            return None;
        };
        self.samples += 1;
        match (&mut self.more, self.first) {
            (Some(t), _) => t.push(o, &self.ring),
            (None, None) => self.first = Some(o),
            (None, Some(f)) => {
                let mut t = Tally::default();
                t.push(f, &self.ring);
                t.push(o, &self.ring);
                self.more = Some(t);
            }
        }
        Some(o)
    }

    /// Entries held for the steps and the uniformity test.
    #[cfg(test)]
    pub(crate) fn footprint(&self) -> usize {
        self.more
            .as_ref()
            .map_or(0, |t| t.steps.footprint() + t.uniformity.footprint())
    }

    /// In-range ports so far.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Every port so far, in range or not.
    pub fn ports(&self) -> usize {
        self.samples + self.out_of_range
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The verdict on the ports so far.
    pub fn finish(&self) -> StreamAnalysis {
        let ring = &self.ring;
        let one;
        let tally = match (&self.more, self.first) {
            (Some(t), _) => t,
            (None, first) => {
                let mut t = Tally::default();
                if let Some(f) = first {
                    t.push(f, ring);
                }
                one = t;
                &one
            }
        };
        let n = self.samples;
        let st = tally.steps.stats();
        let (hits, predictions) = tally.steps.predictor();
        let chi = tally.uniformity.test(ring);
        let (seq_like, tests) = stream_tests(chi, &st, (hits, predictions), ring);
        let (pattern, reason) = stream_verdict(n, seq_like, &tests, &st, ring);
        StreamAnalysis {
            pattern,
            counter_scope: (pattern == Pattern::Sequential).then_some(CounterScope::Undetermined),
            local_pattern: pattern,
            samples: n,
            out_of_range: self.out_of_range,
            predictability: share(hits, predictions),
            median_step: st.median,
            mode_step: st.mode,
            share_small_steps: share(st.small, st.steps),
            share_near_steps: share(st.near, st.steps),
            parity: Parity {
                even_ports: share(st.even_ports, n),
                even_steps: share(st.even_steps, st.steps),
            },
            skips: st.skips,
            near_max: ring.near_max(),
            tests,
            reason,
        }
    }
}

/// Runs the four structure tests; returns (sequential-like by the near test, p-values).
fn stream_tests(
    chi: Option<ChiSquare>,
    st: &StepStats,
    (hits, predictions): (usize, usize),
    ring: &Ring,
) -> (bool, StreamTests) {
    let (seq_like, near_p) = near_test(st.near, st.steps, ring, SEQ_MIN_SHARE_NEAR);
    let predictor_p =
        (predictions > 0).then(|| binomial_upper_tail(hits, predictions, ring.predictor_chance()));
    let forward_p = (st.steps > 0).then(|| binomial_upper_tail(st.forward, st.steps, 0.5));
    let tests = StreamTests {
        near_steps_p: near_p,
        predictor_p,
        forward_p,
        uniformity_chi2: chi.map(|c| c.statistic),
        uniformity_df: chi.map(|c| c.df),
        uniformity_p: chi.map(|c| c.p_value),
    };
    (seq_like, tests)
}

/// Random-like when no test finds structure at [`RANDOM_ALPHA`]; a test not run finds none.
fn random_like(tests: &StreamTests) -> bool {
    let no_structure = |p: Option<f64>| p.is_none_or(|p| p >= RANDOM_ALPHA);
    no_structure(tests.near_steps_p)
        && no_structure(tests.predictor_p)
        && no_structure(tests.forward_p)
        && no_structure(tests.uniformity_p)
}

/// A p-value in reason texts, `n/a` when the test did not run.
fn p_or_na(p: Option<f64>) -> String {
    p.map_or("n/a".to_string(), |p| format!("{p:.2e}"))
}

/// Few samples: sequential-like when at least half the steps are small forward steps (at most
/// [`SMALL_STEP`]) and uniform random ports would rarely give as many. Returns (verdict, p).
fn few_samples_test(st: &StepStats, ring: &Ring) -> (bool, Option<f64>) {
    if st.steps == 0 {
        return (false, None);
    }
    let p0 = (f64::from(SMALL_STEP) / f64::from(ring.size)).min(1.0);
    let p = binomial_upper_tail(st.small, st.steps, p0);
    let sequential = st.small as f64 / st.steps as f64 >= SEQ_MIN_SHARE_NEAR && p < SEQ_MAX_P;
    (sequential, Some(p))
}

/// A counter whose increments are wider than near: most steps drift forward.
fn forward_counter(st: &StepStats, tests: &StreamTests) -> bool {
    st.steps > 0
        && st.forward as f64 / st.steps as f64 >= COUNTER_MIN_SHARE_FORWARD
        && tests.forward_p.is_some_and(|p| p < SEQ_MAX_P)
}

/// Decides one stream: too few samples, sequential-like, random, or undecided if the structure
/// found is not a forward counter.
fn stream_verdict(
    n: usize,
    seq_like: bool,
    tests: &StreamTests,
    st: &StepStats,
    ring: &Ring,
) -> (Pattern, String) {
    let random_like = random_like(tests);
    let near_p = tests.near_steps_p.unwrap_or(f64::NAN);
    let predictor_p = tests.predictor_p.unwrap_or(f64::NAN);
    let forward_p = tests.forward_p.unwrap_or(f64::NAN);
    if n < MIN_SAMPLES {
        let (few_seq, small_p) = few_samples_test(st, ring);
        return if n >= 3 && few_seq {
            (
                Pattern::Sequential,
                format!(
                    "{n} samples only, but {} of {} steps are forward steps of at most {SMALL_STEP} \
                     (p = {:.2e} under uniform random)",
                    st.small,
                    st.steps,
                    small_p.unwrap_or(f64::NAN)
                ),
            )
        } else {
            (
                Pattern::InsufficientData,
                format!(
                    "{n} in-range samples, need at least {MIN_SAMPLES} \
                     (or at least 3 that step forward by at most {SMALL_STEP})"
                ),
            )
        };
    }
    if seq_like && !random_like {
        (
            Pattern::Sequential,
            format!(
                "{} of {} steps are forward steps of at most {} (p = {near_p:.2e} under uniform random)",
                st.near,
                st.steps,
                ring.near_max(),
            ),
        )
    } else if !random_like && forward_counter(st, tests) {
        (
            Pattern::Sequential,
            format!(
                "{} of {} steps drift forward (p = {forward_p:.2e} under uniform random): \
                 a counter with increments wider than {}",
                st.forward,
                st.steps,
                ring.near_max(),
            ),
        )
    } else if random_like && !seq_like {
        (
            Pattern::Random,
            format!(
                "no structure: near steps p = {near_p:.2e}, predictor p = {predictor_p:.2e}, forward p = {forward_p:.2e}, uniformity p = {}",
                p_or_na(tests.uniformity_p)
            ),
        )
    } else {
        (
            Pattern::InsufficientData,
            format!(
                "structure that is not a forward counter: {:.0}% near steps (p = {near_p:.2e}), predictor p = {predictor_p:.2e}, forward p = {forward_p:.2e}, uniformity p = {}",
                100.0 * share(st.near, st.steps).unwrap_or(0.0),
                p_or_na(tests.uniformity_p)
            ),
        )
    }
}

/// Analysis of the time-ordered sequence across destinations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalAnalysis {
    pub pattern: Pattern,
    /// Which counter, for `sequential` only (`None` otherwise).
    #[serde(default)]
    pub counter_scope: Option<CounterScope>,
    /// Samples in the global sequence (destination-keyed ones, or all when
    /// none has a destination).
    pub samples: usize,
    /// Distinct streams in the global sequence.
    pub destinations: usize,
    /// The unkeyed sequence in time order, classified like one stream.
    pub sequence: StreamAnalysis,
    /// Steps between consecutive samples of different streams.
    pub cross_steps: usize,
    pub cross_share_near: Option<f64>,
    pub cross_near_p: Option<f64>,
    /// Streams by their own verdict (undecided: at least [`MIN_SAMPLES`]
    /// samples and neither sequential nor random).
    pub streams_sequential: usize,
    pub streams_random: usize,
    pub streams_undecided: usize,
    /// (gap, step) pairs used by the shared-counter test.
    pub counter_pairs: usize,
    /// Spearman correlation between gap and step.
    pub counter_rho: Option<f64>,
    pub counter_p: Option<f64>,
    /// Upper end of the 99 % confidence interval of `counter_rho`.
    pub counter_rho_upper: Option<f64>,
    /// Whether one counter is shared by all destinations; `None` if unknown.
    pub shared_counter: Option<bool>,
    /// The sequence across destinations is itself sequential: one counter
    /// without per-destination offsets (RFC 6056 algorithm 5). Then every
    /// destination stream with enough samples is part of it, even when its
    /// own steps are diluted by many other destinations.
    pub single_sequence: bool,
    pub reason: String,
}

/// The time-ordered sequence across streams (see the module docs), fed one sample at a time:
/// the whole sequence classified as one stream, and the steps between different streams.
#[derive(Debug, Clone)]
pub struct Sequence {
    whole: Classifier,
    last: Option<(StreamKey, u32)>,
    cross: usize,
    cross_near: usize,
}

impl Sequence {
    pub fn new(range: PortRange) -> Self {
        Sequence {
            whole: Classifier::new(range),
            last: None,
            cross: 0,
            cross_near: 0,
        }
    }

    /// Adds the next sample; returns its position among the in-range samples (the gaps of the
    /// shared-counter test count these), `None` when its port lies outside the range.
    pub fn push(&mut self, key: &StreamKey, port: u16) -> Option<usize> {
        let position = self.whole.samples();
        let o = self.whole.push(port)?;
        let ring = self.whole.ring;
        if let Some((k, prev)) = &self.last
            && k != key
        {
            let s = ring.step(*prev, o);
            self.cross += 1;
            self.cross_near += usize::from(s > 0 && s <= ring.near_max());
        }
        self.last = Some((key.clone(), o));
        Some(position)
    }
}

/// One stream's part in the global verdict: its own classifier, and the (gap, step) pairs of
/// its consecutive in-range samples (at most [`MAX_PAIRS_PER_STREAM`]).
#[derive(Debug, Clone)]
pub struct StreamTrack {
    classifier: Classifier,
    last: Option<(usize, u32)>,
    pairs: Vec<(u32, u32)>,
}

impl StreamTrack {
    pub fn new(range: PortRange) -> Self {
        StreamTrack {
            classifier: Classifier::new(range),
            last: None,
            pairs: Vec::new(),
        }
    }

    /// Adds the stream's next port, at `position` in its [`Sequence`] (`None` when it is not
    /// part of one, or out of range).
    pub fn push(&mut self, port: u16, position: Option<usize>) {
        let offset = self.classifier.push(port);
        let (Some(o), Some(pos)) = (offset, position) else {
            return;
        };
        let ring = self.classifier.ring;
        if let Some((p0, o0)) = self.last.replace((pos, o)) {
            let s = ring.step(o0, o);
            if s > 0 && s <= counter_max_step(&ring) && self.pairs.len() < MAX_PAIRS_PER_STREAM {
                // A gap beyond u32 says as much as u32::MAX.
                self.pairs
                    .push((u32::try_from(pos - p0).unwrap_or(u32::MAX), s));
            }
        }
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Entries held: the classifier's and the pairs.
    #[cfg(test)]
    pub(crate) fn footprint(&self) -> usize {
        self.classifier.footprint() + self.pairs.len()
    }
}

/// The global verdict from a fed [`Sequence`] and the tracks of its streams, in key order.
pub fn global_verdict<T: std::borrow::Borrow<StreamTrack>>(
    seq: &Sequence,
    tracks: impl IntoIterator<Item = T>,
) -> GlobalAnalysis {
    let ring = seq.whole.ring;
    let sequence = seq.whole.finish();
    let (cross_sequential, near_p) =
        near_test(seq.cross_near, seq.cross, &ring, SINGLE_MIN_SHARE_NEAR);
    let cross = CrossSteps {
        count: seq.cross,
        near: seq.cross_near,
        sequential: cross_sequential,
        near_p,
    };
    let streams = stream_verdicts(tracks);
    let counter = counter_test(&streams.pairs);
    let shape = Shape {
        samples: seq.whole.samples(),
        destinations: streams.destinations,
    };
    let verdict = decide_global(&shape, sequence.local_pattern, &cross, &streams, &counter);
    GlobalAnalysis {
        pattern: verdict.pattern,
        counter_scope: verdict.counter_scope,
        samples: shape.samples,
        destinations: shape.destinations,
        sequence,
        cross_steps: cross.count,
        cross_share_near: share(cross.near, cross.count),
        cross_near_p: cross.near_p,
        streams_sequential: streams.sequential,
        streams_random: streams.random,
        streams_undecided: streams.undecided,
        counter_pairs: counter.pairs,
        counter_rho: counter.rho,
        counter_p: counter.p,
        counter_rho_upper: counter.rho_upper,
        shared_counter: verdict.shared_counter,
        single_sequence: verdict.single_sequence,
        reason: verdict.reason,
    }
}

/// How many in-range samples the global sequence has, over how many streams.
struct Shape {
    samples: usize,
    destinations: usize,
}

/// Steps between consecutive samples of different streams.
struct CrossSteps {
    count: usize,
    near: usize,
    /// At least [`SINGLE_MIN_SHARE_NEAR`] near with p < [`SEQ_MAX_P`].
    sequential: bool,
    near_p: Option<f64>,
}

/// Own verdicts of the streams (see [`classify`]), and the samples behind them.
struct StreamCounts {
    destinations: usize,
    sequential: usize,
    random: usize,
    undecided: usize,
    sequential_samples: usize,
    random_samples: usize,
    /// (gap, step) pairs of the sequential-like streams, in key order.
    pairs: Vec<(u32, u32)>,
}

/// Result of the shared-counter test (gap/step correlation).
struct CounterTest {
    pairs: usize,
    rho: Option<f64>,
    p: Option<f64>,
    rho_upper: Option<f64>,
}

/// Global verdict and what it says about the counter.
struct Verdict {
    pattern: Pattern,
    reason: String,
    counter_scope: Option<CounterScope>,
    shared_counter: Option<bool>,
    single_sequence: bool,
}

impl Verdict {
    /// A verdict that says nothing about the counter.
    fn new(pattern: Pattern, reason: String) -> Self {
        Verdict {
            pattern,
            reason,
            counter_scope: None,
            shared_counter: None,
            single_sequence: false,
        }
    }
}

/// Classifies each stream that has in-range samples alone; keeps the (gap, step) pairs of the
/// sequential-like ones for the scope test.
fn stream_verdicts<T: std::borrow::Borrow<StreamTrack>>(
    tracks: impl IntoIterator<Item = T>,
) -> StreamCounts {
    let mut counts = StreamCounts {
        destinations: 0,
        sequential: 0,
        random: 0,
        undecided: 0,
        sequential_samples: 0,
        random_samples: 0,
        pairs: Vec::new(),
    };
    for t in tracks {
        let t = t.borrow();
        let n = t.classifier.samples();
        if n == 0 {
            continue;
        }
        counts.destinations += 1;
        match t.classifier.finish().local_pattern {
            Pattern::Sequential => {
                counts.sequential += 1;
                counts.sequential_samples += n;
                counts.pairs.extend_from_slice(&t.pairs);
            }
            Pattern::Random => {
                counts.random += 1;
                counts.random_samples += n;
            }
            _ if n >= MIN_SAMPLES => counts.undecided += 1,
            _ => {}
        }
    }
    // The correlation sorts a copy of each side: the room left by growing is not needed.
    counts.pairs.shrink_to_fit();
    counts
}

/// Correlates gap with step (a shared counter's steps grow with the gap); constant steps: 0.
fn counter_test(pairs: &[(u32, u32)]) -> CounterTest {
    let n = pairs.len();
    let gaps_vary = pairs.iter().any(|p| p.0 != pairs[0].0);
    let steps_vary = pairs.iter().any(|p| p.1 != pairs[0].1);
    let rho = if n >= 3 && gaps_vary {
        if steps_vary {
            spearman_pairs(pairs)
        } else {
            Some(0.0)
        }
    } else {
        None
    };
    CounterTest {
        pairs: n,
        rho,
        p: rho.map(|r| correlation_p_value(r, n)),
        rho_upper: rho.map(|r| spearman_upper_bound(r, n)),
    }
}

/// The module docs' steps in order: single counter, stream mix, counter scope.
fn decide_global(
    shape: &Shape,
    sequence: Pattern,
    cross: &CrossSteps,
    streams: &StreamCounts,
    counter: &CounterTest,
) -> Verdict {
    let destinations = shape.destinations;
    if shape.samples < 3 {
        return Verdict::new(
            Pattern::InsufficientData,
            format!("{} samples, need at least 3", shape.samples),
        );
    }
    if destinations >= 2 && cross.count >= MIN_CROSS_STEPS && cross.sequential {
        return single_counter_verdict(cross);
    }
    match stream_mix_verdict(streams, sequence) {
        Ok(why) => scope_verdict(why, counter, destinations),
        Err(verdict) => verdict,
    }
}

/// Step 1: near cross-stream steps mean one counter without per-destination offset.
fn single_counter_verdict(cross: &CrossSteps) -> Verdict {
    Verdict {
        pattern: Pattern::Sequential,
        reason: format!(
            "{} of {} steps between different destinations are small forward steps \
             (p = {:.2e}): one counter, no per-destination offset",
            cross.near,
            cross.count,
            cross.near_p.unwrap_or(f64::NAN)
        ),
        counter_scope: Some(CounterScope::Global),
        shared_counter: Some(true),
        single_sequence: true,
    }
}

/// Step 2: `Ok(why)` when the streams show a counter, else the final verdict.
fn stream_mix_verdict(streams: &StreamCounts, sequence: Pattern) -> Result<String, Verdict> {
    let (n_seq, n_rand, n_und) = (streams.sequential, streams.random, streams.undecided);
    let (seq_samples, rand_samples) = (streams.sequential_samples, streams.random_samples);
    if n_seq > 0 && n_rand == 0 {
        return Ok(format!(
            "{n_seq} sequential streams ({seq_samples} samples), none random"
        ));
    }
    if n_seq > 0 {
        let majority = seq_samples as f64 / (seq_samples + rand_samples) as f64;
        return if majority >= MIXED_MIN_MAJORITY {
            Ok(format!(
                "{n_seq} sequential streams hold {:.0}% of the samples, {n_rand} random ones the rest",
                100.0 * majority
            ))
        } else {
            Err(Verdict::new(
                Pattern::InsufficientData,
                format!(
                    "streams disagree: {n_seq} sequential ({seq_samples} samples), \
                     {n_rand} random ({rand_samples} samples)"
                ),
            ))
        };
    }
    if n_rand > 0 && sequence == Pattern::Random {
        return Err(Verdict::new(
            Pattern::Random,
            format!("{n_rand} random streams, none sequential; global sequence random"),
        ));
    }
    if n_rand == 0 && sequence == Pattern::Sequential {
        return Ok("no stream decided alone, but the global sequence is sequential".into());
    }
    Err(Verdict::new(
        Pattern::InsufficientData,
        format!(
            "no sequential stream; {n_rand} random, {n_und} undecided; global sequence {sequence}"
        ),
    ))
}

/// Step 3: `sequential`, and with enough pairs a high gap/step correlation means one shared
/// counter, a low upper bound one per destination; otherwise the scope is undetermined.
fn scope_verdict(why: String, counter: &CounterTest, destinations: usize) -> Verdict {
    let pairs = counter.pairs;
    let (scope, shared, how) = if destinations < 2 {
        (
            CounterScope::Undetermined,
            None,
            "one destination: cannot tell a shared counter from per-destination ones".to_string(),
        )
    } else if pairs < MIN_COUNTER_PAIRS {
        (
            CounterScope::Undetermined,
            None,
            format!(
                "only {pairs} (gap, step) pairs, need {MIN_COUNTER_PAIRS} to tell a shared \
                 counter from per-destination ones"
            ),
        )
    } else {
        match (counter.rho, counter.p, counter.rho_upper) {
            (Some(r), Some(p), _) if r >= SHARED_MIN_RHO && p < SHARED_MAX_P => (
                CounterScope::Global,
                Some(true),
                format!(
                    "steps grow with the number of connects in between \
                     (rho = {r:.2}, p = {p:.2e}, {pairs} pairs): one shared counter"
                ),
            ),
            (Some(r), _, Some(up)) if up < SHARED_MIN_RHO => (
                CounterScope::PerDestination,
                Some(false),
                format!(
                    "steps do not depend on connects to other destinations \
                     (rho = {r:.2}, 99% upper bound {up:.2}, {pairs} pairs): per-destination counters"
                ),
            ),
            (Some(r), _, _) => (
                CounterScope::Undetermined,
                None,
                format!("gap/step correlation rho = {r:.2} from {pairs} pairs is inconclusive"),
            ),
            (None, _, _) => (
                CounterScope::Undetermined,
                None,
                format!(
                    "gaps between a destination's connects never vary ({destinations} \
                     destinations): cannot tell a shared counter from per-destination ones"
                ),
            ),
        }
    };
    Verdict {
        counter_scope: Some(scope),
        shared_counter: shared,
        ..Verdict::new(Pattern::Sequential, format!("{why}; {how}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: PortRange = (32768, 60999);

    #[test]
    fn serde_names() {
        let names: Vec<String> = Pattern::ALL
            .iter()
            .map(|p| serde_json::to_string(p).unwrap())
            .collect();
        assert_eq!(
            names,
            ["\"sequential\"", "\"random\"", "\"insufficient-data\""]
        );
        for p in Pattern::ALL {
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        for c in CounterScope::ALL {
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
        }
        assert_eq!(
            serde_json::to_string(&CounterScope::PerDestination).unwrap(),
            "\"per-destination\""
        );
        // Reports written before the scope existed still read.
        let old: Pattern = serde_json::from_str("\"per-destination-sequential\"").unwrap();
        assert_eq!(old, Pattern::Sequential);
    }

    #[test]
    fn plain_counter_is_sequential() {
        let ports: Vec<u16> = (0..30u32)
            .map(|i| (32768 + (28220 + 2 * i) % 28232) as u16)
            .collect();
        let a = classify(&ports, DEFAULT);
        assert_eq!(a.pattern, Pattern::Sequential, "{}", a.reason);
        assert_eq!(a.mode_step, Some(2));
        assert_eq!(a.median_step, Some(2));
        assert_eq!(a.share_small_steps, Some(1.0));
        assert_eq!(a.parity.even_ports, Some(1.0));
        assert_eq!(a.predictability, Some(1.0));
        assert_eq!(a.skips, 0);
    }

    #[test]
    fn too_few_samples() {
        let a = classify(&[40000, 40002], DEFAULT);
        assert_eq!(a.pattern, Pattern::InsufficientData);
        assert_eq!(a.counter_scope, None);
        // Three ports two apart on a 28,232-port range: a counter (p = 3e-7).
        let a = classify(&[40000, 40002, 40004], DEFAULT);
        assert_eq!(a.pattern, Pattern::Sequential, "{}", a.reason);
        assert_eq!(a.counter_scope, Some(CounterScope::Undetermined));
        assert_eq!(a.samples, 3);
        // Three random-looking ports: too few to call them anything.
        let a = classify(&[40000, 51234, 35001], DEFAULT);
        assert_eq!(a.pattern, Pattern::InsufficientData, "{}", a.reason);
        // On a 64-port range small steps are common by chance: 7 samples say nothing.
        let a = classify(
            &[40000, 40002, 40004, 40006, 40008, 40010, 40012],
            (40000, 40063),
        );
        assert_eq!(a.pattern, Pattern::InsufficientData, "{}", a.reason);
        let a = classify(&[1, 2, 3, 4, 5, 6, 7, 8, 9], DEFAULT);
        assert_eq!(a.samples, 0);
        assert_eq!(a.out_of_range, 9);
        assert_eq!(a.pattern, Pattern::InsufficientData);
    }

    /// Issue 10: a stream's state does not grow with its ports. A per-destination counter
    /// (steps 2..=16) holds the same after ten thousand ports as after a million; a random
    /// stream at most one entry per possible step.
    #[test]
    fn state_per_stream_is_bounded() {
        let ring = Ring::new(DEFAULT);
        let mut counter = StreamTrack::new(DEFAULT);
        let mut random = Classifier::new(DEFAULT);
        let (mut offset, mut x) = (0u32, 1u64);
        let mut seen = Vec::new();
        for i in 0..1_000_000u32 {
            offset = (offset + 2 + 2 * (i % 8)) % ring.size;
            counter.push(ring.low + offset as u16, Some(i as usize));
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            random.push(ring.low + ((x >> 33) % u64::from(ring.size)) as u16);
            if i == 9_999 || i == 999_999 {
                seen.push(counter.footprint());
            }
        }
        assert_eq!(seen[0], seen[1], "{seen:?}");
        assert!(seen[1] <= 8 + 64 + MAX_PAIRS_PER_STREAM, "{seen:?}");
        assert!(random.footprint() <= ring.size as usize + 64);
        assert_eq!(counter.classifier().finish().pattern, Pattern::Sequential);
        assert_eq!(random.finish().pattern, Pattern::Random);
    }

    #[test]
    fn constant_stride_is_a_counter() {
        // A fixed stride of 5000 wraps over the whole range: uniform values and
        // no near steps, but every step drifts forward: a counter with wide
        // increments. Never call it random.
        let ports: Vec<u16> = (0..60u32)
            .map(|i| (32768 + (i * 5000) % 28232) as u16)
            .collect();
        let a = classify(&ports, DEFAULT);
        assert_eq!(a.pattern, Pattern::Sequential, "{}", a.reason);
        assert!(a.predictability.unwrap() > 0.9);
        // Backwards by 5000: structure, but not a forward counter, and not random either.
        let ports: Vec<u16> = (0..60u32)
            .map(|i| (32768 + (28232 * 60 - i * 5000) % 28232) as u16)
            .collect();
        let a = classify(&ports, DEFAULT);
        assert_eq!(a.pattern, Pattern::InsufficientData, "{}", a.reason);
    }
}
