//! `cargo xtask dist`: what an operator installs, under `target/dist/`: the static
//! x86_64-unknown-linux-musl binary, the .deb (cargo-deb), and SHA256SUMS for both.
//! `cargo xtask dist --verify` (and `cargo xtask test`) then installs and checks them.
//!
//! One file per artefact: [`musl`] the binary, [`docs`] its man pages and completions,
//! [`unit`] the packaged systemd unit, [`deb`] the package, [`sums`] the checksums; [`verify`]
//! tests what was built. [`image`] is `cargo xtask image`, the OCI image of the same binary.

use std::path::PathBuf;

use anyhow::Result;

use crate::shell::{say, workspace_root};

pub mod deb;
pub mod docs;
pub mod image;
pub mod musl;
pub mod sums;
pub mod unit;
pub mod verify;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `dist` built, at their paths under `target/dist/`.
pub struct Artefacts {
    pub binary: PathBuf,
    pub deb: PathBuf,
}

pub fn command(verify: bool) -> Result<()> {
    let built = build()?;
    if verify {
        verify::all(&built)?;
    }
    Ok(())
}

pub fn dist_dir() -> PathBuf {
    workspace_root().join("target/dist")
}

/// Builds every artefact; the old ones are removed first so SHA256SUMS lists only these.
pub fn build() -> Result<Artefacts> {
    let dist = dist_dir();
    if dist.exists() {
        std::fs::remove_dir_all(&dist)?;
    }
    std::fs::create_dir_all(&dist)?;
    let built = musl::build()?;
    let staging = musl::package_dir();
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    docs::generate(&built, &staging)?;
    unit::write(&staging)?;
    let binary = musl::copy_stripped(&built, &dist)?;
    let deb = deb::build(&dist)?;
    sums::write(&dist, &[&binary, &deb])?;
    for p in [&binary, &deb] {
        let size = std::fs::metadata(p)?.len();
        say(&format!("dist: {} ({} KiB)", p.display(), size / 1024));
    }
    say(&format!("dist: {}", dist.join("SHA256SUMS").display()));
    Ok(Artefacts { binary, deb })
}
