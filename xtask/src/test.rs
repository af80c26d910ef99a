//! `cargo xtask test`: unit and root integration tests on this kernel, each fuzz target for
//! [`fuzz::TEST_SECONDS`], a [`soak::TEST_DURATION`] soak of `serve`, the `dist` artefacts
//! (built and installed), then the VM matrix with the static binary; ends with one closing
//! line, `tests: N passed, N failed`, that CI reads (a fuzz target, the soak, the artefacts and a
//! VM cell count as one test each).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context, Result};

use crate::{arch::Arch, build::build, dist, fuzz, setup, shell::cargo, soak, vm::matrix};

/// Totals over every test binary and every VM cell.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    /// False when anything failed, including a run that never reached its result line.
    ok: bool,
}

/// What `cargo xtask test` leaves out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Skip {
    pub vm: bool,
    pub fuzz: bool,
    pub soak: bool,
    pub dist: bool,
}

pub fn command(skip: Skip, args: &[String]) -> Result<ExitCode> {
    setup::setup(true)?;
    let bin = build(false)?;
    let mut tally = cargo_test(&bin, args)?;
    if !skip.fuzz {
        fuzz_targets(&mut tally);
    }
    if !skip.soak {
        soak_run(&bin, &mut tally);
    }
    // The VM matrix runs what operators install: the static binaries, once they are built.
    let built = if skip.dist {
        None
    } else {
        dist_artefacts(&mut tally)
    };
    if !skip.vm {
        let guest_bin = |arch: Arch| match built.as_ref().and_then(|b| b.binary(arch)) {
            Some(b) => Ok(b.clone()),
            None if arch.is_host() => Ok(bin.clone()),
            None => dist::musl::build(arch),
        };
        vm_matrix(&guest_bin, &mut tally);
    }
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    Ok(if tally.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `cargo test` on the host crates, echoed as it comes and totalled from its result lines.
fn cargo_test(bin: &Path, args: &[String]) -> Result<Tally> {
    let mut child = Command::new(cargo())
        .args([
            "test",
            "-p",
            "port-trace-common",
            "-p",
            "port-trace",
            "-p",
            "port-trace-tests",
            // Unit and integration tests; there are no doc tests to run.
            "--tests",
        ])
        .args(args)
        .env("PORT_TRACE_BIN", bin)
        .stdout(Stdio::piped())
        .spawn()
        .context("run cargo test")?;
    let mut tally = Tally::default();
    let out = BufReader::new(child.stdout.take().context("cargo test stdout")?);
    for line in out.lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = parse_result_line(&line) {
            tally.passed += p;
            tally.failed += f;
        }
    }
    tally.ok = child.wait()?.success();
    Ok(tally)
}

impl Tally {
    fn count(&mut self, passed: bool) {
        if passed {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.ok = false;
        }
    }
}

/// `dist` and its artefact checks, counted as one test; the artefacts when they passed.
fn dist_artefacts(tally: &mut Tally) -> Option<dist::Artefacts> {
    let checked = dist::build().and_then(|built| dist::verify::all(&built).map(|()| built));
    match checked {
        Ok(built) => {
            tally.count(true);
            Some(built)
        }
        Err(e) => {
            eprintln!("xtask: dist: {e:#}");
            tally.count(false);
            None
        }
    }
}

/// Each fuzz target briefly: the seeds replayed and some mutation; one test each.
fn fuzz_targets(tally: &mut Tally) {
    let targets: Vec<String> = fuzz::TARGETS.iter().map(|t| t.to_string()).collect();
    match fuzz::run(&targets, fuzz::TEST_SECONDS) {
        Ok(outcomes) => outcomes.iter().for_each(|o| tally.count(o.ok)),
        Err(e) => {
            eprintln!("xtask: fuzz: {e:#}");
            tally.count(false);
        }
    }
}

/// The short soak: one test.
fn soak_run(bin: &Path, tally: &mut Tally) {
    match soak::run(bin, soak::TEST_DURATION) {
        Ok(broken) => tally.count(broken.is_empty()),
        Err(e) => {
            eprintln!("xtask: soak: {e:#}");
            tally.count(false);
        }
    }
}

/// Every hook set on stock kernels: each kernel x hook set counts as one test.
fn vm_matrix(bin: &dyn Fn(Arch) -> Result<std::path::PathBuf>, tally: &mut Tally) {
    let hooks = matrix::HOOK_SETS.map(String::from);
    match matrix::run_matrix(bin, &matrix::ci_kernels(), &hooks) {
        Ok(cells) => {
            for cell in cells {
                if cell.ok() {
                    tally.passed += 1;
                } else {
                    tally.failed += 1;
                    tally.ok = false;
                }
            }
        }
        Err(e) => {
            eprintln!("xtask: {e:#}");
            tally.failed += 1;
            tally.ok = false;
        }
    }
}

/// Reads "test result: ok. 7 passed; 0 failed; ..." into (7, 0).
fn parse_result_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let num = |word: &str| -> Option<u64> {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(word))
            .and_then(|n| n.rsplit(' ').next())
            .and_then(|n| n.trim().parse().ok())
    };
    Some((num(" passed")?, num(" failed")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_cargo_test_result_lines() {
        let l = "test result: ok. 7 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(super::parse_result_line(l), Some((7, 2)));
        assert_eq!(super::parse_result_line("running 7 tests"), None);
    }
}
