//! `cargo xtask lint`: rustfmt (the workspace, then the fuzz crate outside it), then clippy with `-D warnings` on the host crates (stable) and on
//! the eBPF crate (nightly, bpfel-unknown-none). Every step runs even when an earlier one failed,
//! and clippy goes on past a failing crate (`--keep-going`), so one run shows every problem; the
//! command fails naming the steps that failed.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    setup::{self, NIGHTLY},
    shell::{cargo, say, workspace_root},
};

/// Host crates: everything but the eBPF crate, which only builds for bpfel.
const HOST_PACKAGES: &[&str] = &[
    "port-trace",
    "port-trace-common",
    "xtask",
    "port-trace-tests",
];

struct Step {
    /// Names the step in the closing sentence.
    name: &'static str,
    cmd: Command,
}

pub fn command() -> Result<()> {
    // port-trace's build script builds the eBPF crate: nightly, rust-src and bpf-linker.
    setup::setup(false)?;
    setup::ensure_components(None, &["rustfmt", "clippy"])?;
    setup::ensure_components(Some(NIGHTLY), &["rust-src", "clippy"])?;
    let mut failed = Vec::new();
    for Step { name, mut cmd } in steps() {
        cmd.current_dir(workspace_root());
        say(&format!("lint: {}", show(&cmd)));
        let passed = cmd.status().is_ok_and(|s| s.success());
        if !passed {
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed at: {}", failed.join("; "));
    }
    say("lint: ok");
    Ok(())
}

fn steps() -> Vec<Step> {
    let mut fmt = Command::new(cargo());
    fmt.args(["fmt", "--all", "--", "--check"]);

    // fuzz/ is its own crate outside the workspace: `--all` does not reach it.
    let mut fuzz_fmt = Command::new(cargo());
    fuzz_fmt.args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]);

    let mut host = Command::new(cargo());
    host.arg("clippy");
    for p in HOST_PACKAGES {
        host.args(["-p", p]);
    }
    host.args(["--all-targets", "--keep-going", "--", "-D", "warnings"]);

    vec![
        Step {
            name: "rustfmt (cargo fmt --all -- --check)",
            cmd: fmt,
        },
        Step {
            name: "rustfmt on the fuzz targets (cargo fmt --manifest-path fuzz/Cargo.toml)",
            cmd: fuzz_fmt,
        },
        Step {
            name: "clippy on the host crates",
            cmd: host,
        },
        Step {
            name: "clippy on the eBPF crate (nightly, bpfel-unknown-none)",
            cmd: ebpf_clippy(),
        },
    ]
}

/// The eBPF crate as port-trace's build script (aya-build) compiles it: nightly through
/// `rustup run`, `--release` (so the `[profile.release.package.port-trace-ebpf]` settings apply)
/// and core built from rust-src. Linting only checks, so bpf-linker is not invoked.
fn ebpf_clippy() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        NIGHTLY,
        "cargo",
        "clippy",
        "-p",
        "port-trace-ebpf",
        "--release",
    ])
    .args([
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--keep-going",
    ])
    .args(["--", "-D", "warnings"]);
    // As aya-build does: a RUSTC or wrapper set for the stable toolchain must not leak in.
    cmd.env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cmd
}

/// The command as a person would type it (program name without its directory).
fn show(cmd: &Command) -> String {
    let program = cmd.get_program().to_string_lossy();
    let program = program.rsplit('/').next().unwrap_or(&program);
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    format!("{program} {}", args.join(" "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn shows_every_step_as_typed() {
        let shown: Vec<String> = super::steps().iter().map(|s| super::show(&s.cmd)).collect();
        assert_eq!(shown[0], "cargo fmt --all -- --check");
        assert_eq!(
            shown[1],
            "cargo fmt --manifest-path fuzz/Cargo.toml -- --check"
        );
        assert_eq!(
            shown[2],
            "cargo clippy -p port-trace -p port-trace-common -p xtask -p port-trace-tests \
             --all-targets --keep-going -- -D warnings"
        );
        assert_eq!(
            shown[3],
            "rustup run nightly cargo clippy -p port-trace-ebpf --release --target \
             bpfel-unknown-none -Z build-std=core --keep-going -- -D warnings"
        );
    }
}
