//! `cargo xtask dist`: what an operator installs, under `target/dist/`: the static musl binary
//! and the .deb (cargo-deb) for x86_64 (amd64) and aarch64 (arm64), and SHA256SUMS for all.
//! `cargo xtask dist --verify` (and `cargo xtask test`) then installs and checks them.
//!
//! One file per artefact: [`musl`] the binaries, [`docs`] their man pages and completions,
//! [`unit`] the packaged systemd unit, [`deb`] the packages, [`sums`] the checksums; [`verify`]
//! tests what was built (the aarch64 binary under qemu-user, [`qemu_user`]). [`image`] is
//! `cargo xtask image`, the OCI images of the same binaries and their manifest list.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::{
    arch::Arch,
    shell::{say, workspace_root},
};

pub mod deb;
pub mod docs;
pub mod image;
pub mod musl;
pub mod qemu_user;
pub mod sums;
pub mod unit;
pub mod verify;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `dist` built for one architecture, at their paths under `target/dist/`.
pub struct Built {
    pub arch: Arch,
    pub binary: PathBuf,
    pub deb: PathBuf,
}

/// What `dist` built, one entry per architecture in [`Arch::ALL`] order.
pub struct Artefacts {
    pub built: Vec<Built>,
}

impl Artefacts {
    /// The static binary for `arch`.
    pub fn binary(&self, arch: Arch) -> Option<&PathBuf> {
        self.built
            .iter()
            .find(|b| b.arch == arch)
            .map(|b| &b.binary)
    }
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
    let mut built = Vec::new();
    for arch in Arch::ALL {
        let cargo_out = musl::build(arch)?;
        let staging = musl::package_dir(arch);
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        // The man pages and completions are the same text for every architecture: the host's
        // binary writes them, the others' packages get a copy.
        match Arch::ALL.iter().find(|a| a.is_host()) {
            Some(&host) if host != arch => copy_dir(&musl::package_dir(host), &staging)?,
            _ => {
                docs::generate(&cargo_out, &staging)?;
                unit::write(&staging)?;
            }
        }
        let binary = musl::copy_stripped(arch, &cargo_out, &dist)?;
        let deb = deb::build(arch, &dist)?;
        built.push(Built { arch, binary, deb });
    }
    let files: Vec<&std::path::Path> = built
        .iter()
        .flat_map(|b| [b.binary.as_path(), b.deb.as_path()])
        .collect();
    sums::write(&dist, &files)?;
    for p in &files {
        let size = std::fs::metadata(p)?.len();
        say(&format!("dist: {} ({} KiB)", p.display(), size / 1024));
    }
    say(&format!("dist: {}", dist.join("SHA256SUMS").display()));
    Ok(Artefacts { built })
}

/// `cp -r from to` for the small staging tree of generated package files.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)
                .with_context(|| format!("copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}
