//! End-to-end tests: simulated algorithms through [`analyze`].
//!
//! A run's verdict is `(pattern, counter scope)`. The cases beyond the RFC
//! 6056 / Linux algorithms on the default workload are the recordings a
//! person would look at and say "that is a counter" (or "that is noise"):
//! a fast burst to one destination, two destinations, skips over occupied
//! ports, wrap-around at the range end, a parity split, few samples.

use super::simulate::{Algorithm, Workload, simulate};
use super::*;

const SEEDS: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// Pattern and, for `sequential`, the counter scope.
type Verdict = (Pattern, Option<CounterScope>);

const SEQ_GLOBAL: Verdict = (Pattern::Sequential, Some(CounterScope::Global));
const SEQ_PER_DEST: Verdict = (Pattern::Sequential, Some(CounterScope::PerDestination));
const SEQ_UNDETERMINED: Verdict = (Pattern::Sequential, Some(CounterScope::Undetermined));
const RANDOM: Verdict = (Pattern::Random, None);
const INSUFFICIENT: Verdict = (Pattern::InsufficientData, None);

/// Streams with fewer samples than this are left out of the run verdict: with one or two
/// ports nothing can be said, and they say `insufficient-data` (checked separately).
const RUN_MIN_SAMPLES: usize = 3;

fn verdict_of(a: &StreamAnalysis) -> Verdict {
    (a.pattern, a.counter_scope)
}

/// The run's verdict: the global verdict when every stream with at least
/// [`RUN_MIN_SAMPLES`] samples shares it, else `None` ("mixed").
fn run_verdict(report: &Report) -> Option<Verdict> {
    let g = (report.global.pattern, report.global.counter_scope);
    report
        .streams
        .iter()
        .filter(|s| s.analysis.samples >= RUN_MIN_SAMPLES)
        .all(|s| verdict_of(&s.analysis) == g)
        .then_some(g)
}

fn name(v: Option<Verdict>) -> String {
    match v {
        Some((p, s)) => format!("{p}/{}", CounterScope::label(s)),
        None => "mixed".into(),
    }
}

fn describe(report: &Report) -> String {
    let mut s = format!(
        "global {}: {}\n  global sequence: {}\n",
        name(Some((report.global.pattern, report.global.counter_scope))),
        report.global.reason,
        report.global.sequence.reason
    );
    for st in &report.streams {
        s += &format!(
            "  {:?}:{:?} n={} {} ({}) pred={:?}\n",
            st.key.daddr,
            st.key.dport,
            st.analysis.samples,
            name(Some(verdict_of(&st.analysis))),
            st.analysis.reason,
            st.analysis.predictability
        );
    }
    s
}

/// Checks the run verdict over [`SEEDS`], and that tiny streams say `insufficient-data`
/// unless they sit on one sequence across destinations.
fn check(alg: Algorithm, workload: &Workload, expected: Verdict) {
    for seed in SEEDS {
        let samples = simulate(alg, workload, seed);
        let report = analyze(&samples, workload.range);
        assert_eq!(
            run_verdict(&report),
            Some(expected),
            "{} seed {seed}\n{}",
            alg.name(),
            describe(&report)
        );
        for s in &report.streams {
            if s.analysis.samples < RUN_MIN_SAMPLES && !report.global.single_sequence {
                assert_eq!(
                    verdict_of(&s.analysis),
                    INSUFFICIENT,
                    "{}",
                    describe(&report)
                );
            }
        }
    }
}

#[test]
fn rfc6056_alg1_is_random() {
    check(Algorithm::Rfc1SimpleRandom, &Workload::default(), RANDOM);
}

#[test]
fn rfc6056_alg2_is_random() {
    check(Algorithm::Rfc2RandomRetry, &Workload::default(), RANDOM);
}

#[test]
fn rfc6056_alg3_is_a_global_counter() {
    check(Algorithm::Rfc3SimpleHash, &Workload::default(), SEQ_GLOBAL);
}

#[test]
fn rfc6056_alg4_is_a_per_destination_counter() {
    check(
        Algorithm::Rfc4DoubleHash,
        &Workload::default(),
        SEQ_PER_DEST,
    );
}

#[test]
fn rfc6056_alg5_is_a_global_counter() {
    check(
        Algorithm::Rfc5RandomIncrements,
        &Workload::default(),
        SEQ_GLOBAL,
    );
}

#[test]
fn linux_connect_is_a_per_destination_counter() {
    check(Algorithm::LinuxConnect, &Workload::default(), SEQ_PER_DEST);
}

#[test]
fn linux_connect_before_5_12_is_a_global_counter() {
    check(
        Algorithm::LinuxConnectPre512,
        &Workload::default(),
        SEQ_GLOBAL,
    );
}

#[test]
fn linux_bind_is_random() {
    check(Algorithm::LinuxBind, &Workload::default(), RANDOM);
}

#[test]
fn linux_udp_is_random() {
    check(Algorithm::LinuxUdp, &Workload::default(), RANDOM);
}

fn tiny() -> Workload {
    // 20 connects over 8 destinations: no stream reaches 8 samples.
    Workload {
        events: 20,
        destinations: 8,
        ..Workload::default()
    }
}

/// The recording: 4,096 connects in 0.3 s to one destination.
fn burst() -> Workload {
    Workload {
        destinations: 1,
        events: 4096,
        mean_interval_ns: 73_000,
        ..Workload::default()
    }
}

fn one_destination() -> Workload {
    Workload {
        destinations: 1,
        ..Workload::default()
    }
}

fn two_destinations() -> Workload {
    Workload {
        destinations: 2,
        ..Workload::default()
    }
}

/// A third of the range held: the counter jumps over occupied ports (skips).
fn crowded() -> Workload {
    Workload {
        occupied_fraction: 0.3,
        ..Workload::default()
    }
}

/// A 1000-port range, one destination, fast: the counter wraps from the top of the range
/// back to the bottom several times.
fn wrapping() -> Workload {
    Workload {
        range: (40000, 40999),
        destinations: 1,
        events: 1200,
        mean_interval_ns: 5_000_000,
        ..Workload::default()
    }
}

/// Every even port held (e.g. by another tenant's connections to the same destinations):
/// Linux connect() scans the whole even half, then falls back to the odd ports.
fn parity_split() -> Workload {
    Workload {
        low_parity_occupied: 1.0,
        ..Workload::default()
    }
}

/// `n` fast connects to one destination.
fn few(n: usize) -> Workload {
    Workload {
        destinations: 1,
        events: n,
        mean_interval_ns: 1_000_000,
        ..Workload::default()
    }
}

#[test]
fn tiny_streams() {
    for alg in Algorithm::ALL {
        let w = if alg.is_connect() {
            tiny()
        } else {
            Workload {
                events: 7,
                ..tiny()
            }
        };
        for seed in SEEDS {
            let r = analyze(&simulate(alg, &w, seed), w.range);
            let random = alg.expected().0 == Pattern::Random;
            for s in &r.streams {
                assert!(s.analysis.samples < pattern::MIN_SAMPLES);
                let v = verdict_of(&s.analysis);
                if random {
                    // A handful of random ports is never a counter, and too few to call random.
                    assert_eq!(v, INSUFFICIENT, "{}\n{}", alg.name(), describe(&r));
                } else {
                    // A counter seen a few times is a counter or too little, never random.
                    assert_ne!(v.0, Pattern::Random, "{}\n{}", alg.name(), describe(&r));
                }
            }
            // Algorithm 5 has no per-destination offset: even 20 connects show one counter
            // across destinations.
            let global = if alg == Algorithm::Rfc5RandomIncrements {
                SEQ_GLOBAL
            } else if random {
                INSUFFICIENT
            } else {
                (r.global.pattern, r.global.counter_scope)
            };
            assert_eq!(
                (r.global.pattern, r.global.counter_scope),
                global,
                "{}\n{}",
                alg.name(),
                describe(&r)
            );
            assert_ne!(r.global.pattern, Pattern::Random);
        }
    }
}

#[test]
fn one_destination_is_a_counter_of_undetermined_scope() {
    for alg in [
        Algorithm::Rfc3SimpleHash,
        Algorithm::Rfc4DoubleHash,
        Algorithm::Rfc5RandomIncrements,
        Algorithm::LinuxConnect,
        Algorithm::LinuxConnectPre512,
    ] {
        check(alg, &one_destination(), SEQ_UNDETERMINED);
    }
    check(Algorithm::Rfc1SimpleRandom, &one_destination(), RANDOM);
}

#[test]
fn fast_burst_to_one_destination_is_sequential() {
    for alg in [Algorithm::LinuxConnect, Algorithm::LinuxConnectPre512] {
        check(alg, &burst(), SEQ_UNDETERMINED);
        let r = analyze(&simulate(alg, &burst(), 1), burst().range);
        assert_eq!(r.streams[0].analysis.samples, 4096);
        assert!(r.streams[0].analysis.predictability.unwrap() > 0.5);
        assert_eq!(r.global.destinations, 1);
    }
    check(Algorithm::Rfc1SimpleRandom, &burst(), RANDOM);
}

#[test]
fn two_destinations_tell_the_scope() {
    check(Algorithm::LinuxConnect, &two_destinations(), SEQ_PER_DEST);
    check(Algorithm::Rfc4DoubleHash, &two_destinations(), SEQ_PER_DEST);
    check(
        Algorithm::LinuxConnectPre512,
        &two_destinations(),
        SEQ_GLOBAL,
    );
    check(Algorithm::Rfc3SimpleHash, &two_destinations(), SEQ_GLOBAL);
    check(Algorithm::Rfc1SimpleRandom, &two_destinations(), RANDOM);
}

#[test]
fn skips_over_occupied_ports_stay_sequential() {
    check(Algorithm::LinuxConnect, &crowded(), SEQ_PER_DEST);
    check(Algorithm::LinuxConnectPre512, &crowded(), SEQ_GLOBAL);
    let r = analyze(
        &simulate(Algorithm::LinuxConnect, &crowded(), 3),
        crowded().range,
    );
    assert!(
        r.streams.iter().all(|s| s.analysis.skips > 0),
        "{}",
        describe(&r)
    );
    check(Algorithm::LinuxBind, &crowded(), RANDOM);
}

#[test]
fn wrap_around_at_the_range_end_stays_sequential() {
    let w = wrapping();
    for alg in [Algorithm::LinuxConnect, Algorithm::LinuxConnectPre512] {
        check(alg, &w, SEQ_UNDETERMINED);
        let samples = simulate(alg, &w, 1);
        let wraps = samples.windows(2).filter(|p| p[1].port < p[0].port).count();
        assert!(wraps >= 2, "{} wraps {wraps}", alg.name());
    }
    check(Algorithm::Rfc1SimpleRandom, &w, RANDOM);
}

#[test]
fn parity_split_stays_sequential() {
    let w = parity_split();
    check(Algorithm::LinuxConnect, &w, SEQ_PER_DEST);
    let r = analyze(&simulate(Algorithm::LinuxConnect, &w, 5), w.range);
    for s in &r.streams {
        assert_eq!(s.analysis.parity.even_ports, Some(0.0), "{}", describe(&r));
    }
}

#[test]
fn few_samples() {
    // Three to seven fast connects to one destination: a counter already.
    for n in [3, 5, 7] {
        check(Algorithm::LinuxConnect, &few(n), SEQ_UNDETERMINED);
        check(Algorithm::LinuxConnectPre512, &few(n), SEQ_UNDETERMINED);
        // Random ports that few: not enough to call them random.
        check(Algorithm::Rfc1SimpleRandom, &few(n), INSUFFICIENT);
    }
    // Two ports say nothing.
    for seed in SEEDS {
        let r = analyze(
            &simulate(Algorithm::LinuxConnect, &few(2), seed),
            DEFAULT_RANGE,
        );
        assert_eq!(verdict_of(&r.streams[0].analysis), INSUFFICIENT);
        assert_eq!(r.global.pattern, Pattern::InsufficientData);
    }
    // From eight samples on, random ports are random.
    for n in [8, 12] {
        check(Algorithm::Rfc1SimpleRandom, &few(n), RANDOM);
        check(Algorithm::LinuxBind, &few(n), RANDOM);
    }
}

#[test]
fn ipv4_mapped_destination_is_the_ipv4_stream() {
    use crate::event::{Family, HookId, Outcome, Proto};
    let event = |daddr: &str, family: Family| Event {
        ts_ns: 1,
        op: Op::Connect,
        proto: Proto::Tcp,
        family,
        port: 40000,
        saddr: daddr.parse().unwrap(),
        daddr: Some(daddr.parse().unwrap()),
        dport: Some(6000),
        result: Outcome::Ok,
        pid: 1,
        tid: 1,
        comm: "c".into(),
        uid: 0,
        cgroup_id: 1,
        netns: 7,
        hook: HookId::SockOpsConnect,
        latency_ns: None,
        cgroup: None,
        workload: None,
        nat: None,
    };
    let v4 = event("127.0.0.1", Family::Inet);
    let mapped = event("::ffff:127.0.0.1", Family::Inet6);
    assert_eq!(StreamKey::of(&mapped), StreamKey::of(&v4));
    assert_eq!(StreamKey::of(&mapped).family, Family::Inet);
    // The event keeps what the kernel reported.
    assert_eq!(mapped.daddr, Some("::ffff:127.0.0.1".parse().unwrap()));
    // A real IPv6 destination stays IPv6.
    let v6 = event("::1", Family::Inet6);
    assert_eq!(StreamKey::of(&v6).family, Family::Inet6);
    assert_ne!(StreamKey::of(&v6), StreamKey::of(&v4));
}

#[test]
fn predictability() {
    let w = Workload::default();
    for alg in Algorithm::ALL {
        for seed in SEEDS {
            let r = analyze(&simulate(alg, &w, seed), w.range);
            for s in &r.streams {
                let p = s.analysis.predictability.unwrap();
                match alg {
                    // Increments of 1..=500 are far wider than the +-8 window.
                    Algorithm::Rfc5RandomIncrements => assert!(p < 0.2, "{} {p}", alg.name()),
                    _ if alg.expected().0 == Pattern::Random => {
                        assert!(p < 0.1, "{} {p}", alg.name())
                    }
                    _ => assert!(p > 0.5, "{} seed {seed} {p}", alg.name()),
                }
            }
        }
    }
}

#[test]
fn linux_connect_statistics() {
    let w = Workload::default();
    let r = analyze(&simulate(Algorithm::LinuxConnect, &w, 42), w.range);
    for s in &r.streams {
        let a = &s.analysis;
        // Even ports only (low = 32768 is even), even steps of 2..=16
        // inside one 10 s window.
        assert_eq!(a.parity.even_ports, Some(1.0));
        assert_eq!(a.parity.even_steps, Some(1.0));
        assert!(a.share_small_steps.unwrap() > 0.7, "{a:?}");
        let m = a.median_step.unwrap();
        assert!((2..=16).contains(&m), "{m}");
        assert!(a.mode_step.unwrap() % 2 == 0 && a.mode_step.unwrap() <= 16);
    }
    assert_eq!(r.global.shared_counter, Some(false));
    // The report serialises with the documented names.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["global"]["pattern"], "sequential");
    assert_eq!(json["global"]["counter_scope"], "per-destination");
    assert_eq!(json["streams"][0]["analysis"]["pattern"], "sequential");
    assert_eq!(
        json["streams"][0]["analysis"]["counter_scope"],
        "per-destination"
    );
    assert_eq!(json["streams"][0]["key"]["op"], "connect");
}

#[test]
fn samples_in_any_order() {
    let w = Workload::default();
    let mut samples = simulate(Algorithm::Rfc3SimpleHash, &w, 9);
    let sorted = analyze(&samples, w.range);
    samples.reverse();
    assert_eq!(analyze(&samples, w.range), sorted);
}

#[test]
fn confusion_matrix() {
    let w = Workload::default();
    let columns: [Option<Verdict>; 6] = [
        Some(SEQ_GLOBAL),
        Some(SEQ_PER_DEST),
        Some(SEQ_UNDETERMINED),
        Some(RANDOM),
        Some(INSUFFICIENT),
        None,
    ];
    let mut cases: Vec<(String, Algorithm, Workload, Verdict)> = Algorithm::ALL
        .iter()
        .map(|&a| (a.name().to_string(), a, w, a.expected()))
        .collect();
    let imagined: [(&str, Algorithm, Workload, Verdict); 22] = [
        (
            "rfc6056-alg1 tiny",
            Algorithm::Rfc1SimpleRandom,
            tiny(),
            INSUFFICIENT,
        ),
        (
            "linux-connect 1 dest",
            Algorithm::LinuxConnect,
            one_destination(),
            SEQ_UNDETERMINED,
        ),
        (
            "linux<5.12 1 dest",
            Algorithm::LinuxConnectPre512,
            one_destination(),
            SEQ_UNDETERMINED,
        ),
        (
            "linux-connect burst",
            Algorithm::LinuxConnect,
            burst(),
            SEQ_UNDETERMINED,
        ),
        (
            "linux<5.12 burst",
            Algorithm::LinuxConnectPre512,
            burst(),
            SEQ_UNDETERMINED,
        ),
        (
            "rfc6056-alg1 burst",
            Algorithm::Rfc1SimpleRandom,
            burst(),
            RANDOM,
        ),
        (
            "linux-connect 2 dest",
            Algorithm::LinuxConnect,
            two_destinations(),
            SEQ_PER_DEST,
        ),
        (
            "linux<5.12 2 dest",
            Algorithm::LinuxConnectPre512,
            two_destinations(),
            SEQ_GLOBAL,
        ),
        (
            "rfc6056-alg1 2 dest",
            Algorithm::Rfc1SimpleRandom,
            two_destinations(),
            RANDOM,
        ),
        (
            "linux-connect skips",
            Algorithm::LinuxConnect,
            crowded(),
            SEQ_PER_DEST,
        ),
        (
            "linux<5.12 skips",
            Algorithm::LinuxConnectPre512,
            crowded(),
            SEQ_GLOBAL,
        ),
        (
            "linux-bind crowded",
            Algorithm::LinuxBind,
            crowded(),
            RANDOM,
        ),
        (
            "linux-connect wrap",
            Algorithm::LinuxConnect,
            wrapping(),
            SEQ_UNDETERMINED,
        ),
        (
            "linux<5.12 wrap",
            Algorithm::LinuxConnectPre512,
            wrapping(),
            SEQ_UNDETERMINED,
        ),
        (
            "rfc6056-alg1 wrap",
            Algorithm::Rfc1SimpleRandom,
            wrapping(),
            RANDOM,
        ),
        (
            "linux-connect parity",
            Algorithm::LinuxConnect,
            parity_split(),
            SEQ_PER_DEST,
        ),
        (
            "linux-connect 3",
            Algorithm::LinuxConnect,
            few(3),
            SEQ_UNDETERMINED,
        ),
        (
            "linux-connect 5",
            Algorithm::LinuxConnect,
            few(5),
            SEQ_UNDETERMINED,
        ),
        (
            "linux<5.12 5",
            Algorithm::LinuxConnectPre512,
            few(5),
            SEQ_UNDETERMINED,
        ),
        (
            "rfc6056-alg1 5",
            Algorithm::Rfc1SimpleRandom,
            few(5),
            INSUFFICIENT,
        ),
        (
            "rfc6056-alg1 10",
            Algorithm::Rfc1SimpleRandom,
            few(10),
            RANDOM,
        ),
        ("linux-bind 10", Algorithm::LinuxBind, few(10), RANDOM),
    ];
    cases.extend(
        imagined
            .into_iter()
            .map(|(n, a, wl, v)| (n.to_string(), a, wl, v)),
    );
    let mut rows: Vec<(String, Verdict, [usize; 6])> = Vec::new();
    for (name, alg, wl, expected) in &cases {
        let mut counts = [0usize; 6];
        for seed in 100..110 {
            let r = analyze(&simulate(*alg, wl, seed), wl.range);
            let v = run_verdict(&r);
            counts[columns.iter().position(|c| *c == v).unwrap_or(5)] += 1;
        }
        rows.push((name.clone(), *expected, counts));
    }
    let mut text = format!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
        "case \\ verdict", "seq/glob", "seq/dest", "seq/und", "random", "insuff.", "mixed"
    );
    for (name, _, c) in &rows {
        text += &format!(
            "{:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
            name, c[0], c[1], c[2], c[3], c[4], c[5]
        );
    }
    println!(
        "confusion matrix (10 seeds each; run verdict = global and every stream of 3+ samples agree):\n{text}"
    );
    for (name, expected, c) in &rows {
        let col = columns.iter().position(|v| *v == Some(*expected)).unwrap();
        assert_eq!(
            c[col],
            10,
            "{name}: expected {}\n{text}",
            super::tests::name(Some(*expected))
        );
    }
}

/// Error rates over many seeds and workloads; run with
/// `cargo test -p port-trace --lib analysis::tests::sweep -- --ignored --nocapture`.
#[test]
#[ignore = "slow sweep, prints error rates"]
fn sweep() {
    let base = Workload::default();
    let workloads = [
        ("default", base),
        (
            "2 dests",
            Workload {
                destinations: 2,
                ..base
            },
        ),
        (
            "8 dests",
            Workload {
                destinations: 8,
                ..base
            },
        ),
        (
            "16 dests 400ev",
            Workload {
                destinations: 16,
                events: 400,
                ..base
            },
        ),
        ("60 events", Workload { events: 60, ..base }),
        (
            "1 per 2s",
            Workload {
                mean_interval_ns: 2_000_000_000,
                ..base
            },
        ),
        (
            "10% occupied",
            Workload {
                occupied_fraction: 0.10,
                ..base
            },
        ),
        (
            "range 1000",
            Workload {
                range: (40000, 40999),
                ..base
            },
        ),
    ];
    for (wname, w) in workloads {
        for alg in Algorithm::ALL {
            let (mut right, mut undecided, mut wrong) = (0, 0, 0);
            for seed in 0..200 {
                let r = analyze(&simulate(alg, &w, seed), w.range);
                for s in &r.streams {
                    if s.analysis.samples < pattern::MIN_SAMPLES {
                        continue;
                    }
                    match s.analysis.pattern {
                        p if p == alg.expected().0 => right += 1,
                        Pattern::InsufficientData => undecided += 1,
                        _ => wrong += 1,
                    }
                }
            }
            println!(
                "{wname:<16} {:<20} right {right:>5} undecided {undecided:>5} wrong {wrong:>5}",
                alg.name()
            );
        }
    }
}
