//! `cargo xtask`: set up the eBPF toolchain, build, run, lint and test port-trace.
//!
//! One module per command; this file is only the command line and its dispatch.
//!
//! - `cargo xtask setup`: install what building the eBPF object needs (nightly rust-src,
//!   llvm-22-dev, bpf-linker), or print the commands where it cannot.
//! - `cargo xtask run [-- ARGS]`: setup, build, run `port-trace ARGS` (default: `trace`).
//! - `cargo xtask bench [--no-vm]`: the cost table of tracing, host and VM rows, in one run.
//! - `cargo xtask lint`: rustfmt, then clippy on the host crates and on the eBPF crate.
//! - `cargo xtask test`: setup, build, run every test (root tests load real eBPF programs).
//! - `cargo xtask fuzz [--seconds N] [--target NAME]`: the cargo-fuzz targets of `fuzz/`.
//! - `cargo xtask soak [--duration 10m]`: `serve` under a mixed workload, watched for growth.
//! - `cargo xtask dist [--verify]`: the static binaries and the .debs (amd64, arm64) under
//!   `target/dist/`.
//! - `cargo xtask image [--push REF]`: the OCI images of the static binaries (podman) and
//!   their manifest list, saved and tested; pushed to a registry with `--push`.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod arch;
mod bench;
mod build;
mod dist;
mod fuzz;
mod lint;
mod netns;
mod progress;
mod run;
mod setup;
mod shell;
mod soak;
mod test;
mod vm;

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
    /// Measure what tracing costs four C loops (connect, UDP send, getppid, UDP autobind), on
    /// this host and, for the fexit and kprobe hook sets, in a Debian 6.1 VM (root).
    Bench(bench::BenchArgs),
    /// The VM's part of `bench`, run by the guest's /init.
    #[command(hide = true)]
    BenchGuest(bench::GuestArgs),
    /// Check formatting, then run clippy with -D warnings on the host crates and the eBPF crate.
    Lint,
    /// Boot stock Debian kernels under qemu and run the capture tests there once per hook set;
    /// print a kernel x hook-set matrix, fail on any mismatch.
    VmTest {
        /// Kernel releases: 5.10, 6.1, 6.12 or all (repeatable).
        #[arg(long = "kernel", default_value = "all")]
        kernels: Vec<String>,
        /// Kernel flavours: cloud, generic or all (repeatable).
        #[arg(long = "flavour", default_value = "cloud")]
        flavours: Vec<String>,
        /// Architectures: x86_64, arm64 or all (repeatable; arm64 boots 6.1 only, under
        /// qemu-system-aarch64).
        #[arg(long = "arch", default_value = "x86_64")]
        arches: Vec<String>,
        /// Hook sets to run.
        #[arg(long = "hooks", default_values = vm::matrix::HOOK_SETS)]
        hooks: Vec<String>,
    },
    /// Boot stock Debian kernels under qemu (TCG) and run `port-trace check` and a short trace
    /// inside: the binary built here against another kernel's struct layout.
    VmCheck {
        /// Kernel releases: 5.10, 6.1, 6.12 or all (repeatable).
        #[arg(long = "kernel", default_value = "6.1")]
        kernels: Vec<String>,
        /// Kernel flavours: cloud, generic or all (repeatable).
        #[arg(long = "flavour", default_value = "cloud")]
        flavours: Vec<String>,
        /// Force a hook set in the guest (fexit, kprobe, cgroup); default: automatic.
        #[arg(long)]
        hooks: Option<String>,
    },
    /// Run the cargo-fuzz targets (event decoder, recording reader, config parser, HTTP
    /// requests) for N seconds each; fails on any crash.
    Fuzz(fuzz::FuzzArgs),
    /// Run `port-trace serve` under a mixed workload (root) and fail on growth of its RSS, fds
    /// or threads, on CPU above its bound, or on any scrape slower than 1 s.
    Soak(soak::SoakArgs),
    /// Build the static musl binaries and the .debs for x86_64 (amd64) and aarch64 (arm64)
    /// under target/dist/, with SHA256SUMS.
    Dist {
        /// Then test them: run the binary, dpkg -i the .deb, check it, dpkg --purge (root).
        #[arg(long)]
        verify: bool,
    },
    /// Build the OCI images (static binary on scratch) for amd64 and arm64 with podman and a
    /// manifest list over both, save them as OCI archives under target/dist/ and run each
    /// image's binary from its unpacked layers.
    Image {
        /// Then push the manifest list and both images to this registry reference
        /// (e.g. ghcr.io/you/port-trace:0.1.0; log in with `podman login` first).
        #[arg(long, value_name = "REF")]
        push: Option<String>,
    },
    /// Build and run all tests, including the root eBPF integration tests, the artefacts of
    /// `dist` and the VM matrix.
    Test {
        /// Skip the qemu matrix of stock kernels (fexit/kprobe cannot run on every host).
        #[arg(long)]
        no_vm: bool,
        /// Skip the brief run of each fuzz target.
        #[arg(long)]
        no_fuzz: bool,
        /// Skip the 60 s soak of `serve`.
        #[arg(long)]
        no_soak: bool,
        /// Skip building and testing the static binary and the .deb.
        #[arg(long)]
        no_dist: bool,
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let done = |r: Result<()>| r.map(|()| ExitCode::SUCCESS);
    match cli.cmd {
        Cmd::Setup => done(setup::setup(false)),
        Cmd::Build { release } => done(build::command(release)),
        Cmd::Run { release, args } => run::command(release, args),
        Cmd::Bench(args) => bench::command(args),
        Cmd::BenchGuest(args) => bench::guest(args),
        Cmd::Lint => done(lint::command()),
        Cmd::VmTest {
            kernels,
            flavours,
            arches,
            hooks,
        } => done(
            arch::Arch::parse(&arches)
                .and_then(|a| vm_kernels_for(&kernels, &flavours, &a))
                .and_then(|k| vm::matrix::command(&k, &hooks)),
        ),
        Cmd::VmCheck {
            kernels,
            flavours,
            hooks,
        } => done(
            vm_kernels(&kernels, &flavours).and_then(|k| vm::check::command(&k, hooks.as_deref())),
        ),
        Cmd::Fuzz(args) => done(fuzz::command(args)),
        Cmd::Soak(args) => done(soak::command(args)),
        Cmd::Dist { verify } => done(dist::command(verify)),
        Cmd::Image { push } => done(dist::image::command(push.as_deref())),
        Cmd::Test {
            no_vm,
            no_fuzz,
            no_soak,
            no_dist,
            args,
        } => test::command(
            test::Skip {
                vm: no_vm,
                fuzz: no_fuzz,
                soak: no_soak,
                dist: no_dist,
            },
            &args,
        ),
    }
}

/// `--kernel` x `--flavour`, x86_64.
fn vm_kernels(kernels: &[String], flavours: &[String]) -> anyhow::Result<Vec<vm::kernel::Kernel>> {
    vm_kernels_for(kernels, flavours, &[arch::Arch::X86_64])
}

/// `--kernel` x `--flavour` x `--arch`.
fn vm_kernels_for(
    kernels: &[String],
    flavours: &[String],
    arches: &[arch::Arch],
) -> anyhow::Result<Vec<vm::kernel::Kernel>> {
    let k = vm::kernel::kernels(
        &vm::kernel::parse_releases(kernels)?,
        &vm::kernel::parse_flavours(flavours)?,
        arches,
    );
    if k.is_empty() {
        anyhow::bail!("no kernel to boot: arm64 boots 6.1 only (--kernel 6.1 or all)");
    }
    Ok(k)
}
