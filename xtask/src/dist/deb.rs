//! The .deb per architecture, built by cargo-deb from `[package.metadata.deb]` in
//! port-trace/Cargo.toml: the musl binary, the packaged unit, man pages and completions from
//! `musl::package_dir()`, and the example config, alert rules and dashboard straight from
//! deploy/. cargo-deb names the Debian architecture after the Rust target (amd64, arm64).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::{VERSION, musl};
use crate::{
    arch::Arch,
    shell::{cargo, step, succeeds, workspace_root},
};

/// Builds `dist/port-trace_VERSION-1_ARCH.deb` from the musl build already done.
pub fn build(arch: Arch, dist: &Path) -> Result<PathBuf> {
    install_cargo_deb()?;
    let dest = dist.join(format!("port-trace_{VERSION}-1_{}.deb", arch.debian()));
    // cargo-deb strips its copy of the binary; off the host it needs the cross strip, which
    // it does not find by itself, so the binary it packs is stripped here first.
    let built = musl::out_dir(arch).join("port-trace");
    step(
        &format!("stripping the {} binary for the .deb", arch.name()),
        Command::new(musl::strip_tool(arch)?)
            .arg("--strip-all")
            .arg(&built),
    )?;
    step(
        &format!("packaging the {} .deb (cargo-deb)", arch.debian()),
        Command::new(cargo())
            .args(["deb", "-p", "port-trace", "--no-build", "--no-strip"])
            .args(["--target", arch.musl_target(), "--output"])
            .arg(&dest)
            .current_dir(workspace_root()),
    )?;
    if !dest.exists() {
        bail!("cargo-deb did not write {}", dest.display());
    }
    Ok(dest)
}

/// `cargo install cargo-deb` when `cargo deb` is missing (a few minutes, once).
fn install_cargo_deb() -> Result<()> {
    if succeeds(Command::new(cargo()).args(["deb", "--version"])) {
        return Ok(());
    }
    step(
        "installing cargo-deb (a few minutes, once)",
        Command::new(cargo()).args(["install", "cargo-deb", "--locked"]),
    )
    .context("cargo-deb is needed to build the .deb")
}
