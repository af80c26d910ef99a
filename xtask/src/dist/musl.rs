//! The static binaries: port-trace for `x86_64-unknown-linux-musl` and
//! `aarch64-unknown-linux-musl` (the eBPF object embedded by port-trace's build script as in
//! every build, its kprobe argument reads compiled for that architecture), stripped. Each runs
//! on any distribution of its architecture, whatever its libc.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::VERSION;
use crate::{
    arch::Arch,
    setup,
    shell::{cargo, step, workspace_root},
};

/// cargo's output directory for the musl release build of `arch`.
pub fn out_dir(arch: Arch) -> PathBuf {
    workspace_root()
        .join("target")
        .join(arch.musl_target())
        .join("release")
}

/// Where the generated package files go: cargo-deb finds them there as `target/release/package`.
pub fn package_dir(arch: Arch) -> PathBuf {
    out_dir(arch).join("package")
}

/// The C compiler (and, off the host's architecture, the linker) for `arch`: `ring` (rustls'
/// crypto) compiles C. For x86_64 that is Debian's musl-gcc wrapper, which cc-rs does not find
/// under the name it tries first (x86_64-linux-musl-gcc); for aarch64 Debian's cross gcc with
/// the cross glibc headers (ring's C needs only stdint/string declarations, the same for musl),
/// and the same gcc links against Rust's self-contained musl.
pub fn toolchain(arch: Arch) -> Result<Vec<(String, PathBuf)>> {
    let var = arch.musl_target().replace('-', "_");
    Ok(match arch {
        Arch::X86_64 => vec![(
            format!("CC_{var}"),
            setup::install_missing("musl-gcc", "musl-tools")?,
        )],
        Arch::Aarch64 => {
            setup::install_missing("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")?;
            // By name (it is on PATH): cargo fingerprints the linker setting.
            let gcc = PathBuf::from("aarch64-linux-gnu-gcc");
            if !Path::new("/usr/aarch64-linux-gnu/include/stdint.h").exists() {
                setup::install_packages(&["libc6-dev-arm64-cross"])?;
            }
            vec![
                (format!("CC_{var}"), gcc.clone()),
                (format!("CARGO_TARGET_{}_LINKER", var.to_uppercase()), gcc),
            ]
        }
    })
}

/// Builds the release binary for `arch` with musl and returns cargo's output path.
pub fn build(arch: Arch) -> Result<PathBuf> {
    setup::setup(false)?;
    let target = arch.musl_target();
    add_target(target)?;
    let mut cmd = Command::new(cargo());
    cmd.args(["build", "-p", "port-trace", "--release", "--target", target])
        .envs(toolchain(arch)?)
        .current_dir(workspace_root());
    step(&format!("building port-trace for {target}"), &mut cmd)?;
    Ok(out_dir(arch).join("port-trace"))
}

/// The binary's name in `target/dist/`.
pub fn dist_name(arch: Arch) -> String {
    format!("port-trace-{VERSION}-{}-linux-musl", arch.name())
}

/// binutils' strip for `arch` (the host's, or the cross one).
pub fn strip_tool(arch: Arch) -> Result<PathBuf> {
    match arch {
        Arch::X86_64 => setup::install_missing("strip", "binutils"),
        Arch::Aarch64 => {
            setup::install_missing("aarch64-linux-gnu-strip", "binutils-aarch64-linux-gnu")
        }
    }
}

/// `dist/port-trace-VERSION-ARCH-linux-musl`, stripped (symbols are a sixth of the size).
pub fn copy_stripped(arch: Arch, built: &Path, dist: &Path) -> Result<PathBuf> {
    let dest = dist.join(dist_name(arch));
    std::fs::copy(built, &dest).with_context(|| format!("copy {}", built.display()))?;
    step(
        &format!("stripping the static {} binary", arch.name()),
        Command::new(strip_tool(arch)?)
            .arg("--strip-all")
            .arg(&dest),
    )?;
    Ok(dest)
}

/// The Rust standard library for `target`, added with rustup when missing (it brings its own
/// musl libc and start files; only C dependencies need a C compiler).
fn add_target(target: &str) -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("run rustup")?;
    if !out.status.success() {
        bail!("rustup target list --installed failed");
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    step(
        &format!("adding the {target} target"),
        Command::new("rustup").args(["target", "add", target]),
    )
}
