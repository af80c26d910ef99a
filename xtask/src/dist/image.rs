//! `cargo xtask image [--push REF]`: the OCI images of deploy/container/Containerfile (the
//! static binary on `scratch`), one per architecture, built with podman (`--platform
//! linux/amd64|arm64`; the Containerfile runs nothing, so no emulation is needed), saved as
//! `target/dist/port-trace-VERSION-ARCH.oci.tar`, and a manifest list `localhost/port-trace:
//! VERSION` over both, saved as `target/dist/port-trace-VERSION.oci.tar` (an OCI layout whose
//! index names both platforms). Then each saved image is unpacked and its binary run (the
//! arm64 one under qemu-user), as a test of what a node would pull.
//!
//! `--push REF` then pushes the manifest list with both images to `REF` (a registry reference
//! such as `ghcr.io/you/port-trace:0.1.0`; podman uses the credentials of `podman login`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{VERSION, dist_dir, musl, qemu_user, sums};
use crate::{
    arch::Arch,
    setup,
    shell::{say, step, succeeds, workspace_root},
};

/// The local name; push it where deploy/kubernetes/daemonset.yaml points.
pub const NAME: &str = "localhost/port-trace";

pub fn command(push: Option<&str>) -> Result<()> {
    let dist = dist_dir();
    if Arch::ALL
        .iter()
        .any(|&a| !dist.join(musl::dist_name(a)).exists())
    {
        super::build()?;
    }
    let podman = setup::install_missing("podman", "podman")?;
    let list = format!("{NAME}:{VERSION}");
    // A list of the same name from an earlier run would gain a second entry per platform.
    let _ = succeeds(Command::new(&podman).args(["manifest", "rm", &list]));
    let _ = succeeds(Command::new(&podman).args(["rmi", "--force", &list]));
    step(
        &format!("creating the manifest list {list}"),
        Command::new(&podman).args(["manifest", "create", &list]),
    )?;
    for arch in Arch::ALL {
        let tag = build(&podman, &dist, arch)?;
        let archive = save(&podman, &tag, &archive_path(&dist, Some(arch)))?;
        verify(arch, &archive)?;
        step(
            &format!("adding {tag} to {list}"),
            Command::new(&podman).args([
                "manifest",
                "add",
                &list,
                &format!("containers-storage:{tag}"),
            ]),
        )?;
    }
    let all = archive_path(&dist, None);
    if all.exists() {
        std::fs::remove_file(&all)?;
    }
    step(
        "saving the manifest list and both images as one OCI archive",
        Command::new(&podman)
            .args(["manifest", "push", "--all", &list])
            .arg(format!("oci-archive:{}", all.display())),
    )?;
    platforms_of(&all)?;
    sums::write_all(&dist)?;
    if let Some(reference) = push {
        step(
            &format!("pushing {list} (amd64 and arm64) to {reference}"),
            Command::new(&podman)
                .args(["manifest", "push", "--all", &list])
                .arg(format!("docker://{reference}")),
        )?;
    }
    Ok(())
}

/// `target/dist/port-trace-VERSION-ARCH.oci.tar`, or the list's `port-trace-VERSION.oci.tar`.
fn archive_path(dist: &Path, arch: Option<Arch>) -> PathBuf {
    match arch {
        Some(a) => dist.join(format!("port-trace-{VERSION}-{}.oci.tar", a.debian())),
        None => dist.join(format!("port-trace-{VERSION}.oci.tar")),
    }
}

/// Builds the image for `arch`, tagged `NAME:VERSION-ARCH`; returns the tag.
fn build(podman: &Path, dist: &Path, arch: Arch) -> Result<String> {
    let tag = format!("{NAME}:{VERSION}-{}", arch.debian());
    let binary = dist.join(musl::dist_name(arch));
    let revision = commit_of(arch, &binary)?;
    step(
        &format!("building the image {tag}"),
        Command::new(podman)
            // No cache: buildah reuses a LABEL step even when its build argument changed.
            .args(["build", "--no-cache", "--format", "oci"])
            .arg(format!("--platform=linux/{}", arch.debian()))
            .args(["--tag", &tag, "--file"])
            .arg(workspace_root().join("deploy/container/Containerfile"))
            .arg(format!("--build-arg=VERSION={VERSION}"))
            .arg(format!("--build-arg=REVISION={revision}"))
            .arg(format!("--build-arg=BINARY={}", musl::dist_name(arch)))
            .arg(dist),
    )?;
    Ok(tag)
}

fn save(podman: &Path, tag: &str, archive: &Path) -> Result<PathBuf> {
    if archive.exists() {
        std::fs::remove_file(archive)?;
    }
    step(
        &format!("saving {tag} as an OCI archive"),
        Command::new(podman)
            .args(["save", "--format", "oci-archive", "--output"])
            .arg(archive)
            .arg(tag),
    )?;
    Ok(archive.to_path_buf())
}

/// The platforms the list archive's index names: both, or an error.
fn platforms_of(archive: &Path) -> Result<()> {
    let dir = scratch_dir("list")?;
    let result = (|| {
        untar(archive, &dir)?;
        let index = json(&dir.join("index.json"))?;
        // podman writes the list as the index's only manifest, or the platforms directly.
        let mut entries = index["manifests"].as_array().cloned().unwrap_or_default();
        if let [only] = entries.as_slice()
            && only["mediaType"] == "application/vnd.oci.image.index.v1+json"
        {
            let digest = only["digest"].as_str().context("the index has no digest")?;
            entries = json(&blob(&dir, digest))?["manifests"]
                .as_array()
                .cloned()
                .unwrap_or_default();
        }
        let mut platforms: Vec<String> = entries
            .iter()
            .filter_map(|m| {
                Some(format!(
                    "{}/{}",
                    m["platform"]["os"].as_str()?,
                    m["platform"]["architecture"].as_str()?
                ))
            })
            .collect();
        platforms.sort();
        println!(
            "manifest list {}: {}",
            archive.display(),
            platforms.join(", ")
        );
        let want: Vec<String> = Arch::ALL
            .iter()
            .map(|a| format!("linux/{}", a.debian()))
            .collect();
        if want.iter().any(|w| !platforms.contains(w)) {
            bail!("the manifest list names {platforms:?}, not {want:?}");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Unpacks the archive's layers into a root file system and runs the binary from it (the
/// arm64 one under qemu-user); the image's platform must be `arch`.
fn verify(arch: Arch, archive: &Path) -> Result<()> {
    let dir = scratch_dir(arch.debian())?;
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let result = unpack_and_run(arch, archive, &dir, &rootfs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn unpack_and_run(arch: Arch, archive: &Path, dir: &Path, rootfs: &Path) -> Result<()> {
    untar(archive, dir)?;
    let index = json(&dir.join("index.json"))?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json names no manifest")?;
    let manifest = json(&blob(dir, manifest_digest))?;
    let layers = manifest["layers"]
        .as_array()
        .context("the manifest has no layers")?;
    for layer in layers {
        let digest = layer["digest"].as_str().context("a layer has no digest")?;
        println!(
            "layer {digest} {} bytes {}",
            layer["size"], layer["mediaType"]
        );
        untar(&blob(dir, digest), rootfs)?;
    }
    let config = json(&blob(
        dir,
        manifest["config"]["digest"]
            .as_str()
            .context("the manifest has no config")?,
    ))?;
    println!(
        "{} image: platform {}/{}, labels {}",
        arch, config["os"], config["architecture"], config["config"]["Labels"]
    );
    if config["architecture"] != arch.debian() {
        bail!(
            "the {arch} image says architecture {}",
            config["architecture"]
        );
    }
    let bin = rootfs.join("usr/local/bin/port-trace");
    super::verify::elf(arch, &bin)?;
    let out = qemu_user::command(arch, &bin)?.arg("--version").output()?;
    let version = String::from_utf8_lossy(&out.stdout);
    println!("$ rootfs/usr/local/bin/port-trace --version ({arch})\n{version}");
    if !out.status.success() || !version.contains(VERSION) {
        bail!(
            "the {arch} image's binary did not run: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    say(&format!(
        "image: the {arch} image's binary runs from its unpacked layers"
    ));
    Ok(())
}

fn scratch_dir(what: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("port-trace-image-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn untar(archive: &Path, dest: &Path) -> Result<()> {
    step(
        &format!(
            "unpacking {}",
            archive.file_name().unwrap_or_default().to_string_lossy()
        ),
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(dest),
    )
}

fn blob(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn json(p: &Path) -> Result<Value> {
    Ok(serde_json::from_slice(
        &std::fs::read(p).with_context(|| format!("read {}", p.display()))?,
    )?)
}

/// The commit the binary says it was built from (`--version`), for the revision label.
fn commit_of(arch: Arch, binary: &Path) -> Result<String> {
    let out = qemu_user::command(arch, binary)?
        .arg("--version")
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("commit "))
        .map(str::to_string)
        .with_context(|| format!("{} --version names no commit", binary.display()))
}
