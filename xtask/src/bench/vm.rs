//! The fexit and kprobe rows: this harness run inside a stock Debian 6.1 kernel under qemu
//! (TCG), with the VM machinery of `xtask/src/vm/`. The guest's `/init` runs this very binary
//! as `xtask bench-guest`, which prints each run as one `PT-BENCH-RUN {json}` console line;
//! the host reads them back and reports them like its own.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{BenchArgs, Platform, loops::LOOPS, progstats::ProgCost, report, rounds::Run, sched};
use crate::{
    shell::{say, which_path, workspace_root},
    vm::{cache_dir, debian, initramfs, kernel, qemu, tail, with_libraries},
};

/// The hook sets this host cannot load.
const HOOK_SETS: [&str; 2] = ["fexit", "kprobe"];
const ENV: &str = "PT-BENCH-ENV ";
const RUN: &str = "PT-BENCH-RUN ";
const PROG: &str = "PT-BENCH-PROG ";

#[derive(Serialize, Deserialize)]
struct GuestEnv {
    kernel: String,
    cpus: usize,
}

/// Boots the VM and returns its platform; a VM that fails says why in `error`.
pub fn run(args: &BenchArgs, port_trace: &Path, loops: &Path) -> Platform {
    let mut p = Platform {
        name: format!("VM: Debian 6.1 {} kernel under qemu TCG", args.vm_flavour),
        kernel: "?".into(),
        cpu: format!("qemu TCG vCPUs on {}", report::cpu_name()),
        rounds: args.vm_rounds,
        seconds: args.vm_seconds,
        runs: Vec::new(),
        progs: Vec::new(),
        error: None,
        host_load: None,
        // The guest cannot see what the host does to qemu's threads.
        fastest: true,
    };
    if let Err(e) = boot_and_read(args, port_trace, loops, &mut p) {
        say(&format!("bench: VM: {e:#}"));
        p.error = Some(format!("{e:#}"));
    }
    p
}

fn boot_and_read(
    args: &BenchArgs,
    port_trace: &Path,
    loops: &Path,
    p: &mut Platform,
) -> Result<()> {
    let cache = cache_dir()?;
    let qemu = qemu::fetch_qemu(&cache)?;
    let flavour = kernel::parse_flavours(std::slice::from_ref(&args.vm_flavour))?;
    let kernel = debian::fetch_kernel(
        &cache,
        kernel::Kernel {
            release: kernel::Release::V6_1,
            flavour: flavour[0],
            arch: kernel::Arch::X86_64,
        },
    )?;
    let files = with_libraries(&guest_programs(port_trace, loops)?)?;
    let script = initramfs::init_script(&guest_body(args.vm_seconds, args.vm_rounds));
    let image = initramfs::build_initramfs(&cache, &files, &script)?;
    let timeout = timeout(args.vm_seconds, args.vm_rounds);
    say(&format!(
        "bench: booting Debian 6.1 {} under qemu (TCG) for the {} rows (at most {}s)",
        args.vm_flavour,
        HOOK_SETS.join("/"),
        timeout.as_secs()
    ));
    let started = Instant::now();
    let load = sched::Load::now();
    let console = qemu::boot(&qemu, &kernel, &image, timeout)?;
    p.host_load = Some(sched::Load::now().since(&load));
    let log = workspace_root().join("target/bench/vm-console.log");
    let _ = fs::write(&log, &console);
    say(&format!(
        "bench: VM done in {:.0}s (console: {})",
        started.elapsed().as_secs_f64(),
        log.display()
    ));
    let guest = read_console(&console, p);
    // The runs the guest printed are kept even when it failed later on.
    initramfs::parse_result(&console)?;
    guest?;
    if p.runs.is_empty() {
        bail!(
            "the guest printed no runs; console tail:\n{}",
            tail(&console, 40)
        );
    }
    Ok(())
}

/// What the guest holds: this xtask, port-trace, the loops, and ip and bpftool from this host
/// (busybox has no `ip netns`).
fn guest_programs(port_trace: &Path, loops: &Path) -> Result<Vec<(PathBuf, String)>> {
    let xtask = std::env::current_exe().context("this xtask's path")?;
    let mut files = vec![
        (xtask, "/xtask".to_string()),
        (port_trace.to_path_buf(), "/port-trace".to_string()),
    ];
    for l in &LOOPS {
        files.push((loops.join(l.name), format!("/loops/{}", l.name)));
    }
    files.push(host_tool("ip")?);
    // Only names the programs; the figures come from fdinfo.
    if let Ok(t) = host_tool("bpftool") {
        files.push(t);
    }
    Ok(files)
}

fn host_tool(name: &str) -> Result<(PathBuf, String)> {
    let p = which_path(name)?;
    // Resolved, so the guest gets the binary rather than a symlink's bytes.
    let real = fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
    Ok((real, p.display().to_string()))
}

/// The guest's shell body: namespaces need /run/netns, the cgroup set a cgroup2 mount.
fn guest_body(seconds: f64, rounds: usize) -> String {
    let hooks: String = HOOK_SETS.iter().map(|h| format!(" --hooks {h}")).collect();
    format!(
        "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
         mkdir -p /sys/fs/cgroup /run\n\
         mount -t cgroup2 none /sys/fs/cgroup\n\
         mount -t tmpfs tmpfs /run\n\
         mkdir -p /run/netns\n\
         ip link set lo up\n\
         /xtask bench-guest{hooks} --seconds {seconds} --rounds {rounds} \
         --port-trace /port-trace --loops /loops\n"
    )
}

/// Generous: TCG attaches slowly. Boot, then per round each configuration's attach, loops and
/// stop, then the per-program pass.
fn timeout(seconds: f64, rounds: usize) -> Duration {
    let configs = 2 + 2 * HOOK_SETS.len();
    let per_run = 60.0 + LOOPS.len() as f64 * (seconds + 5.0);
    let secs = 180.0 + (rounds * configs) as f64 * per_run + HOOK_SETS.len() as f64 * per_run;
    Duration::from_secs_f64(secs)
}

/// Reads the guest's lines into `p`; an unreadable line is an error, after every line is read.
fn read_console(console: &str, p: &mut Platform) -> Result<()> {
    let mut bad = Vec::new();
    for line in console.lines() {
        let parsed = if let Some(json) = after(line, ENV) {
            serde_json::from_str::<GuestEnv>(json).map(|e| {
                p.kernel = e.kernel;
                p.cpu = format!("qemu TCG, {} vCPUs on {}", e.cpus, report::cpu_name());
            })
        } else if let Some(json) = after(line, RUN) {
            serde_json::from_str::<Run>(json).map(|r| p.runs.push(r))
        } else if let Some(json) = after(line, PROG) {
            serde_json::from_str::<ProgCost>(json).map(|c| p.progs.push(c))
        } else {
            Ok(())
        };
        if let Err(e) = parsed {
            bad.push(format!("{e}: {line}"));
        }
    }
    if !bad.is_empty() {
        bail!("unreadable guest lines:\n{}", bad.join("\n"));
    }
    Ok(())
}

/// The text after `marker`, wherever the marker starts (a kernel message may precede it).
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.split_once(marker).map(|(_, rest)| rest.trim())
}

/// In the guest: the kernel and CPU count, for the report's header.
pub fn print_env(cpus: usize) {
    let env = GuestEnv {
        kernel: report::kernel_release(),
        cpus,
    };
    if let Ok(json) = serde_json::to_string(&env) {
        println!("{ENV}{json}");
    }
}

pub fn print_run(run: &Run) -> Result<()> {
    println!("{RUN}{}", serde_json::to_string(run)?);
    Ok(())
}

pub fn print_prog(cost: &ProgCost) -> Result<()> {
    println!("{PROG}{}", serde_json::to_string(cost)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{
        Platform,
        rounds::{Run, Sample},
        tracers::Column,
    };

    fn platform() -> Platform {
        Platform {
            name: "VM".into(),
            kernel: String::new(),
            cpu: String::new(),
            rounds: 1,
            seconds: 1.0,
            runs: Vec::new(),
            progs: Vec::new(),
            error: None,
            host_load: None,
            fastest: true,
        }
    }

    #[test]
    fn the_host_reads_back_what_the_guest_prints() {
        let run = Run {
            column: Column::Trace,
            hooks: Some("fexit".into()),
            round: 1,
            samples: vec![Sample {
                loop_name: "pt-connect".into(),
                iterations: 900,
                seconds: 1.0,
                seen: Some(900),
                disturbed: Vec::new(),
            }],
            lost: Some(0),
            error: None,
        };
        let console = format!(
            "[    1.0] booting\n{}{}\n{}{{\"kernel\":\"6.1.0-40-cloud-amd64\",\"cpus\":2}}\n",
            super::RUN,
            serde_json::to_string(&run).unwrap(),
            super::ENV
        );
        let mut p = platform();
        super::read_console(&console, &mut p).unwrap();
        assert_eq!(p.runs.len(), 1);
        assert_eq!(p.runs[0].samples[0].seen, Some(900));
        assert_eq!(p.kernel, "6.1.0-40-cloud-amd64");
        assert!(super::read_console("PT-BENCH-RUN {", &mut p).is_err());
        // The body runs the guest command for both hook sets.
        assert!(super::guest_body(1.0, 3).contains("--hooks fexit --hooks kprobe"));
    }
}
