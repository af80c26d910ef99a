//! `cargo xtask bench`: what tracing costs four small C loops, side by side, in one run.
//!
//! Each loop (`xtask/bench/loops/*.c`, compiled with `gcc -static` at bench time) runs for a
//! fixed time in a network namespace the bench makes, pinned to CPU 1, while the harness and
//! the tracer share CPU 0, all at a raised priority. The tracer configurations (none, `trace --format json`, `serve`, a
//! bpftrace peer) are interleaved round by round and the figures are medians of per-round
//! ratios to "no tracer". The same harness then runs inside a Debian 6.1 VM (qemu TCG) for the
//! fexit and kprobe hook sets, which this host cannot load: the guest runs this binary as
//! `xtask bench-guest` and prints its runs on the console.
//!
//! Modules, one concern each: [`loops`] (compile and run the C loops), [`netns`] (the
//! namespace they run in), [`tracers`] (start, count and stop each configuration), [`events`]
//! (counting trace's JSON), [`metrics`] (reading `serve`'s counters), [`quiet`] (other
//! tracers on the machine), [`rounds`] (the interleaved rounds), [`progstats`] (per-program
//! cost from `kernel.bpf_stats_enabled`), [`vm`] (the guest), [`stats`] (medians and ratios),
//! [`report`] (the markdown tables), [`sched`] (CPU pinning and priority).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{
    build::build,
    setup,
    shell::{is_root, say, workspace_root},
};

pub mod events;
pub mod loops;
pub mod metrics;
pub mod progstats;
pub mod quiet;
pub mod report;
pub mod rounds;
pub mod sched;
pub mod stats;
pub mod tracers;
pub mod vm;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds each loop runs per round on this host.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Rounds on this host (each runs every configuration once, in a rotated order).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds each loop runs per round in the VM.
    #[arg(long, default_value_t = 1.0)]
    pub vm_seconds: f64,
    /// Rounds in the VM.
    #[arg(long, default_value_t = 7)]
    pub vm_rounds: usize,
    /// Debian 6.1 kernel flavour the VM boots ("cloud" boots fastest).
    #[arg(long, default_value = "cloud")]
    pub vm_flavour: String,
    /// Only this host: no fexit/kprobe rows.
    #[arg(long)]
    pub no_vm: bool,
}

/// `xtask bench-guest`: the VM's part, run by the guest's `/init` (see [`vm`]).
#[derive(Debug, Args)]
pub struct GuestArgs {
    #[arg(long = "hooks", required = true)]
    pub hooks: Vec<String>,
    #[arg(long)]
    pub seconds: f64,
    #[arg(long)]
    pub rounds: usize,
    #[arg(long)]
    pub port_trace: PathBuf,
    #[arg(long)]
    pub loops: PathBuf,
}

/// Where things are and how the harness runs them; the same on the host and in the guest.
pub struct Env {
    pub port_trace: PathBuf,
    /// The compiled loops, one binary per loop named after it.
    pub loops: PathBuf,
    /// bpftrace, or why there is none.
    pub bpftrace: Result<PathBuf, String>,
    /// The CPU the loops are pinned to (-1: not pinned, on a one-CPU machine).
    pub loop_cpu: i32,
    /// Longest wait for a tracer to attach, and for one to exit after SIGINT (TCG is slow).
    pub patience: Duration,
}

/// What one machine measured: the table's rows for it come from here.
pub struct Platform {
    /// "host" or the VM's description.
    pub name: String,
    pub kernel: String,
    pub cpu: String,
    pub rounds: usize,
    pub seconds: f64,
    pub runs: Vec<rounds::Run>,
    pub progs: Vec<progstats::ProgCost>,
    /// Why this platform has no figures (the VM did not boot, ...).
    pub error: Option<String>,
    /// How busy this host was while the platform's figures were taken.
    pub host_load: Option<String>,
    /// The table shows fastest-round ratios: this platform cannot see what disturbs it.
    pub fastest: bool,
}

pub fn command(args: BenchArgs) -> Result<ExitCode> {
    let started = Instant::now();
    if !is_root() {
        bail!("bench: needs root (eBPF, network namespaces, sysctl)");
    }
    check_seconds(args.seconds)?;
    check_seconds(args.vm_seconds)?;
    setup::setup(false)?;
    setup::install_missing("gcc", "gcc")?;
    let bin = build(true)?;
    sched::favour()?;
    let loop_dir = loops::compile(&workspace_root().join("target/bench/loops"))?;
    let bpftrace = setup::install_missing("bpftrace", "bpftrace").map_err(|e| format!("{e:#}"));
    // bpftool only names the programs; their figures come from /proc/PID/fdinfo.
    let _ = setup::install_missing("bpftool", "bpftool");
    let mut platforms = vec![host(&args, &bin, &loop_dir, bpftrace)?];
    if !args.no_vm {
        platforms.push(vm::run(&args, &bin, &loop_dir));
    }
    let ok = platforms.iter().all(|p| p.error.is_none());
    print!("{}", report::render(&platforms, started.elapsed()));
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The host's rounds and per-program pass, pinned; the pinning ends before the VM boots.
fn host(
    args: &BenchArgs,
    bin: &Path,
    loop_dir: &Path,
    bpftrace: Result<PathBuf, String>,
) -> Result<Platform> {
    let pinned = sched::pin_harness()?;
    let env = Env {
        port_trace: bin.to_path_buf(),
        loops: loop_dir.to_path_buf(),
        bpftrace,
        loop_cpu: loop_cpu(pinned.cpus),
        patience: Duration::from_secs(60),
    };
    let plan = rounds::Plan {
        configs: host_configs(),
        rounds: args.rounds,
        seconds: args.seconds,
    };
    say(&format!(
        "bench: {} rounds x {} configurations x {} loops x {}s on this host",
        plan.rounds,
        plan.configs.len(),
        loops::LOOPS.len(),
        plan.seconds
    ));
    let load = sched::Load::now();
    let runs = rounds::run(&plan, &env)?;
    let host_load = sched::Load::now().since(&load);
    let hooks = rounds::hook_sets(&runs);
    let progs = progstats::measure(&env, &hooks, args.seconds)
        .map_err(|e| say(&format!("bench: no per-program cost: {e:#}")))
        .unwrap_or_default();
    Ok(Platform {
        name: "host".into(),
        kernel: report::kernel_release(),
        cpu: report::cpu_model(pinned.cpus),
        rounds: args.rounds,
        seconds: args.seconds,
        runs,
        progs,
        error: None,
        host_load: Some(host_load),
        fastest: false,
    })
}

/// CPU 1 for the loops, CPU 0 for the harness and tracer; unpinned on a one-CPU machine.
fn loop_cpu(cpus: usize) -> i32 {
    if cpus > 1 { 1 } else { -1 }
}

/// Inside the VM: the rounds and the per-program cost for the hook sets asked, printed on the
/// console for the host to read back.
pub fn guest(args: GuestArgs) -> Result<ExitCode> {
    check_seconds(args.seconds)?;
    // The guest has nothing else to run: pinning is enough.
    let pinned = sched::pin_harness()?;
    let env = Env {
        port_trace: args.port_trace,
        loops: args.loops,
        // Its LLVM and BCC libraries would not fit the initramfs well.
        bpftrace: Err("not in the VM".into()),
        loop_cpu: loop_cpu(pinned.cpus),
        patience: Duration::from_secs(600),
    };
    vm::print_env(pinned.cpus);
    let plan = rounds::Plan {
        configs: guest_configs(&args.hooks),
        rounds: args.rounds,
        seconds: args.seconds,
    };
    let runs = rounds::run(&plan, &env)?;
    for run in &runs {
        vm::print_run(run)?;
    }
    match progstats::measure(&env, &args.hooks, args.seconds) {
        Ok(progs) => {
            for p in &progs {
                vm::print_prog(p)?;
            }
        }
        Err(e) => eprintln!("bench-guest: no per-program cost: {e:#}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// This host: the automatic hook set (named in each row from the tracer's banner).
fn host_configs() -> Vec<tracers::Config> {
    use tracers::{Column, Config};
    Column::ALL
        .into_iter()
        .map(|column| Config {
            column,
            hooks: None,
        })
        .collect()
}

/// The VM: no tracer, `trace` and `serve` forced to each hook set, and the bpftrace column,
/// which records why it is empty there.
fn guest_configs(hooks: &[String]) -> Vec<tracers::Config> {
    use tracers::{Column, Config};
    let mut configs = vec![Config {
        column: Column::None,
        hooks: None,
    }];
    for h in hooks {
        for column in [Column::Trace, Column::Serve] {
            configs.push(Config {
                column,
                hooks: Some(h.clone()),
            });
        }
    }
    configs.push(Config {
        column: Column::Bpftrace,
        hooks: None,
    });
    configs
}

/// The loops accept (0, 600] seconds.
fn check_seconds(s: f64) -> Result<()> {
    if !(s > 0.0 && s <= 600.0) {
        bail!("bench: seconds must be in (0, 600], not {s}");
    }
    Ok(())
}

/// `path`, created.
fn created(path: &Path) -> Result<&Path> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(path)
}
