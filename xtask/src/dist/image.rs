//! `cargo xtask image`: the OCI image of deploy/container/Containerfile (the static binary on
//! `scratch`), built with podman and saved as `target/dist/port-trace-VERSION-amd64.oci.tar`;
//! then unpacked here and its binary run, as a test of what a node would pull.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{VERSION, dist_dir, musl, sums};
use crate::{
    setup,
    shell::{step, workspace_root},
};

/// The local name; push it where deploy/kubernetes/daemonset.yaml points.
pub const NAME: &str = "localhost/port-trace";

pub fn command() -> Result<()> {
    let dist = dist_dir();
    let binary = dist.join(musl::dist_name());
    if !binary.exists() {
        super::build()?;
    }
    let archive = build(&dist, &binary)?;
    sums::write_all(&dist)?;
    verify(&archive)
}

fn build(dist: &Path, binary: &Path) -> Result<PathBuf> {
    let podman = setup::install_missing("podman", "podman")?;
    let tag = format!("{NAME}:{VERSION}");
    let revision = commit_of(binary)?;
    step(
        &format!("building the image {tag}"),
        Command::new(&podman)
            // No cache: buildah reuses a LABEL step even when its build argument changed.
            .args([
                "build",
                "--no-cache",
                "--format",
                "oci",
                "--tag",
                &tag,
                "--file",
            ])
            .arg(workspace_root().join("deploy/container/Containerfile"))
            .arg(format!("--build-arg=VERSION={VERSION}"))
            .arg(format!("--build-arg=REVISION={revision}"))
            .arg(format!("--build-arg=BINARY={}", musl::dist_name()))
            .arg(dist),
    )?;
    let archive = dist.join(format!("port-trace-{VERSION}-amd64.oci.tar"));
    if archive.exists() {
        std::fs::remove_file(&archive)?;
    }
    step(
        "saving it as an OCI archive",
        Command::new(&podman)
            .args(["save", "--format", "oci-archive", "--output"])
            .arg(&archive)
            .arg(&tag),
    )?;
    Ok(archive)
}

/// Unpacks the archive's layers into a root file system and runs the binary from it.
fn verify(archive: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("port-trace-image-{}", std::process::id()));
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let result = unpack_and_run(archive, &dir, &rootfs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn unpack_and_run(archive: &Path, dir: &Path, rootfs: &Path) -> Result<()> {
    step(
        "unpacking the OCI archive",
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(dir),
    )?;
    let blob = |digest: &str| {
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let json = |p: PathBuf| -> Result<Value> {
        Ok(serde_json::from_slice(
            &std::fs::read(&p).with_context(|| format!("read {}", p.display()))?,
        )?)
    };
    let index = json(dir.join("index.json"))?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json names no manifest")?;
    let manifest = json(blob(manifest_digest))?;
    let layers = manifest["layers"]
        .as_array()
        .context("the manifest has no layers")?;
    for layer in layers {
        let digest = layer["digest"].as_str().context("a layer has no digest")?;
        println!(
            "layer {digest} {} bytes {}",
            layer["size"], layer["mediaType"]
        );
        step(
            "unpacking a layer",
            Command::new("tar")
                .arg("-xf")
                .arg(blob(digest))
                .arg("-C")
                .arg(rootfs),
        )?;
    }
    let config = json(blob(
        manifest["config"]["digest"]
            .as_str()
            .context("the manifest has no config")?,
    ))?;
    println!("labels {}", config["config"]["Labels"]);
    let bin = rootfs.join("usr/local/bin/port-trace");
    let out = Command::new(&bin).arg("--version").output()?;
    let version = String::from_utf8_lossy(&out.stdout);
    println!("$ rootfs/usr/local/bin/port-trace --version\n{version}");
    if !out.status.success() || !version.contains(VERSION) {
        bail!(
            "the image's binary did not run: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The commit the binary says it was built from (`--version`), for the revision label.
fn commit_of(binary: &Path) -> Result<String> {
    let out = Command::new(binary).arg("--version").output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("commit "))
        .map(str::to_string)
        .with_context(|| format!("{} --version names no commit", binary.display()))
}
