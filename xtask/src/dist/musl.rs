//! The static binary: port-trace for x86_64-unknown-linux-musl (the eBPF object embedded by
//! port-trace's build script as in every build), stripped. It runs on any x86_64 distribution,
//! whatever its libc.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::VERSION;
use crate::{
    setup,
    shell::{cargo, step, workspace_root},
};

pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// cargo's output directory for the musl release build.
pub fn out_dir() -> PathBuf {
    workspace_root().join("target").join(TARGET).join("release")
}

/// Where the generated package files go: cargo-deb finds them there as `target/release/package`.
pub fn package_dir() -> PathBuf {
    out_dir().join("package")
}

/// Builds the release binary for musl and returns cargo's output path.
pub fn build() -> Result<PathBuf> {
    setup::setup(false)?;
    add_target()?;
    // `ring` (rustls' crypto) compiles C: for musl that takes Debian's musl-gcc wrapper, which
    // cc-rs does not find under the name it tries first (x86_64-linux-musl-gcc).
    let musl_gcc = setup::install_missing("musl-gcc", "musl-tools")?;
    let mut cmd = Command::new(cargo());
    cmd.args(["build", "-p", "port-trace", "--release", "--target", TARGET])
        .env("CC_x86_64_unknown_linux_musl", musl_gcc)
        .current_dir(workspace_root());
    step(&format!("building port-trace for {TARGET}"), &mut cmd)?;
    Ok(out_dir().join("port-trace"))
}

/// The binary's name in `target/dist/`.
pub fn dist_name() -> String {
    format!("port-trace-{VERSION}-x86_64-linux-musl")
}

/// `dist/port-trace-VERSION-x86_64-linux-musl`, stripped (symbols are a sixth of the size).
pub fn copy_stripped(built: &Path, dist: &Path) -> Result<PathBuf> {
    let dest = dist.join(dist_name());
    std::fs::copy(built, &dest).with_context(|| format!("copy {}", built.display()))?;
    let strip = setup::install_missing("strip", "binutils")?;
    step(
        "stripping the static binary",
        Command::new(strip).arg("--strip-all").arg(&dest),
    )?;
    Ok(dest)
}

/// The Rust standard library for musl, added with rustup when missing (it brings its own musl
/// libc and start files; only C dependencies need musl-gcc).
fn add_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("run rustup")?;
    if !out.status.success() {
        bail!("rustup target list --installed failed");
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    step(
        &format!("adding the {TARGET} target"),
        Command::new("rustup").args(["target", "add", TARGET]),
    )
}
