//! From runs to table cells: per-round ratios to the same round's "no tracer" rate, their
//! median and spread, median rates, events seen against generated, losses.

use super::{
    Platform,
    loops::{LOOPS, Loop},
    rounds::Run,
    tracers::Column,
};

/// One loop under one column, over every round.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    /// Median over rounds of (this rate / no-tracer rate of the same round).
    pub ratio: Option<f64>,
    /// The per-round ratios' smallest and largest.
    pub spread: Option<(f64, f64)>,
    /// The fastest round's rate over the fastest no-tracer round's: for runs whose
    /// disturbances cannot be seen (the VM), since a disturbance only ever slows a run.
    pub fastest: Option<f64>,
    /// Median iterations per second.
    pub rate: Option<f64>,
    /// Port choices the tracer reported, summed over rounds (None: this column does not count).
    pub seen: Option<u64>,
    /// Port choices the loop made, summed over the same rounds.
    pub generated: u64,
    /// Events lost over this column's runs (all loops of a run together).
    pub lost: Option<u64>,
    /// Why there are no figures.
    pub missing: Option<String>,
    /// Rounds with figures, and those of them nothing disturbed (another tracer, CPU
    /// contention, steal; in this column's run or in the same round's no-tracer run).
    pub rounds: usize,
    pub clean_rounds: usize,
}

impl Cell {
    /// Every round was disturbed: the figures include what disturbed them.
    pub fn disturbed(&self) -> bool {
        self.rounds > 0 && self.clean_rounds == 0
    }
}

/// One table row: a loop under one hook set on one platform.
pub struct Row {
    pub lp: &'static Loop,
    pub hooks: String,
    /// In [`Column::ALL`] order.
    pub cells: Vec<Cell>,
}

/// The platform's rows: its hook sets (in order of first use), each with every loop.
pub fn rows(p: &Platform) -> Vec<Row> {
    let mut sets = super::rounds::hook_sets(&p.runs);
    if sets.is_empty() {
        // No port-trace run attached (each says why in its cell).
        sets.push("auto".into());
    }
    let mut rows = Vec::new();
    for h in &sets {
        for lp in &LOOPS {
            let cells = Column::ALL
                .iter()
                .map(|&c| cell(&p.runs, c, h, lp))
                .collect();
            rows.push(Row {
                lp,
                hooks: h.clone(),
                cells,
            });
        }
    }
    rows
}

fn cell(runs: &[Run], column: Column, hooks: &str, lp: &Loop) -> Cell {
    // trace and serve rows are per hook set; no tracer and bpftrace serve every row.
    let mine: Vec<&Run> = runs
        .iter()
        .filter(|r| r.column == column)
        .filter(|r| {
            !matches!(column, Column::Trace | Column::SendHooks | Column::Serve)
                || r.hooks.as_deref().is_none_or(|h| h == hooks)
        })
        .collect();
    let mut c = Cell::default();
    if mine.is_empty() {
        c.missing = Some("not run".into());
        return c;
    }
    if mine.iter().all(|r| r.samples.is_empty()) {
        c.missing = Some(
            mine.iter()
                .find_map(|r| r.error.clone())
                .unwrap_or_else(|| "not run".into()),
        );
        return c;
    }
    let baseline = |round: usize| {
        runs.iter()
            .filter(|r| r.column == Column::None && r.round == round)
            .flat_map(|r| &r.samples)
            .find(|s| s.loop_name == lp.name)
    };
    // (ratio to the round's no-tracer rate, rate, no-tracer rate, undisturbed) per round.
    let mut per_round = Vec::new();
    for r in &mine {
        let Some(s) = r.samples.iter().find(|s| s.loop_name == lp.name) else {
            continue;
        };
        if let Some(base) = baseline(r.round).filter(|b| b.rate() > 0.0) {
            let clean = s.disturbed.is_empty() && base.disturbed.is_empty();
            per_round.push((s.rate() / base.rate(), s.rate(), base.rate(), clean));
        }
        if let Some(seen) = s.seen {
            *c.seen.get_or_insert(0) += seen;
            if lp.op.is_some() {
                c.generated += s.iterations;
            }
        }
        if let Some(lost) = r.lost {
            *c.lost.get_or_insert(0) += lost;
        }
    }
    c.rounds = per_round.len();
    c.clean_rounds = per_round.iter().filter(|r| r.3).count();
    // Undisturbed rounds when there are any; else every round (and the cell says so).
    let used: Vec<_> = per_round
        .iter()
        .filter(|r| r.3 || c.clean_rounds == 0)
        .collect();
    let ratios: Vec<f64> = used.iter().map(|u| u.0).collect();
    let rates: Vec<f64> = used.iter().map(|u| u.1).collect();
    c.ratio = median(&ratios);
    c.rate = median(&rates);
    c.fastest = used
        .iter()
        .map(|u| u.1)
        .reduce(f64::max)
        .zip(used.iter().map(|u| u.2).reduce(f64::max))
        .filter(|(_, base)| *base > 0.0)
        .map(|(rate, base)| rate / base);
    c.spread = ratios
        .iter()
        .copied()
        .reduce(f64::min)
        .zip(ratios.iter().copied().reduce(f64::max));
    c
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::super::{
        Platform,
        rounds::{Run, Sample},
        tracers::Column,
    };

    fn run(column: Column, round: usize, rate: u64, seen: Option<u64>) -> Run {
        Run {
            column,
            hooks: (column != Column::None).then(|| "cgroup".to_string()),
            round,
            samples: vec![Sample {
                loop_name: "pt-connect".into(),
                iterations: rate,
                seconds: 1.0,
                seen,
                disturbed: Vec::new(),
            }],
            lost: seen.map(|_| 0),
            error: None,
        }
    }

    #[test]
    fn ratios_are_per_round_then_the_median() {
        let runs = vec![
            run(Column::None, 0, 100, None),
            run(Column::Trace, 0, 80, Some(80)),
            // A slow round: the ratio, not the rate, is what is compared.
            run(Column::None, 1, 50, None),
            run(Column::Trace, 1, 45, Some(44)),
            run(Column::None, 2, 100, None),
            run(Column::Trace, 2, 70, Some(70)),
        ];
        let p = Platform {
            name: "host".into(),
            kernel: String::new(),
            cpu: String::new(),
            rounds: 3,
            seconds: 1.0,
            runs,
            progs: vec![],
            error: None,
            host_load: None,
            fastest: false,
        };
        let rows = super::rows(&p);
        let connect = &rows[0];
        assert_eq!(connect.hooks, "cgroup");
        let trace = &connect.cells[Column::Trace.index()];
        assert_eq!(trace.ratio, Some(0.8));
        assert_eq!(trace.spread, Some((0.7, 0.9)));
        assert_eq!(trace.rate, Some(70.0));
        // 80/s in round 0 over the 100/s of rounds 0 and 2.
        assert_eq!(trace.fastest, Some(0.8));
        assert_eq!((trace.seen, trace.generated), (Some(194), 195));
        assert_eq!(connect.cells[0].ratio, Some(1.0));
        assert_eq!(
            connect.cells[Column::Serve.index()].missing.as_deref(),
            Some("not run")
        );
        // A loop missing from every run has no figures.
        assert_eq!(rows[1].cells[Column::Trace.index()].ratio, None);
    }

    #[test]
    fn rounds_another_tracer_disturbed_are_left_out() {
        let mut disturbed = run(Column::Trace, 1, 10, Some(10));
        disturbed.samples[0].disturbed = vec!["port-trace (42)".into()];
        let runs = vec![
            run(Column::None, 0, 100, None),
            run(Column::Trace, 0, 80, Some(80)),
            run(Column::None, 1, 100, None),
            disturbed,
        ];
        let p = Platform {
            name: "host".into(),
            kernel: String::new(),
            cpu: String::new(),
            rounds: 2,
            seconds: 1.0,
            runs,
            progs: vec![],
            error: None,
            host_load: None,
            fastest: false,
        };
        let trace = &super::rows(&p)[0].cells[Column::Trace.index()];
        assert_eq!(
            (trace.ratio, trace.rounds, trace.clean_rounds),
            (Some(0.8), 2, 1)
        );
        assert!(!trace.disturbed());
        // Its events still count.
        assert_eq!(trace.seen, Some(90));
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(super::median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(super::median(&[]), None);
    }
}
