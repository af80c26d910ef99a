//! `cargo xtask`: set up the eBPF toolchain, build, run and test port-trace.
//!
//! - `cargo xtask setup`: install what building the eBPF object needs (nightly rust-src,
//!   llvm-22-dev, bpf-linker), or print the commands where it cannot.
//! - `cargo xtask run [-- ARGS]`: setup, build, run `port-trace ARGS` (default: `trace`).
//! - `cargo xtask test`: setup, build, run every test (root tests load real eBPF programs).

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod vm;

const NIGHTLY: &str = "nightly";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Programs the tests drive, and the Debian package of each: namespaces, sysctls, dropping
/// privileges, and a real Prometheus with promtool for the exporter tests.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("sysctl", "procps"),
    ("setpriv", "util-linux"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
];

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain pieces that are missing.
    Setup,
    /// Build port-trace (the eBPF object is embedded by its build script).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run port-trace with the given arguments (default: `trace`).
    Run {
        #[arg(long)]
        release: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure what tracing costs a loopback connect() workload (root).
    Bench,
    /// Boot stock Debian 6.1 kernels under qemu and run the capture tests there once per hook
    /// set; print a kernel x hook-set matrix, fail on any mismatch.
    VmTest {
        /// Kernel flavours: "cloud" and/or "generic".
        #[arg(long = "flavour", default_values = ["cloud", "generic"])]
        flavours: Vec<String>,
        /// Hook sets to run.
        #[arg(long = "hooks", default_values = ["fexit", "kprobe", "cgroup"])]
        hooks: Vec<String>,
    },
    /// Boot stock Debian 6.1 kernels under qemu (TCG) and run `port-trace check` and a short
    /// trace inside: the binary built here against another kernel's struct layout.
    VmCheck {
        /// Kernel flavours: "cloud" and/or "generic".
        #[arg(long = "flavour", default_values = ["cloud", "generic"])]
        flavours: Vec<String>,
        /// Force a hook set in the guest (fexit, kprobe, cgroup); default: automatic.
        #[arg(long)]
        hooks: Option<String>,
    },
    /// Build and run all tests, including the root eBPF integration tests and the VM matrix.
    Test {
        /// Skip the qemu matrix of stock kernels (fexit/kprobe cannot run on every host).
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Setup => setup(false).map(|_| ExitCode::SUCCESS),
        Cmd::Build { release } => {
            setup(false)?;
            build(release).map(|_| ExitCode::SUCCESS)
        }
        Cmd::Run { release, args } => {
            setup(false)?;
            let bin = build(release)?;
            let args = if args.is_empty() {
                vec!["trace".to_string()]
            } else {
                args
            };
            forward_interrupts_to_child();
            let status = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("run {}", bin.display()))?;
            Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
        }
        Cmd::VmCheck { flavours, hooks } => {
            setup(false)?;
            let bin = build(false)?;
            vm_check(&bin, &flavours, hooks.as_deref()).map(|_| ExitCode::SUCCESS)
        }
        Cmd::VmTest { flavours, hooks } => {
            setup(true)?;
            let bin = build(false)?;
            let rows = vm_test(&bin, &flavours, &hooks)?;
            if rows.iter().any(|r| r.2 != "ok") {
                bail!("vm-test: a kernel or hook set failed the capture tests");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench => {
            setup(true)?;
            let bin = build(true)?;
            let status = Command::new(cargo())
                .args(["bench", "-p", "port-trace-tests", "--bench", "overhead"])
                .env("PORT_TRACE_BIN", &bin)
                .status()
                .context("run cargo bench")?;
            Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Test { no_vm, args } => {
            setup(true)?;
            let bin = build(false)?;
            let mut status = Command::new(cargo())
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
                .args(&args)
                .env("PORT_TRACE_BIN", &bin)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("run cargo test")?;
            // Echo as it comes and total the per-binary results into one closing line.
            let (mut passed, mut failed) = (0u64, 0u64);
            let out = std::io::BufReader::new(status.stdout.take().context("cargo test stdout")?);
            for line in std::io::BufRead::lines(out) {
                let line = line?;
                println!("{line}");
                if let Some((p, f)) = parse_result_line(&line) {
                    passed += p;
                    failed += f;
                }
            }
            let mut ok = status.wait()?.success();
            if !no_vm {
                // Every hook set on stock kernels: each kernel x hook set counts as one test.
                let hooks = VM_HOOKS.map(String::from);
                match vm_test(&bin, &["cloud".into(), "generic".into()], &hooks) {
                    Ok(rows) => {
                        for (_, _, verdict) in rows {
                            if verdict == "ok" {
                                passed += 1;
                            } else {
                                failed += 1;
                                ok = false;
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("xtask: {e:#}");
                        failed += 1;
                        ok = false;
                    }
                }
            }
            println!("tests: {passed} passed, {failed} failed");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
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

/// What the guest runs: check, then a short trace while busybox makes a TCP connect (refused,
/// but the kernel still picks a port) and a UDP send; the trace must show both.
const VM_CHECK_BODY: &str = r#"
mkdir -p /sys/fs/cgroup /tmp
mount -t cgroup2 none /sys/fs/cgroup
ip link set lo up
/port-trace check || true
/port-trace trace HOOKS --format json --duration 60s > /tmp/ev.json 2> /tmp/tr.err &
for i in $(seq 1 240); do grep -q '^tracing:' /tmp/tr.err && break; sleep 0.5; done
cat /tmp/tr.err
nc -l -p 5000 > /dev/null &
sleep 1
echo hi | nc -w 1 127.0.0.1 5000 || true
nslookup example.invalid 127.0.0.1 > /dev/null 2>&1 || true
kill -INT $(pidof port-trace)
wait $(pidof port-trace) 2>/dev/null
sleep 1
cat /tmp/tr.err
cat /tmp/ev.json
grep -q '"op":"connect"' /tmp/ev.json
grep -q '"op":"bind"' /tmp/ev.json || grep -q '"op":"autobind"' /tmp/ev.json
"#;

fn vm_check(bin: &Path, flavours: &[String], hooks: Option<&str>) -> Result<()> {
    let cache = workspace_root().join("target/vm/cache");
    std::fs::create_dir_all(&cache)?;
    let qemu = vm::fetch_qemu(&cache)?;
    let files = with_libraries(&[(bin.to_path_buf(), "/port-trace".into())])?;
    let files: Vec<(PathBuf, &str)> = files.iter().map(|(h, g)| (h.clone(), g.as_str())).collect();
    let hooks_arg = hooks.map(|h| format!("--hooks {h}")).unwrap_or_default();
    let body = VM_CHECK_BODY.replace("HOOKS", &hooks_arg);
    let initramfs = vm::build_initramfs(&cache, &files, &vm::init_script(&body))?;
    let mut failed = Vec::new();
    for flavour in flavours {
        let console = boot_flavour(&qemu, &cache, &initramfs, flavour, 600)?;
        if let Err(e) = vm::parse_result(&console) {
            failed.push(format!("{flavour}: {e}"));
        }
    }
    if !failed.is_empty() {
        bail!("vm-check failed: {}", failed.join("; "));
    }
    println!("vm-check: {} kernel(s) ok", flavours.len());
    Ok(())
}

/// Fetches a Debian 6.1 kernel of `flavour` ("cloud" or "generic"), boots it with
/// `initramfs`, prints and returns the serial console.
fn boot_flavour(
    qemu: &vm::Qemu,
    cache: &Path,
    initramfs: &Path,
    flavour: &str,
    timeout_secs: u64,
) -> Result<String> {
    let kernel = vm::fetch_kernel(cache, if flavour == "generic" { "" } else { flavour })?;
    let started = std::time::Instant::now();
    let console = vm::boot(
        qemu,
        &kernel,
        initramfs,
        std::time::Duration::from_secs(timeout_secs),
    )?;
    println!(
        "===== {flavour} ({:.0}s)\n{console}",
        started.elapsed().as_secs_f64()
    );
    Ok(console)
}

/// The capture test binary, built but not run.
fn capture_test_binary() -> Result<PathBuf> {
    let out = Command::new(cargo())
        .args([
            "test",
            "-p",
            "port-trace-tests",
            "--test",
            "capture",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
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

/// Host files for the guest at the same paths, plus the shared libraries they load.
fn with_libraries(bins: &[(PathBuf, String)]) -> Result<Vec<(PathBuf, String)>> {
    let mut files = bins.to_vec();
    for (host, _) in bins {
        let ldd = Command::new("ldd").arg(host).output().context("run ldd")?;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            if let Some(p) = line.split_whitespace().find(|w| w.starts_with('/')) {
                let p = PathBuf::from(p);
                let guest = p.display().to_string();
                if !files.iter().any(|(_, g)| *g == guest) {
                    files.push((p, guest));
                }
            }
        }
    }
    Ok(files)
}

fn which_path(bin: &str) -> Result<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if p.is_empty() {
        bail!("{bin} not found");
    }
    Ok(PathBuf::from(p))
}

const VM_MATRIX_MARK: &str = "PORT-TRACE-MATRIX:";
const VM_HOOKS: [&str; 3] = ["fexit", "kprobe", "cgroup"];

/// Boots each kernel and runs the capture tests per hook set; returns (kernel, hook set,
/// verdict) rows. A kernel that fails to boot or report is an error.
fn vm_test(
    bin: &Path,
    flavours: &[String],
    hooks: &[String],
) -> Result<Vec<(String, String, String)>> {
    let cache = workspace_root().join("target/vm/cache");
    std::fs::create_dir_all(&cache)?;
    let qemu = vm::fetch_qemu(&cache)?;
    let capture = capture_test_binary()?;
    let mut bins = vec![
        (bin.to_path_buf(), "/port-trace".to_string()),
        (capture, "/capture".to_string()),
    ];
    for tool in ["ip", "sysctl"] {
        let p = which_path(tool)?;
        let g = p.display().to_string();
        bins.push((p, g));
    }
    let files = with_libraries(&bins)?;
    let files: Vec<(PathBuf, &str)> = files.iter().map(|(h, g)| (h.clone(), g.as_str())).collect();
    // One run of the capture tests per hook set; each prints a matrix line.
    let mut body = String::from(
        "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nmkdir -p /sys/fs/cgroup /tmp /run/netns /etc\nmount -t cgroup2 none /sys/fs/cgroup\nmount -t tmpfs tmpfs /run\nmkdir -p /run/netns\nip link set lo up\nrc=0\n",
    );
    for h in hooks {
        body.push_str(&format!(
            "if PORT_TRACE_BIN=/port-trace PORT_TRACE_HOOKS={h} CI=true /capture --test-threads=1 --nocapture 2>&1; then echo \"{VM_MATRIX_MARK} {h} ok\"; else echo \"{VM_MATRIX_MARK} {h} FAIL\"; rc=1; fi\n"
        ));
    }
    body.push_str("exit $rc\n");
    let initramfs = vm::build_initramfs(&cache, &files, &vm::init_script(&body))?;
    let mut rows = Vec::new();
    for flavour in flavours {
        let console = boot_flavour(&qemu, &cache, &initramfs, flavour, 1500)?;
        for h in hooks {
            let line = console
                .lines()
                .find(|l| l.starts_with(&format!("{VM_MATRIX_MARK} {h} ")));
            let verdict = line
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or("missing")
                .to_string();
            rows.push((flavour.clone(), h.clone(), verdict));
        }
    }
    println!("kernel    hook set  capture tests (Debian 6.1 under qemu)");
    for (f, h, v) in &rows {
        println!("{f:<9} {h:<9} {v}");
    }
    Ok(rows)
}

extern "C" fn ignore(_: libc::c_int) {}

/// Ctrl-C reaches the whole foreground group: let port-trace handle it (drain, print its
/// summary, exit 0) instead of xtask dying first. A handler, unlike SIG_IGN, is reset by exec,
/// so the child still gets the default behaviour until it installs its own.
fn forward_interrupts_to_child() {
    // SAFETY: installs a handler that does nothing; no shared state.
    unsafe {
        libc::signal(libc::SIGINT, ignore as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, ignore as *const () as libc::sighandler_t);
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn build(release: bool) -> Result<PathBuf> {
    let mut cmd = Command::new(cargo());
    cmd.args(["build", "-p", "port-trace"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("run cargo build")?;
    if !status.success() {
        bail!("building port-trace failed");
    }
    let profile = if release { "release" } else { "debug" };
    Ok(workspace_root()
        .join("target")
        .join(profile)
        .join("port-trace"))
}

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn say(what: &str) {
    eprintln!("xtask: {what}");
}

fn can_install() -> bool {
    Path::new("/usr/bin/apt-get").exists() && nix_is_root()
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn step(description: &str, cmd: &mut Command) -> Result<()> {
    say(description);
    let status = cmd.status().with_context(|| format!("run {cmd:?}"))?;
    if !status.success() {
        bail!("{description} failed ({cmd:?})");
    }
    Ok(())
}

/// Missing pieces, each with the command that provides it.
fn setup(for_tests: bool) -> Result<()> {
    let mut manual: Vec<String> = Vec::new();
    let apt = can_install();
    let mut apt_updated = false;
    let mut apt_install = |pkgs: &[&str], manual: &mut Vec<String>| -> Result<()> {
        if !apt {
            manual.push(format!("apt-get install -y {}", pkgs.join(" ")));
            return Ok(());
        }
        if !apt_updated {
            step(
                "apt-get update",
                Command::new("apt-get").args(["update", "-q"]),
            )?;
            apt_updated = true;
        }
        step(
            &format!("installing {}", pkgs.join(" ")),
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };

    // 1. nightly with rust-src, for -Z build-std=core on bpfel-unknown-none.
    if !ok(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--version"])) {
        step(
            "installing the nightly toolchain with rust-src",
            Command::new("rustup").args([
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
        )?;
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .context("run rustup")?;
    if !String::from_utf8_lossy(&components.stdout).contains("rust-src") {
        step(
            "adding rust-src to the nightly toolchain",
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
        )?;
    }

    // 2. bpf-linker, built against LLVM 22 (the nightly's LLVM).
    if !ok(Command::new("bpf-linker").arg("--version")) {
        if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
            apt_install(LLVM_PACKAGES, &mut manual)?;
        }
        if manual.is_empty() {
            step(
                "building bpf-linker against LLVM 22 (a few minutes, once)",
                Command::new(cargo())
                    .args([
                        "install",
                        "bpf-linker",
                        "--locked",
                        "--no-default-features",
                        "--features",
                        "llvm-22",
                    ])
                    .env("LLVM_PREFIX", LLVM_PREFIX),
            )?;
        } else {
            manual.push(format!(
                "LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --locked --no-default-features --features llvm-22"
            ));
        }
    }

    // 3. What the root tests drive.
    if for_tests {
        let mut missing: Vec<&str> = TEST_PACKAGES
            .iter()
            .filter(|(bin, _)| !ok(Command::new("sh").args(["-c", &format!("command -v {bin}")])))
            .map(|(_, pkg)| *pkg)
            .collect();
        missing.dedup();
        if !missing.is_empty() {
            apt_install(&missing, &mut manual)?;
        }
    }

    if !manual.is_empty() {
        bail!(
            "cannot install the eBPF toolchain here (needs root and apt-get); run:\n  {}",
            manual.join("\n  ")
        );
    }
    Ok(())
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
