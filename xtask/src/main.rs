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
//! - `cargo xtask dist [--verify]`: the static binary and the .deb under `target/dist/`.
//! - `cargo xtask image`: the OCI image of the static binary (podman), saved and tested.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod build;
mod dist;
mod lint;
mod run;
mod setup;
mod shell;
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
    /// Boot stock Debian 6.1 kernels under qemu and run the capture tests there once per hook
    /// set; print a kernel x hook-set matrix, fail on any mismatch.
    VmTest {
        /// Kernel flavours: "cloud" and/or "generic".
        #[arg(long = "flavour", default_values = vm::matrix::FLAVOURS)]
        flavours: Vec<String>,
        /// Hook sets to run.
        #[arg(long = "hooks", default_values = vm::matrix::HOOK_SETS)]
        hooks: Vec<String>,
    },
    /// Boot stock Debian 6.1 kernels under qemu (TCG) and run `port-trace check` and a short
    /// trace inside: the binary built here against another kernel's struct layout.
    VmCheck {
        /// Kernel flavours: "cloud" and/or "generic".
        #[arg(long = "flavour", default_values = vm::matrix::FLAVOURS)]
        flavours: Vec<String>,
        /// Force a hook set in the guest (fexit, kprobe, cgroup); default: automatic.
        #[arg(long)]
        hooks: Option<String>,
    },
    /// Build the static x86_64 musl binary and the .deb under target/dist/, with SHA256SUMS.
    Dist {
        /// Then test them: run the binary, dpkg -i the .deb, check it, dpkg --purge (root).
        #[arg(long)]
        verify: bool,
    },
    /// Build the OCI image (static binary on scratch) with podman, save it as an OCI archive
    /// under target/dist/ and run its binary from the unpacked layers.
    Image,
    /// Build and run all tests, including the root eBPF integration tests, the artefacts of
    /// `dist` and the VM matrix.
    Test {
        /// Skip the qemu matrix of stock kernels (fexit/kprobe cannot run on every host).
        #[arg(long)]
        no_vm: bool,
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
        Cmd::VmTest { flavours, hooks } => done(vm::matrix::command(&flavours, &hooks)),
        Cmd::VmCheck { flavours, hooks } => done(vm::check::command(&flavours, hooks.as_deref())),
        Cmd::Dist { verify } => done(dist::command(verify)),
        Cmd::Image => done(dist::image::command()),
        Cmd::Test {
            no_vm,
            no_dist,
            args,
        } => test::command(no_vm, no_dist, &args),
    }
}
