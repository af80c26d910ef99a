//! What an arm64 guest runs, none of which this x86_64 host can lend: the aarch64 musl
//! port-trace and capture tests (cross-built, static), and iproute2's `ip` (the tests create
//! network namespaces, which busybox's `ip` cannot) with the shared libraries it loads, from
//! bookworm's arm64 packages; `sysctl` is busybox's.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::{debian, kernel::Arch};
use crate::{dist::qemu_user, shell::say};

/// iproute2 and, found with `apt-cache depends --recurse iproute2:arm64`, every library
/// package it loads (bookworm).
const PACKAGES: &[&str] = &[
    "iproute2",
    "libc6",
    "libbpf1",
    "libbsd0",
    "libmd0",
    "libcap2",
    "libdb5.3",
    "libelf1",
    "zlib1g",
    "libzstd1",
    "libmnl0",
    "libselinux1",
    "libpcre2-8-0",
    "libtirpc3",
    "libgssapi-krb5-2",
    "libkrb5-3",
    "libk5crypto3",
    "libkrb5support0",
    "libcom-err2",
    "libkeyutils1",
    "libssl3",
    "libxtables12",
];

/// The dirs whose libraries go into the guest, at the same paths (the dynamic loader's
/// default search path on Debian).
const LIB_DIRS: &[&str] = &["lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu"];

/// (host path, guest path) of `ip`, its libraries and the dynamic loader, unpacked into
/// `cache/guest-arm64/`; `ip -V` is run under qemu-user first, so a missing library is
/// reported here rather than in the guest.
pub fn iproute2(cache: &Path) -> Result<Vec<(PathBuf, String)>> {
    let root = cache.join("guest-arm64");
    let packages: Vec<String> = PACKAGES.iter().map(|p| format!("{p}:arm64")).collect();
    let names: Vec<&str> = packages.iter().map(String::as_str).collect();
    for deb in debian::download_debs(cache, &names)? {
        debian::extract(&deb.path, &root)?;
    }
    let ip = ["bin/ip", "sbin/ip", "usr/bin/ip", "usr/sbin/ip"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
        .context("iproute2:arm64 has no ip")?;
    let emulator = qemu_user::emulator(Arch::Aarch64)?;
    let out = Command::new(&emulator)
        .arg("-L")
        .arg(&root)
        .arg(&ip)
        .arg("-V")
        .output()
        .context("run the arm64 ip under qemu-user")?;
    if !out.status.success() {
        bail!(
            "the arm64 ip does not start with the unpacked libraries: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    say(&format!(
        "vm: arm64 guest gets {}",
        String::from_utf8_lossy(&out.stdout).trim()
    ));
    let mut files = vec![(ip, "/usr/sbin/ip".to_string())];
    files.push((
        resolve(&root, &root.join("lib/ld-linux-aarch64.so.1"))?,
        "/lib/ld-linux-aarch64.so.1".into(),
    ));
    for dir in LIB_DIRS {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.contains(".so") || e.file_type()?.is_dir() {
                continue;
            }
            files.push((resolve(&root, &e.path())?, format!("/{dir}/{name}")));
        }
    }
    Ok(files)
}

/// `path` with its symlinks followed inside `root` (an absolute link target is `root`'s).
fn resolve(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..16 {
        let Ok(target) = fs::read_link(&p) else {
            return Ok(p);
        };
        p = if target.is_absolute() {
            root.join(target.strip_prefix("/")?)
        } else {
            p.parent().context("a link has a parent")?.join(target)
        };
    }
    bail!("{}: too many symlinks", path.display())
}
