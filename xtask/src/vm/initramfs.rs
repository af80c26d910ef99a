//! The guest's initramfs: a gzip-compressed newc cpio written here (no cpio crate or tool
//! needed) with static busybox, our binaries and an `/init` that reports on the console.
//!
//! qemu exits 0 even when the guest fails, so `/init` prints [`RESULT_MARKER`] on the console
//! and [`parse_result`] checks it.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::{debian, kernel::Arch, tail};

/// The guest prints `PORT-TRACE-VM-RESULT: ok` (or `PORT-TRACE-VM-RESULT: fail ...`).
const RESULT_MARKER: &str = "PORT-TRACE-VM-RESULT:";

/// Directories every guest has, before any file is added.
const DIRS: &[&str] = &[
    "/bin",
    "/sbin",
    "/usr",
    "/usr/bin",
    "/usr/sbin",
    "/dev",
    "/proc",
    "/sys",
    "/tmp",
    "/run",
    "/etc",
    "/root",
];

/// A gzip-compressed newc initramfs: static busybox (`/bin/busybox`, `/bin/sh`), `/dev/console`,
/// the `files` (host path, absolute guest path; modes kept, parent dirs created) and `/init`
/// containing `init_script` verbatim (start it with `#!/bin/sh`; [`init_script`] writes one).
/// Written to `cache/initramfs-<hash>.cpio.gz`, a name that changes with the contents.
pub fn build_initramfs(
    cache: &Path,
    files: &[(PathBuf, String)],
    init_script: &str,
) -> Result<PathBuf> {
    build_initramfs_for(cache, Arch::X86_64, files, init_script)
}

/// [`build_initramfs`] for an `arch` guest: its busybox, and `files` built for it.
pub fn build_initramfs_for(
    cache: &Path,
    arch: Arch,
    files: &[(PathBuf, String)],
    init_script: &str,
) -> Result<PathBuf> {
    let busybox = fetch_busybox(cache, arch)?;
    let raw = archive(&busybox, files, init_script)?;
    let out = cache.join(format!("initramfs-{:016x}.cpio.gz", fnv1a(&raw)));
    if !out.exists() {
        gzip(raw, &out)?;
    }
    Ok(out)
}

/// busybox-static for `arch` unpacked into `cache/busybox/` (`cache/busybox-arm64/`); returns
/// the binary's path.
fn fetch_busybox(cache: &Path, arch: Arch) -> Result<PathBuf> {
    let (package, dir) = match arch {
        Arch::X86_64 => ("busybox-static".to_string(), "busybox".to_string()),
        other => (
            format!("busybox-static:{}", other.debian()),
            format!("busybox-{}", other.debian()),
        ),
    };
    let debs = debian::download_debs(cache, &[&package])?;
    let root = cache.join(dir);
    debian::extract(&debs[0].path, &root)?;
    Ok(root.join("bin/busybox"))
}

/// The uncompressed cpio archive.
fn archive(busybox: &Path, files: &[(PathBuf, String)], init_script: &str) -> Result<Vec<u8>> {
    let mut cpio = Newc::default();
    for dir in DIRS {
        cpio.dir(dir)?;
    }
    cpio.char_dev("/dev/console", 0o600, 5, 1)?;
    cpio.char_dev("/dev/null", 0o666, 1, 3)?;
    cpio.file(
        "/bin/busybox",
        0o755,
        &fs::read(busybox).with_context(|| busybox.display().to_string())?,
    )?;
    cpio.symlink("/bin/sh", "busybox")?;
    for (host, guest) in files {
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = fs::metadata(host)?.permissions().mode() & 0o7777;
        cpio.file(guest, mode, &data)?;
    }
    cpio.file("/init", 0o755, init_script.as_bytes())?;
    Ok(cpio.finish())
}

/// `gzip -6 -n` of `raw` into `out`, through a temporary file so a cut run leaves no bad cache.
fn gzip(raw: Vec<u8>, out: &Path) -> Result<()> {
    let tmp = out.with_extension("tmp");
    let mut child = Command::new("gzip")
        .args(["-6", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&tmp)?)
        .spawn()
        .context("running gzip")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    // Written from another thread: gzip's output goes to a file, but its input pipe is finite.
    let writer = std::thread::spawn(move || stdin.write_all(&raw));
    let status = child.wait()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer panicked"))?
        .context("writing to gzip")?;
    if !status.success() {
        bail!("gzip failed ({status})");
    }
    fs::rename(&tmp, out)?;
    Ok(())
}

/// A `/init` for [`build_initramfs`]: installs the busybox applets, mounts proc, sysfs,
/// devtmpfs, bpffs, tracefs and debugfs, runs `body` (a shell fragment) under `set -e` in a
/// subshell, prints `PORT-TRACE-VM-RESULT: ok` or `... fail (exit N)`, and powers off.
pub fn init_script(body: &str) -> String {
    format!(
        r#"#!/bin/sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /sys/fs/bpf /sys/kernel/tracing /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
(
set -e
{body}
)
rc=$?
if [ $rc -eq 0 ]; then echo "{RESULT_MARKER} ok"; else echo "{RESULT_MARKER} fail (exit $rc)"; fi
poweroff -f
"#
    )
}

/// `Ok` when the console has `PORT-TRACE-VM-RESULT: ok`; otherwise an error with the console's
/// tail (a `fail` marker, a panic, or nothing).
pub fn parse_result(console: &str) -> Result<()> {
    let result = console
        .lines()
        .filter_map(|l| l.split_once(RESULT_MARKER).map(|(_, r)| r.trim()))
        .next_back();
    match result {
        Some("ok") => Ok(()),
        Some(other) => bail!(
            "guest reported {other:?}; console tail:\n{}",
            tail(console, 40)
        ),
        None => bail!(
            "guest printed no {RESULT_MARKER} line; console tail:\n{}",
            tail(console, 40)
        ),
    }
}

/// FNV-1a: a stable hash of the archive for the cache file's name.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A newc ("070701") cpio archive built in memory; parent directories are added as needed.
#[derive(Default)]
struct Newc {
    out: Vec<u8>,
    ino: u32,
    dirs: Vec<String>,
}

impl Newc {
    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        let name = path.trim_start_matches('/');
        if name.is_empty()
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("bad guest path {path:?}");
        }
        if let Some((parent, _)) = name.rsplit_once('/')
            && !self.dirs.iter().any(|d| d == parent)
        {
            self.dir(parent)?;
        }
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.header(fields, name);
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    /// Magic, the 13 header fields in hex (ino, mode, uid, gid, nlink, mtime, filesize,
    /// devmajor, devminor, rdevmajor, rdevminor, namesize, check), the NUL-ended name, padding.
    fn header(&mut self, fields: [u32; 13], name: &str) {
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let name = path.trim_matches('/').to_string();
        if self.dirs.contains(&name) {
            return Ok(());
        }
        self.entry(&name, 0o040755, (0, 0), &[])?;
        self.dirs.push(name);
        Ok(())
    }

    fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.entry(path, 0o100000 | (perm & 0o7777), (0, 0), data)
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.entry(path, 0o120777, (0, 0), target.as_bytes())
    }

    fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.entry(path, 0o020000 | perm, (major, minor), &[])
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino += 1;
        self.header([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0], "TRAILER!!!");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::{Newc, parse_result};

    #[test]
    fn newc_entries_are_aligned_and_parents_come_first() {
        let mut cpio = Newc::default();
        cpio.file("/a/b", 0o644, b"xyz").unwrap();
        let out = cpio.finish();
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let (dir, file) = (text.find("a\0").unwrap(), text.find("a/b\0").unwrap());
        assert!(dir < file, "the parent dir precedes the file");
        assert!(text.contains("TRAILER!!!\0"));
        assert!(Newc::default().file("/a/../b", 0o644, b"").is_err());
    }

    #[test]
    fn result_marker_decides() {
        assert!(parse_result("boot\nPORT-TRACE-VM-RESULT: ok\n").is_ok());
        assert!(parse_result("PORT-TRACE-VM-RESULT: fail (exit 1)\n").is_err());
        assert!(parse_result("Kernel panic\n").is_err());
    }
}
