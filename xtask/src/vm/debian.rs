//! Debian packages into the cache with `apt-get download`, unpacked with `dpkg`; nothing is
//! installed on the host, and the host's apt state is not touched: apt runs with a sources list
//! and package lists of our own under `cache/apt` (bullseye, bookworm and trixie, bookworm
//! preferred for everything that is not a kernel; amd64 and arm64 packages, the arm64 ones
//! named `PACKAGE:arm64`).
//!
//! A kernel is the newest build the lists know of its release and flavour (e.g.
//! `linux-image-5.10.0-46-cloud-amd64-unsigned`), falling back to older ones when a download
//! fails (Debian drops old builds). Only `/boot/vmlinuz-*` is unpacked: console on ttyS0, BTF,
//! kprobes and BPF trampolines are built in, so no modules are needed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::kernel::{Kernel, Release};
use crate::progress;

/// The suites our apt sees, each with its security updates.
const SUITES: [&str; 3] = ["bullseye", "bookworm", "trixie"];

/// apt's options for our own sources and lists under `cache/apt`.
fn apt_options(cache: &Path) -> Vec<String> {
    let apt = cache.join("apt");
    vec![
        format!(
            "Dir::Etc::sourcelist={}",
            apt.join("sources.list").display()
        ),
        "Dir::Etc::sourceparts=/nonexistent".into(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
        // Everything but the kernels comes from the suite the host runs (bookworm).
        "APT::Default-Release=bookworm".into(),
        // The arm64 guest's kernel and programs; the host's dpkg is not told of arm64.
        "APT::Architectures::=amd64".into(),
        "APT::Architectures::=arm64".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect()
}

/// `apt-get`/`apt-cache` with our sources; writes the sources list the first time.
fn apt(cache: &Path, program: &str) -> Result<Command> {
    let apt = cache.join("apt");
    fs::create_dir_all(apt.join("lists/partial"))?;
    fs::create_dir_all(apt.join("cache/archives/partial"))?;
    let list = apt.join("sources.list");
    if !list.exists() {
        let mut text = String::new();
        for suite in SUITES {
            for (repo, s) in [
                ("debian", suite.to_string()),
                ("debian-security", format!("{suite}-security")),
            ] {
                text.push_str(&format!(
                    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/{repo} {s} main\n"
                ));
            }
        }
        fs::write(&list, text).with_context(|| format!("writing {}", list.display()))?;
    }
    let mut cmd = Command::new(program);
    cmd.args(apt_options(cache));
    Ok(cmd)
}

/// `apt-get update` of our lists.
fn update(cache: &Path) -> Result<()> {
    run(apt(cache, "apt-get")?
        .args(["update", "-q"])
        .stdout(Stdio::null()))
}

/// One `.deb` in `cache/debs`, and the size apt says it has.
#[derive(Debug, Clone)]
pub struct Deb {
    pub path: PathBuf,
    size: u64,
}

impl Deb {
    /// A file of the right size is taken as downloaded (apt-get writes under the final name).
    fn is_cached(&self) -> bool {
        fs::metadata(&self.path).is_ok_and(|m| m.len() == self.size)
    }
}

/// Download (or find in `cache/debs`) the given packages' `.deb` files. Uses
/// `apt-get download --print-uris` to learn each candidate's file name and size, so a cached
/// file of the right name and size is reused without network access.
pub fn download_debs(cache: &Path, packages: &[&str]) -> Result<Vec<Deb>> {
    let dir = cache.join("debs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    let debs = match candidates(cache, &dir, packages) {
        Ok(d) => d,
        // Our lists are new or stale: fetch them once and ask again.
        Err(_) => {
            update(cache)?;
            candidates(cache, &dir, packages)?
        }
    };
    let (missing, missing_debs): (Vec<&str>, Vec<&Deb>) = packages
        .iter()
        .zip(&debs)
        .filter(|(_, deb)| !deb.is_cached())
        .unzip();
    if !missing.is_empty() {
        apt_download(cache, &dir, &missing, &missing_debs)?;
    }
    for deb in &debs {
        verify_size(deb)?;
    }
    Ok(debs)
}

/// Each package's `.deb` path in `dir` and its size, in the order of `packages`.
fn candidates(cache: &Path, dir: &Path, packages: &[&str]) -> Result<Vec<Deb>> {
    // One call for all (apt-get takes about a second to start).
    let out = apt(cache, "apt-get")?
        .args(["download", "--print-uris"])
        .args(packages)
        .output()
        .context("running apt-get (is this Debian?)")?;
    if !out.status.success() {
        bail!(
            "apt-get download --print-uris {} failed: {}",
            packages.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_print_uris(&String::from_utf8_lossy(&out.stdout), dir, packages)
}

/// Reads `apt-get download --print-uris` lines:
/// `'http://.../pool/...deb' NAME_VERSION_ARCH.deb SIZE SHA256:...` (the epoch's ':' is "%3a",
/// as in the file apt-get download writes).
fn parse_print_uris(text: &str, dir: &Path, packages: &[&str]) -> Result<Vec<Deb>> {
    let mut debs = Vec::new();
    for &package in packages {
        // `PACKAGE:arm64` is downloaded as `PACKAGE_VERSION_arm64.deb`.
        let (name, arch) = package.split_once(':').unwrap_or((package, ""));
        let prefix = format!("{name}_");
        let suffix = format!("_{arch}.deb");
        let line = text
            .lines()
            .filter(|l| l.starts_with('\''))
            .find(|l| {
                l.split_whitespace().nth(1).is_some_and(|n| {
                    n.starts_with(&prefix) && (arch.is_empty() || n.ends_with(&suffix))
                })
            })
            .with_context(|| format!("apt-get download --print-uris: no URI for {package}"))?;
        let mut fields = line.split_whitespace().skip(1);
        let (Some(name), Some(size)) = (fields.next(), fields.next()) else {
            bail!("unexpected apt-get --print-uris line: {line}");
        };
        let size: u64 = size.parse().with_context(|| format!("size in {line}"))?;
        debs.push(Deb {
            path: dir.join(name),
            size,
        });
    }
    Ok(debs)
}

/// `apt-get download` of `packages` (whose files are `debs`) into `dir`, with a progress bar of
/// the bytes written when stderr is a terminal.
fn apt_download(cache: &Path, dir: &Path, packages: &[&str], debs: &[&Deb]) -> Result<()> {
    let mut child = apt(cache, "apt-get")?
        .arg("download")
        .arg("-q")
        // Downloading into a root-owned dir: don't try (and warn about) the _apt sandbox.
        .args(["-o", "APT::Sandbox::User=root"])
        .args(packages)
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .context("running apt-get download")?;
    let total = debs.iter().map(|d| d.size).sum();
    let what = match packages {
        [one] => format!("downloading {one}"),
        many => format!("downloading {} packages", many.len()),
    };
    let bar = progress::bytes(total, &what);
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for apt-get download")? {
            break status;
        }
        // apt-get download writes each file under its final name as it goes.
        let written: u64 = debs
            .iter()
            .map(|d| fs::metadata(&d.path).map_or(0, |m| m.len()))
            .sum();
        bar.set_position(written);
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    bar.finish_and_clear();
    if !status.success() {
        bail!("apt-get download {} failed ({status})", packages.join(" "));
    }
    Ok(())
}

fn verify_size(deb: &Deb) -> Result<()> {
    let len = fs::metadata(&deb.path)
        .with_context(|| format!("apt-get download did not write {}", deb.path.display()))?
        .len();
    if len != deb.size {
        bail!(
            "{}: {} bytes, apt says {}",
            deb.path.display(),
            len,
            deb.size
        );
    }
    Ok(())
}

/// `dpkg -x deb dest` (a no-op when `dest/.done-<file name>` exists).
pub fn extract(deb: &Path, dest: &Path) -> Result<()> {
    let name = deb.file_name().context("a .deb path has a file name")?;
    let stamp = dest.join(format!(".done-{}", name.to_string_lossy()));
    if stamp.exists() {
        return Ok(());
    }
    fs::create_dir_all(dest)?;
    run(Command::new("dpkg").arg("-x").arg(deb).arg(dest))?;
    fs::write(&stamp, b"")?;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The newest build of `kernel` that can be downloaded, unpacked into
/// `cache/kernel/<package>/`; returns the `vmlinuz` path. Older builds are tried in turn: the
/// archive drops old builds, and a mirror may lack a suite's security pool (bullseye-security
/// answers 404 here).
pub fn fetch_kernel(cache: &Path, kernel: Kernel) -> Result<PathBuf> {
    let packages = kernel_packages(cache, kernel)?;
    // A build unpacked by an earlier run wins: no download, no 404s on the way to it.
    for package in &packages {
        if let Some(vmlinuz) = find_vmlinuz(&cache.join("kernel").join(package))? {
            return Ok(vmlinuz);
        }
    }
    let mut errors = Vec::new();
    for package in &packages {
        let dest = cache.join("kernel").join(package);
        let qualified = format!("{package}:{}", kernel.arch.debian());
        match download_debs(cache, &[&qualified]) {
            Ok(debs) => return unpack_vmlinuz(&debs[0].path, &dest),
            Err(e) => errors.push(format!("{package}: {e:#}")),
        }
    }
    bail!(
        "no {kernel} kernel could be fetched ({} builds tried): {}",
        packages.len(),
        errors.last().map_or("", String::as_str)
    )
}

/// `kernel`'s image packages, newest build first; updates our lists once when they know none.
fn kernel_packages(cache: &Path, kernel: Kernel) -> Result<Vec<String>> {
    let mut builds = kernel_builds(cache, kernel)?;
    if builds.is_empty() {
        update(cache)?;
        builds = kernel_builds(cache, kernel)?;
    }
    if builds.is_empty() {
        bail!(
            "apt knows no {}N-{}{}-unsigned in {}",
            kernel.release.prefix(),
            kernel.flavour.infix(),
            kernel.arch.debian(),
            kernel.release.suite()
        );
    }
    Ok(builds.into_iter().map(|(_, package)| package).collect())
}

/// Builds of `kernel` our lists know, newest first.
fn kernel_builds(cache: &Path, kernel: Kernel) -> Result<Vec<(u32, String)>> {
    let release: Release = kernel.release;
    let out = apt(cache, "apt-cache")?
        .args(["pkgnames", release.prefix()])
        .output()
        .context("running apt-cache")?;
    let mut builds: Vec<(u32, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|name| {
            let build = release.build_of(name, kernel.flavour, kernel.arch)?;
            Some((build, name.to_string()))
        })
        .collect();
    builds.sort_by_key(|&(build, _)| std::cmp::Reverse(build));
    Ok(builds)
}

/// Only /boot: the modules (most of the package) are not needed.
fn unpack_vmlinuz(deb: &Path, dest: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dest)?;
    run(Command::new("sh")
        .arg("-c")
        .arg(r#"dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards './boot/vmlinuz-*'"#)
        .arg("sh")
        .arg(deb)
        .arg(dest))?;
    find_vmlinuz(dest)?.with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))
}

fn find_vmlinuz(dir: &Path) -> Result<Option<PathBuf>> {
    let Ok(entries) = fs::read_dir(dir.join("boot")) else {
        return Ok(None);
    };
    for e in entries {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with("vmlinuz-") {
            return Ok(Some(e.path()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn reads_print_uris_lines_in_the_order_asked() {
        let text = "'http://deb.example/pool/main/b/busybox/busybox-static_1%3a1.35.0-4_amd64.deb' \
                    busybox-static_1%3a1.35.0-4_amd64.deb 1000 SHA256:ab\n\
                    'http://deb.example/pool/main/s/seabios/seabios_1.16.2-1_all.deb' \
                    seabios_1.16.2-1_all.deb 2000 SHA256:cd\n";
        let dir = Path::new("/cache/debs");
        let debs = super::parse_print_uris(text, dir, &["seabios", "busybox-static"]).unwrap();
        assert_eq!(debs[0].path, dir.join("seabios_1.16.2-1_all.deb"));
        assert_eq!(debs[0].size, 2000);
        assert_eq!(
            debs[1].path,
            dir.join("busybox-static_1%3a1.35.0-4_amd64.deb")
        );
        assert!(super::parse_print_uris(text, dir, &["qemu-system-x86"]).is_err());
        // An architecture-qualified name matches its architecture's file only.
        assert!(super::parse_print_uris(text, dir, &["busybox-static:arm64"]).is_err());
        let debs = super::parse_print_uris(text, dir, &["busybox-static:amd64"]).unwrap();
        assert_eq!(debs[0].size, 1000);
    }
}
