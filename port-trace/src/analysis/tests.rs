//! End-to-end tests: simulated algorithms through [`analyze`].

use super::simulate::{Algorithm, Workload, simulate};
use super::*;

const SEEDS: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// The run's verdict: the shared final pattern of every stream and of the
/// global analysis, or `None` when they differ.
fn run_verdict(report: &Report) -> Option<Pattern> {
    let g = report.global.pattern;
    report
        .streams
        .iter()
        .all(|s| s.analysis.pattern == g)
        .then_some(g)
}

fn describe(report: &Report) -> String {
    let mut s = format!(
        "global {}: {}\n  global sequence: {}\n",
        report.global.pattern, report.global.reason, report.global.sequence.reason
    );
    for st in &report.streams {
        s += &format!(
            "  {:?}:{:?} n={} {} ({}) pred={:?}\n",
            st.key.daddr,
            st.key.dport,
            st.analysis.samples,
            st.analysis.pattern,
            st.analysis.reason,
            st.analysis.predictability
        );
    }
    s
}

fn check(alg: Algorithm, workload: &Workload, expected: Pattern) {
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
    }
}

#[test]
fn rfc6056_alg1_is_random() {
    check(
        Algorithm::Rfc1SimpleRandom,
        &Workload::default(),
        Pattern::Random,
    );
}

#[test]
fn rfc6056_alg2_is_random() {
    check(
        Algorithm::Rfc2RandomRetry,
        &Workload::default(),
        Pattern::Random,
    );
}

#[test]
fn rfc6056_alg3_is_sequential() {
    check(
        Algorithm::Rfc3SimpleHash,
        &Workload::default(),
        Pattern::Sequential,
    );
}

#[test]
fn rfc6056_alg4_is_per_destination_sequential() {
    check(
        Algorithm::Rfc4DoubleHash,
        &Workload::default(),
        Pattern::PerDestinationSequential,
    );
}

#[test]
fn rfc6056_alg5_is_sequential() {
    check(
        Algorithm::Rfc5RandomIncrements,
        &Workload::default(),
        Pattern::Sequential,
    );
}

#[test]
fn linux_connect_is_per_destination_sequential() {
    check(
        Algorithm::LinuxConnect,
        &Workload::default(),
        Pattern::PerDestinationSequential,
    );
}

#[test]
fn linux_connect_before_5_12_is_sequential() {
    check(
        Algorithm::LinuxConnectPre512,
        &Workload::default(),
        Pattern::Sequential,
    );
}

#[test]
fn linux_bind_is_random() {
    check(Algorithm::LinuxBind, &Workload::default(), Pattern::Random);
}

#[test]
fn linux_udp_is_random() {
    check(Algorithm::LinuxUdp, &Workload::default(), Pattern::Random);
}

fn tiny() -> Workload {
    // 20 connects over 8 destinations: no stream reaches 8 samples.
    Workload {
        events: 20,
        destinations: 8,
        ..Workload::default()
    }
}

#[test]
fn tiny_streams_are_insufficient() {
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
            for s in &r.streams {
                assert!(s.analysis.samples < pattern::MIN_SAMPLES);
                assert_eq!(s.analysis.pattern, Pattern::InsufficientData);
            }
            // Algorithm 5 has no per-destination offset: even 20 connects show
            // one counter across destinations.
            let global = if alg == Algorithm::Rfc5RandomIncrements {
                Pattern::Sequential
            } else {
                Pattern::InsufficientData
            };
            assert_eq!(r.global.pattern, global, "{}\n{}", alg.name(), describe(&r));
        }
    }
}

#[test]
fn one_destination_cannot_tell_shared_from_per_destination() {
    let w = Workload {
        destinations: 1,
        ..Workload::default()
    };
    for alg in [
        Algorithm::Rfc3SimpleHash,
        Algorithm::Rfc4DoubleHash,
        Algorithm::LinuxConnect,
    ] {
        for seed in SEEDS {
            let r = analyze(&simulate(alg, &w, seed), w.range);
            assert_eq!(r.streams.len(), 1);
            assert_eq!(
                r.streams[0].analysis.local_pattern,
                Pattern::Sequential,
                "{}",
                describe(&r)
            );
            assert_eq!(r.global.pattern, Pattern::InsufficientData);
            assert_eq!(r.streams[0].analysis.pattern, Pattern::InsufficientData);
        }
    }
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
                    _ if alg.expected() == Pattern::Random => {
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
    assert_eq!(json["global"]["pattern"], "per-destination-sequential");
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
    let mut rows: Vec<(String, Pattern, [usize; 5])> = Vec::new();
    let mut cases: Vec<(String, Algorithm, Workload, Pattern)> = Algorithm::ALL
        .iter()
        .map(|&a| (a.name().to_string(), a, w, a.expected()))
        .collect();
    cases.push((
        "linux-connect tiny".into(),
        Algorithm::LinuxConnect,
        tiny(),
        Pattern::InsufficientData,
    ));
    cases.push((
        "rfc6056-alg1 tiny".into(),
        Algorithm::Rfc1SimpleRandom,
        tiny(),
        Pattern::InsufficientData,
    ));
    for (name, alg, wl, expected) in &cases {
        let mut counts = [0usize; 5];
        for seed in 100..110 {
            let r = analyze(&simulate(*alg, wl, seed), wl.range);
            let col = match run_verdict(&r) {
                Some(p) => Pattern::ALL.iter().position(|&q| q == p).unwrap(),
                None => 4,
            };
            counts[col] += 1;
        }
        rows.push((name.clone(), *expected, counts));
    }
    let mut text = format!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>6}\n",
        "algorithm \\ verdict", "sequential", "per-dest", "random", "insuff.", "mixed"
    );
    for (name, _, c) in &rows {
        text += &format!(
            "{:<20} {:>10} {:>10} {:>10} {:>10} {:>6}\n",
            name, c[0], c[1], c[2], c[3], c[4]
        );
    }
    println!(
        "confusion matrix (10 seeds each, run verdict = all streams and global agree):\n{text}"
    );
    for (name, expected, c) in &rows {
        let col = Pattern::ALL.iter().position(|p| p == expected).unwrap();
        assert_eq!(c[col], 10, "{name}: expected {expected}\n{text}");
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
                        p if p == alg.expected() => right += 1,
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
