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

/// Every artefact in `dist` (after `cargo xtask image` added one).
pub fn write_all(dist: &Path) -> Result<()> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dist)? {
        let path = entry?.path();
        if path.is_file() && !path.ends_with("SHA256SUMS") {
            files.push(path);
        }
    }
    files.sort();
    write(dist, &files.iter().map(|p| p.as_path()).collect::<Vec<_>>())
}
