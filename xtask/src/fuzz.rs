//! `cargo xtask fuzz [--seconds N] [--target NAME]`: runs the `cargo fuzz` targets of `fuzz/`
//! (libFuzzer, nightly) for N seconds each, one after the other, and prints one line per target.
//! The corpus each run grows goes to `fuzz/corpus/TARGET` (not committed); the seeds committed
//! in `fuzz/seeds/TARGET` are read as a second corpus. A crash fails the command and leaves its
//! input in `fuzz/artifacts/TARGET/`: make it a unit test in the crate that owns the code.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{
    setup::{self, NIGHTLY},
    shell::{say, workspace_root},
};

/// Every target in `fuzz/fuzz_targets/`, in the order they run.
pub const TARGETS: &[&str] = &["decode", "recording", "config", "http"];
/// What `cargo xtask test` gives each target: enough to replay the seeds and mutate a little.
pub const TEST_SECONDS: u64 = 10;

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Targets to run (default: all of them).
    #[arg(long = "target", value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
}

/// How one target's run ended.
#[derive(Debug)]
pub struct Outcome {
    pub target: String,
    /// Inputs run, from libFuzzer's final statistics (None if it never printed them).
    pub runs: Option<u64>,
    pub seconds: f64,
    /// The input that crashed it, when it did.
    pub crash: Option<PathBuf>,
    pub ok: bool,
}

pub fn command(args: FuzzArgs) -> Result<()> {
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        args.targets
    };
    let outcomes = run(&targets, args.seconds)?;
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("fuzzing failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Sets up, builds every target once, then fuzzes each for `seconds`; one line each.
pub fn run(targets: &[String], seconds: u64) -> Result<Vec<Outcome>> {
    setup::setup(false)?;
    setup::fuzzing()?;
    let root = workspace_root();
    let mut build = cargo_fuzz(&root);
    build.args(["build"]).args(BUILD_FLAGS);
    say("fuzz: building the targets (cargo fuzz build, nightly)");
    if !build.status().context("run cargo fuzz build")?.success() {
        bail!("cargo fuzz build failed");
    }
    let mut outcomes = Vec::new();
    for target in targets {
        let o = fuzz_one(&root, target, seconds)?;
        println!("{}", line(&o));
        outcomes.push(o);
    }
    Ok(outcomes)
}

/// No sanitizer (the code under test is safe Rust; ASan would halve the speed), but overflow
/// checks and debug assertions on: an overflow is a crash worth knowing.
const BUILD_FLAGS: &[&str] = &["--sanitizer", "none", "--debug-assertions"];

/// `cargo fuzz` on the nightly toolchain, from the workspace root (it finds `fuzz/` there).
fn cargo_fuzz(root: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", NIGHTLY, "cargo", "fuzz"])
        .current_dir(root);
    // A RUSTC or wrapper set for the stable toolchain that runs xtask must not leak in.
    cmd.env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cmd
}

fn fuzz_one(root: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let corpus = root.join("fuzz/corpus").join(target);
    let seeds = root.join("fuzz/seeds").join(target);
    let artifacts = root.join("fuzz/artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let log_dir = root.join("target/fuzz-logs");
    fs::create_dir_all(&log_dir)?;
    let log_path = log_dir.join(format!("{target}.log"));
    let log = fs::File::create(&log_path)?;
    say(&format!(
        "fuzz: {target} for {seconds} s (libFuzzer's output: {})",
        log_path.display()
    ));
    let start = Instant::now();
    let status = cargo_fuzz(root)
        .args(["run"])
        .args(BUILD_FLAGS)
        .arg(target)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // One input taking seconds is a hang worth reporting; 2 GiB is a leak, not a test.
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .context("run cargo fuzz run")?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let o = Outcome {
        target: target.to_string(),
        runs: final_runs(&text),
        seconds: start.elapsed().as_secs_f64(),
        crash: crash_input(&text),
        ok: status.success(),
    };
    if !o.ok {
        // The panic message and the stack are in the last lines.
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for l in tail.into_iter().rev() {
            eprintln!("  {l}");
        }
    }
    Ok(o)
}

fn line(o: &Outcome) -> String {
    let runs = o.runs.map_or("?".to_string(), |r| r.to_string());
    let verdict = match (&o.crash, o.ok) {
        (_, true) => "ok".to_string(),
        (Some(input), false) => format!("CRASH, input {}", input.display()),
        (None, false) => "FAILED (see the log)".to_string(),
    };
    format!(
        "fuzz: {:<10} {:>10} inputs in {:>5.0} s  {verdict}",
        o.target, runs, o.seconds
    )
}

/// libFuzzer's `stat::number_of_executed_units: N`.
fn final_runs(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
}

/// libFuzzer's `Test unit written to PATH` (crash, timeout, leak or out-of-memory).
fn crash_input(log: &str) -> Option<PathBuf> {
    log.lines()
        .find_map(|l| l.split_once("Test unit written to "))
        .map(|(_, p)| PathBuf::from(p.trim()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_libfuzzer_logs() {
        let log = "#2\tINITED cov: 10\nDone 1234 runs in 2 second(s)\n\
                   stat::number_of_executed_units: 1234\nstat::peak_rss_mb: 50\n";
        assert_eq!(super::final_runs(log), Some(1234));
        assert_eq!(super::crash_input(log), None);
        let crash = "==1== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='a/'; Test unit written to a/crash-da39a3ee\n";
        assert_eq!(
            super::crash_input(crash),
            Some(std::path::PathBuf::from("a/crash-da39a3ee"))
        );
    }

    #[test]
    fn every_target_has_seeds_and_a_source() {
        let root = crate::shell::workspace_root().join("fuzz");
        for t in super::TARGETS {
            let src = root.join("fuzz_targets").join(format!("{t}.rs"));
            assert!(src.exists(), "{}", src.display());
            let seeds = std::fs::read_dir(root.join("seeds").join(t))
                .unwrap()
                .count();
            assert!(seeds > 0, "no seeds for {t}");
        }
    }
}
