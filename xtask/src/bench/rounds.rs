//! Interleaved rounds: each round runs every configuration once (the order rotated from one
//! round to the next) and, under each, every loop once; so drift in the machine's load hits
//! every column alike. A tracer is started and stopped once per configuration per round.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::netns::Netns;

use super::{
    Env,
    loops::{self, LOOPS},
    quiet, sched,
    tracers::{Column, Config, Tracer},
};
use crate::shell::say;

/// Time for a freshly attached tracer to finish starting up before a loop is timed.
const SETTLE: Duration = Duration::from_millis(500);
/// Longest wait, over the whole bench, for other tracers on the machine to detach.
const QUIET_BUDGET: Duration = Duration::from_secs(120);
/// A loop that waited for its CPU longer than this share of its run (besides waiting for its
/// own packets' softirq work) shared the CPU with other work (a build, say) more than the
/// tracer's cost moves it.
const MOST_WAITED: f64 = 0.10;
/// How a run whose loop waited for its CPU longer than [`MOST_WAITED`] is marked.
pub const CONTENDED: &str = "CPU contention";
/// How a run is marked when the hypervisor took the loop's CPU longer than [`MOST_WAITED`].
pub const STOLEN: &str = "hypervisor steal";

pub struct Plan {
    pub configs: Vec<Config>,
    pub rounds: usize,
    pub seconds: f64,
}

/// One loop under one configuration in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    #[serde(rename = "loop")]
    pub loop_name: String,
    pub iterations: u64,
    pub seconds: f64,
    /// Port choices the tracer reported for this loop (trace: by comm in the namespace;
    /// serve: its host-wide counter's increase); None where the column does not count.
    pub seen: Option<u64>,
    /// What disturbed the run: other processes holding BPF programs meanwhile ("comm (pid)"),
    /// or [`CONTENDED`] when other work held the loop's CPU for long.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disturbed: Vec<String>,
}

impl Sample {
    pub fn rate(&self) -> f64 {
        self.iterations as f64 / self.seconds
    }
}

/// One configuration in one round: a tracer start, every loop, a tracer stop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub column: Column,
    /// The hook set: the one forced, else the one the tracer's banner names.
    pub hooks: Option<String>,
    pub round: usize,
    pub samples: Vec<Sample>,
    pub lost: Option<u64>,
    /// Why this configuration did not run (bpftrace missing, a tracer that would not attach),
    /// or did not stop cleanly (its samples are kept).
    pub error: Option<String>,
}

pub fn run(plan: &Plan, env: &Env) -> Result<Vec<Run>> {
    let ns = Netns::create("bench", "loops")?;
    let mut runs = Vec::new();
    let quiet_by = Instant::now() + QUIET_BUDGET;
    for round in 0..plan.rounds {
        let n = plan.configs.len();
        for i in 0..n {
            let cfg = &plan.configs[(i + round) % n];
            let run = one_run(plan, env, &ns, cfg, round, quiet_by)?;
            say(&progress(&run, cfg, plan.rounds));
            runs.push(run);
        }
    }
    Ok(runs)
}

/// Every loop under `cfg`. A configuration that cannot start or stop is recorded with its
/// reason; a loop that fails, or serve failing to answer, ends the bench.
fn one_run(
    plan: &Plan,
    env: &Env,
    ns: &Netns,
    cfg: &Config,
    round: usize,
    quiet_by: Instant,
) -> Result<Run> {
    let mut run = Run {
        column: cfg.column,
        hooks: cfg.hooks.clone(),
        round,
        samples: Vec::new(),
        lost: None,
        error: None,
    };
    let tracer = match Tracer::start(cfg, env, ns.inode) {
        Ok(t) => t,
        Err(e) => {
            run.error = Some(format!("{e:#}"));
            return Ok(run);
        }
    };
    if run.hooks.is_none() {
        run.hooks = tracer.hook_set.clone();
    }
    std::thread::sleep(SETTLE);
    for k in 0..LOOPS.len() {
        // Rotated too, so no loop always runs first after an attach.
        let l = &LOOPS[(k + round) % LOOPS.len()];
        quiet::wait(
            tracer.pid(),
            quiet_by.saturating_duration_since(Instant::now()),
        );
        let before = tracer.mark().context("reading serve's counters")?;
        let stolen_before = sched::stolen(env.loop_cpu);
        let softirq_before = sched::softirq_thread_ran(env.loop_cpu);
        let (count, mut disturbed) = quiet::watch(tracer.pid(), || {
            loops::run(&env.loops, l, ns, plan.seconds, env.loop_cpu)
        });
        let count = count?;
        let most = MOST_WAITED * count.seconds;
        // Waiting for ksoftirqd to receive the loop's own packets is not contention.
        let own = match (softirq_before, sched::softirq_thread_ran(env.loop_cpu)) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        };
        if count.waited.is_some_and(|w| w - own > most) {
            disturbed.push(CONTENDED.to_string());
        }
        if let (Some(a), Some(b)) = (stolen_before, sched::stolen(env.loop_cpu))
            && b - a > most
        {
            disturbed.push(STOLEN.to_string());
        }
        let seen = tracer
            .seen_since(before, l.op)
            .context("reading serve's counters")?;
        run.samples.push(Sample {
            loop_name: l.name.to_string(),
            iterations: count.iterations,
            seconds: count.seconds,
            seen,
            disturbed,
        });
    }
    // The loops ran with the tracer attached, so their figures stand even when it then fails
    // to stop cleanly (it is killed); only what it counted is lost.
    match tracer.stop() {
        Ok(stopped) => {
            if matches!(cfg.column, Column::Trace | Column::SendHooks) {
                for s in &mut run.samples {
                    let op = loops::by_name(&s.loop_name).and_then(|l| l.op);
                    s.seen = Some(stopped.seen(&s.loop_name, op));
                }
            }
            run.lost = stopped.lost;
        }
        Err(e) => {
            say(&format!("bench: stopping {}: {e:#}", cfg.describe()));
            run.error = Some(format!("stopping: {e:#}"));
            for s in &mut run.samples {
                s.seen = None;
            }
        }
    }
    Ok(run)
}

/// "round 2/5 serve (cgroup): pt-connect 41k/s, ...".
fn progress(run: &Run, cfg: &Config, rounds: usize) -> String {
    let what = match &run.hooks {
        Some(h) if cfg.column != Column::None => format!("{} ({h})", cfg.describe()),
        _ => cfg.describe(),
    };
    let body = match &run.error {
        Some(e) if run.samples.is_empty() => format!("not run: {e}"),
        _ => run
            .samples
            .iter()
            .map(|s| {
                if s.disturbed.is_empty() {
                    format!("{} {:.0}/s", s.loop_name, s.rate())
                } else {
                    format!(
                        "{} {:.0}/s ({})",
                        s.loop_name,
                        s.rate(),
                        s.disturbed.join(", ")
                    )
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    format!("bench: round {}/{rounds} {what}: {body}", run.round + 1)
}

/// The hook sets the port-trace runs used, in order of first use.
pub fn hook_sets(runs: &[Run]) -> Vec<String> {
    let mut sets: Vec<String> = Vec::new();
    for r in runs {
        if matches!(r.column, Column::Trace | Column::SendHooks | Column::Serve)
            && let Some(h) = &r.hooks
            && !sets.contains(h)
        {
            sets.push(h.clone());
        }
    }
    sets
}
