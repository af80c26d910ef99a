//! Stock Debian kernels (5.10, 6.1, 6.12 on x86_64, 6.1 on arm64; `kernel`) under qemu (TCG, no
//! KVM): boot one with a busybox initramfs, run our binaries there, and read the result back
//! from the serial console.
//!
//! Everything comes from the Debian archive with `apt-get download` and is unpacked into
//! `target/vm/cache` (nothing is installed on the host): see [`debian`] for the kernel and the
//! cache, [`qemu`] for qemu and the boot, [`initramfs`] for the guest's files and `/init`.
//! The commands: [`check`] (`vm-check`) and [`matrix`] (`vm-test`, and the VM part of `test`);
//! `bench` boots its guest with the same pieces (`crate::bench::vm`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::shell::workspace_root;

pub mod arm64;
pub mod check;
pub mod debian;
pub mod initramfs;
pub mod kernel;
pub mod matrix;
pub mod qemu;

/// `target/vm/cache`, created: downloaded packages, what is unpacked from them, initramfs files.
pub(crate) fn cache_dir() -> Result<PathBuf> {
    let cache = workspace_root().join("target/vm/cache");
    std::fs::create_dir_all(&cache)?;
    Ok(cache)
}

/// Fetches `kernel`, boots it with `initramfs`, prints and returns the serial console.
fn boot_kernel(
    qemu: &qemu::Qemu,
    cache: &Path,
    initramfs: &Path,
    kernel: kernel::Kernel,
    timeout_secs: u64,
) -> Result<String> {
    let vmlinuz = debian::fetch_kernel(cache, kernel)?;
    let started = Instant::now();
    let console = qemu::boot(qemu, &vmlinuz, initramfs, Duration::from_secs(timeout_secs))?;
    println!(
        "===== {kernel} ({:.0}s)\n{console}",
        started.elapsed().as_secs_f64()
    );
    Ok(console)
}

/// Host files for the guest (host path, guest path), plus the shared libraries they load, each
/// at its host path.
pub(crate) fn with_libraries(bins: &[(PathBuf, String)]) -> Result<Vec<(PathBuf, String)>> {
    let mut files = bins.to_vec();
    for (host, _) in bins {
        let ldd = Command::new("ldd").arg(host).output().context("run ldd")?;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            if let Some(p) = line.split_whitespace().find(|w| w.starts_with('/')) {
                let p = PathBuf::from(p);
                let guest = p.display().to_string();
                if !files.iter().any(|(_, g)| *g == guest) {
                    files.push((p, guest));
                }
            }
        }
    }
    Ok(files)
}

/// The last `lines` lines of `text`, for error messages.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
