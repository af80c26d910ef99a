//! `SHA256SUMS`, in the format `sha256sum -c SHA256SUMS` checks (names relative to the file).

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

pub fn write(dist: &Path, files: &[&Path]) -> Result<()> {
    let names: Vec<&std::ffi::OsStr> = files
        .iter()
        .map(|f| f.file_name().context("an artefact path has no file name"))
        .collect::<Result<_>>()?;
    let out = Command::new("sha256sum")
        .args(&names)
        .current_dir(dist)
        .output()
        .context("run sha256sum")?;
    if !out.status.success() {
        bail!(
            "sha256sum failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::write(dist.join("SHA256SUMS"), out.stdout)?;
    Ok(())
}
