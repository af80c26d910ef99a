//! The .deb, built by cargo-deb from `[package.metadata.deb]` in port-trace/Cargo.toml: the musl
//! binary, the packaged unit, man pages and completions from `musl::package_dir()`, and the
//! example config, alert rules and dashboard straight from deploy/.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::{VERSION, musl::TARGET};
use crate::shell::{cargo, step, succeeds, workspace_root};

/// Debian's name for x86_64.
pub const ARCH: &str = "amd64";

/// Builds `dist/port-trace_VERSION-1_amd64.deb` from the musl build already done.
pub fn build(dist: &Path) -> Result<PathBuf> {
    install_cargo_deb()?;
    let dest = dist.join(format!("port-trace_{VERSION}-1_{ARCH}.deb"));
    step(
        "packaging the .deb (cargo-deb)",
        Command::new(cargo())
            .args(["deb", "-p", "port-trace", "--no-build", "--target", TARGET])
            // Strips its copy of the binary too; the static binary needs no dependencies.
            .args(["--strip", "--output"])
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
