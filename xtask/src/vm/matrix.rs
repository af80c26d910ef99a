//! `cargo xtask vm-test` (and the VM part of `cargo xtask test`): boot each stock kernel once
//! and run the capture tests there once per hook set; each run prints a `PORT-TRACE-MATRIX:`
//! line that becomes one cell of a kernel x hook-set table. Each kernel also says what it
//! booted (`uname -r`) and which set `port-trace check` predicted against the one `trace`
//! attached: they must agree. arm64 kernels boot under qemu-system-aarch64 with aarch64
//! builds of everything the guest runs ([`super::arm64`]).
//!
//! A hook set `check --hooks SET` refuses on a kernel is not run there (`refused`); that
//! passes only where the kernel is known to lack what the set needs ([`may_refuse`]).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::{
    arm64, boot_kernel, cache_dir, initramfs,
    kernel::{Arch, Flavour, Kernel, Release, kernels},
    qemu, with_libraries,
};
use crate::{
    build::build,
    dist::musl,
    setup,
    shell::{cargo, which_path},
};

/// Every hook set port-trace has.
pub const HOOK_SETS: [&str; 3] = ["fexit", "kprobe", "cgroup"];

/// How long one kernel may take to boot and run the capture tests for every hook set.
const TIMEOUT_SECS: u64 = 1500;
const MARK: &str = "PORT-TRACE-MATRIX:";
const UNAME: &str = "PORT-TRACE-UNAME:";
const CHOICE: &str = "PORT-TRACE-CHOICE:";

/// What CI runs: every release's cloud flavour on x86_64, and arm64's 6.1 cloud.
pub fn ci_kernels() -> Vec<Kernel> {
    kernels(&Release::ALL, &[Flavour::Cloud], &Arch::ALL)
}

/// Whether `check` may refuse `hooks` on `kernel` without failing its cell: on arm64 a BPF
/// trampoline reaches a kernel function only through ftrace direct calls, which arm64 gained in
/// 6.4 (commit 2aa6ac03516d, "arm64: ftrace: Add direct call support"), so Debian's 6.1 refuses
/// fentry/fexit. Everywhere else every set must run.
pub fn may_refuse(kernel: Kernel, hooks: &str) -> bool {
    kernel.arch == Arch::Aarch64 && kernel.release == Release::V6_1 && hooks == "fexit"
}

/// One kernel x hook set: "ok", "FAIL", or "missing" when the guest printed no line for it.
pub struct Cell {
    pub kernel: Kernel,
    /// `uname -r` in the guest.
    pub booted: String,
    /// The set `check` said it would use, and the one `trace` attached ("none": no answer).
    pub predicted: String,
    pub attached: String,
    pub hooks: String,
    pub verdict: String,
}

impl Cell {
    /// The capture tests passed (or the set was refused where that is expected) and `check`
    /// foretold the set `trace` took.
    pub fn ok(&self) -> bool {
        let ran = self.verdict == "ok"
            || (self.verdict == "refused" && may_refuse(self.kernel, &self.hooks));
        ran && self.predicted == self.attached && self.predicted != "none"
    }
}

pub fn command(kernels: &[Kernel], hooks: &[String]) -> Result<()> {
    setup::setup(true)?;
    let bins = |arch: Arch| match arch {
        Arch::X86_64 => build(false),
        Arch::Aarch64 => musl::build(arch),
    };
    let cells = run_matrix(&bins, kernels, hooks)?;
    if !cells.iter().all(Cell::ok) {
        bail!("vm-test: a kernel or hook set failed the capture tests");
    }
    Ok(())
}

/// Boots each kernel and runs the capture tests per hook set; prints and returns the cells. A
/// kernel that fails to boot is an error. `bin` gives the port-trace binary for an
/// architecture (built on first use).
pub fn run_matrix(
    bin: &dyn Fn(Arch) -> Result<PathBuf>,
    kernels: &[Kernel],
    hooks: &[String],
) -> Result<Vec<Cell>> {
    let cache = cache_dir()?;
    let script = initramfs::init_script(&guest_body(hooks));
    let mut cells = Vec::new();
    for arch in Arch::ALL {
        let of_arch: Vec<Kernel> = kernels.iter().copied().filter(|k| k.arch == arch).collect();
        if of_arch.is_empty() {
            continue;
        }
        let qemu = qemu::fetch_qemu_for(&cache, arch)?;
        let files = guest_programs(&cache, arch, &bin(arch)?)?;
        let initramfs = initramfs::build_initramfs_for(&cache, arch, &files, &script)?;
        for kernel in of_arch {
            let console = boot_kernel(&qemu, &cache, &initramfs, kernel, TIMEOUT_SECS)?;
            cells.extend(read_cells(&console, kernel, hooks));
        }
    }
    print_table(&cells);
    Ok(cells)
}

/// port-trace, the capture test binary, and the tools the tests drive (host path, guest path):
/// the host's for x86_64, with their libraries; aarch64 builds and packages for arm64.
fn guest_programs(cache: &Path, arch: Arch, bin: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut bins = vec![
        (bin.to_path_buf(), "/port-trace".to_string()),
        (capture_test_binary(arch)?, "/capture".to_string()),
    ];
    if arch == Arch::Aarch64 {
        bins.extend(arm64::iproute2(cache)?);
        return Ok(bins);
    }
    for tool in ["ip", "sysctl"] {
        let p = which_path(tool)?;
        let g = p.display().to_string();
        bins.push((p, g));
    }
    with_libraries(&bins)
}

/// The capture test binary for `arch`, built but not run: the host's debug build, or a static
/// release build for another architecture (sharing the dist build's dependencies).
fn capture_test_binary(arch: Arch) -> Result<PathBuf> {
    let mut cmd = Command::new(cargo());
    cmd.args([
        "test",
        "-p",
        "port-trace-tests",
        "--test",
        "capture",
        "--no-run",
        "--message-format=json",
    ]);
    if !arch.is_host() {
        cmd.args(["--release", "--target", arch.musl_target()])
            .envs(musl::toolchain(arch)?);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("build the capture tests")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"executable\"") && l.contains("\"capture\""))
        .find_map(|l| {
            let i = l.find("\"executable\":\"")? + 14;
            let end = l[i..].find('"')? + i;
            Some(PathBuf::from(&l[i..end]))
        })
        .context("no capture test executable in cargo's output")
}

/// The guest's shell body: one run of the capture tests per hook set, each ending with a
/// matrix line; exits 1 when any failed.
fn guest_body(hooks: &[String]) -> String {
    let mut body = String::from(
        "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nmkdir -p /sys/fs/cgroup /tmp /run/netns /etc\nmount -t cgroup2 none /sys/fs/cgroup\nmount -t tmpfs tmpfs /run\nmkdir -p /run/netns\nip link set lo up\nrc=0\n",
    );
    // What booted, and whether `check` foretells the set the automatic choice attaches.
    let _ = writeln!(body, "echo \"{UNAME} $(uname -r)\"");
    body.push_str(
        "predicted=$(/port-trace check 2>/dev/null | sed -n 's/^would use: //p')\nattached=$(/port-trace trace --duration 1s 2>&1 >/dev/null | sed -n 's/^tracing: hook set \\([a-z]*\\).*/\\1/p')\n",
    );
    let _ = writeln!(
        body,
        "echo \"{CHOICE} ${{predicted:-none}} ${{attached:-none}}\""
    );
    for h in hooks {
        // A set the kernel refuses is reported as such (with check's reason on the console),
        // not run; whether that may pass is the host's to say.
        let _ = writeln!(
            body,
            "if ! /port-trace check --hooks {h} > /tmp/check.txt 2>&1; then grep -E 'unusable|cannot' /tmp/check.txt; echo \"{MARK} {h} refused\"; elif PORT_TRACE_BIN=/port-trace PORT_TRACE_HOOKS={h} CI=true /capture --test-threads=1 --nocapture 2>&1; then echo \"{MARK} {h} ok\"; else echo \"{MARK} {h} FAIL\"; rc=1; fi"
        );
    }
    body.push_str("exit $rc\n");
    body
}

/// The words after `mark` on the console's first line that has it.
fn after<'a>(console: &'a str, mark: &str) -> Vec<&'a str> {
    // Anywhere in a line: the firmware's last words ("Booting from ROM...") may share it.
    console
        .lines()
        .find_map(|l| l.split_once(mark).map(|(_, rest)| rest))
        .map(|rest| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// One cell per hook set from `kernel`'s console: the word after `PORT-TRACE-MATRIX: HOOKS`.
fn read_cells(console: &str, kernel: Kernel, hooks: &[String]) -> Vec<Cell> {
    let booted = after(console, UNAME).first().unwrap_or(&"?").to_string();
    let choice = after(console, CHOICE);
    let word = |i: usize| choice.get(i).unwrap_or(&"none").to_string();
    hooks
        .iter()
        .map(|h| {
            let line = console
                .lines()
                .find(|l| l.contains(&format!("{MARK} {h} ")));
            let verdict = line
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or("missing")
                .to_string();
            Cell {
                kernel,
                booted: booted.clone(),
                predicted: word(0),
                attached: word(1),
                hooks: h.clone(),
                verdict,
            }
        })
        .collect()
}

fn print_table(cells: &[Cell]) {
    println!(
        "{:<13} {:<6} {:<28} {:<16} {:<9} capture tests (Debian, qemu TCG)",
        "kernel", "arch", "booted", "check -> trace", "hook set"
    );
    for c in cells {
        let choice = format!("{} -> {}", c.predicted, c.attached);
        let verdict = if c.verdict == "refused" && may_refuse(c.kernel, &c.hooks) {
            "refused by the kernel (expected)".to_string()
        } else {
            c.verdict.clone()
        };
        println!(
            "{:<13} {:<6} {:<28} {:<16} {:<9} {}",
            format!("{} {}", c.kernel.release, c.kernel.flavour),
            c.kernel.arch,
            c.booted,
            choice,
            c.hooks,
            verdict
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_one_cell_per_hook_set() {
        let hooks: Vec<String> = super::HOOK_SETS.map(String::from).to_vec();
        let console = "Booting from ROM...PORT-TRACE-UNAME: 5.10.0-46-cloud-amd64\nPORT-TRACE-CHOICE: fexit fexit\ntest result: ok.\nPORT-TRACE-MATRIX: fexit ok\nPORT-TRACE-MATRIX: kprobe FAIL\n";
        let kernel = super::Kernel {
            release: super::Release::V5_10,
            flavour: super::Flavour::Cloud,
            arch: super::Arch::X86_64,
        };
        let cells = super::read_cells(console, kernel, &hooks);
        let verdicts: Vec<&str> = cells.iter().map(|c| c.verdict.as_str()).collect();
        assert_eq!(verdicts, ["ok", "FAIL", "missing"]);
        assert!(cells[0].ok() && !cells[1].ok());
        assert_eq!(cells[2].hooks, "cgroup");
        assert_eq!(cells[0].booted, "5.10.0-46-cloud-amd64");
        // A wrong prediction fails the kernel's cells even when the tests pass.
        let wrong = console.replace("fexit fexit", "fexit cgroup");
        assert!(!super::read_cells(&wrong, kernel, &hooks)[0].ok());
        // The guest body prints exactly the lines read back.
        let body = super::guest_body(&hooks[..1]);
        assert!(body.contains("echo \"PORT-TRACE-MATRIX: fexit ok\""));
        assert!(body.contains("echo \"PORT-TRACE-MATRIX: fexit refused\""));
        // A refused set passes only where the kernel is known to lack it.
        let refused = console.replace("fexit ok", "fexit refused");
        assert!(!super::read_cells(&refused, kernel, &hooks)[0].ok());
        let arm = super::Kernel {
            release: super::Release::V6_1,
            arch: super::Arch::Aarch64,
            ..kernel
        };
        let refused = refused.replace("fexit fexit", "kprobe kprobe");
        assert!(super::read_cells(&refused, arm, &hooks)[0].ok());
        assert!(!super::read_cells(&refused, arm, &hooks)[1].ok());
    }
}
