//! `cargo xtask build`: build port-trace; its build script builds and embeds the eBPF object.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::{
    setup,
    shell::{cargo, workspace_root},
};

pub fn command(release: bool) -> Result<()> {
    setup::setup(false)?;
    build(release).map(|_| ())
}

/// Builds port-trace and returns the binary's path.
pub fn build(release: bool) -> Result<PathBuf> {
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
