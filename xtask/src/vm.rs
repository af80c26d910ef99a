//! Prototype VM runner for a future `cargo xtask vm-test`: boot a stock Debian 6.1 kernel under
//! qemu (TCG, no KVM) with a busybox initramfs, run our static binaries there, and read the
//! result back from the serial console.
//!
//! Everything comes from the Debian archive with `apt-get download` and is unpacked into a
//! cache directory (nothing is installed on the host):
//!
//! - the kernel: `linux-image-6.1.0-N-{cloud-,}amd64-unsigned`, newest ABI `N` the apt lists know,
//!   falling back to older ones when a download fails (Debian bumps the ABI and drops old ones);
//!   only `/boot/vmlinuz-*` is unpacked (no modules needed: console on ttyS0, BTF, kprobes and
//!   BPF trampolines are built in);
//! - qemu: `qemu-system-x86` + `qemu-system-common` (TCG accel module) + `qemu-system-data`,
//!   `seabios` (bios-256k.bin) and the shared libraries a bookworm host without qemu-system may
//!   lack, run with `LD_LIBRARY_PATH`, `QEMU_MODULE_DIR` and two `-L` dirs. Installing
//!   qemu-system-x86 with apt would remove the newer backported qemu-utils, hence this;
//! - busybox: `busybox-static`.
//!
//! The initramfs is a gzip-compressed newc cpio written here (no cpio crate or tool needed).
//! qemu exits 0 even when the guest fails, so the guest prints [`RESULT_MARKER`] on the console
//! and [`parse_result`] checks it.

use std::{
    ffi::OsString,
    fs,
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The guest prints `PORT-TRACE-VM-RESULT: ok` (or `PORT-TRACE-VM-RESULT: fail ...`).
pub const RESULT_MARKER: &str = "PORT-TRACE-VM-RESULT:";

/// Libraries qemu-system-x86 7.2 (bookworm) links that a host with only qemu-utils may lack.
/// Checked afterwards with `ldd`, so a missing one is reported by soname.
const QEMU_LIB_PACKAGES: &[&str] = &[
    "libcapstone4",
    "libfdt1",
    "libpmem1",
    "libndctl6",
    "libdaxctl1",
    "librdmacm1",
    "libibverbs1",
    "libnl-3-200",
    "libnl-route-3-200",
    "libslirp0",
    "libvdeplug2",
];
const QEMU_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
];

/// A qemu-system-x86_64 unpacked from Debian packages, and what it needs to run.
#[derive(Debug, Clone)]
pub struct Qemu {
    /// `.../usr/bin/qemu-system-x86_64`.
    pub binary: PathBuf,
    /// Firmware dirs, each passed as `-L` (qemu's data dir, then seabios).
    pub bios_dirs: Vec<PathBuf>,
    /// `LD_LIBRARY_PATH` (the unpacked libraries) and `QEMU_MODULE_DIR` (accel-tcg-x86_64.so).
    pub env: Vec<(String, OsString)>,
}

impl Qemu {
    /// A `Command` for qemu with the environment and `-L` dirs set; add the machine arguments.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        for dir in &self.bios_dirs {
            cmd.arg("-L").arg(dir);
        }
        cmd
    }
}

/// One `.deb` in the cache.
#[derive(Debug, Clone)]
#[allow(
    dead_code,
    reason = "package and downloaded are for callers that report downloads"
)]
pub struct Deb {
    pub package: String,
    pub path: PathBuf,
    pub size: u64,
    /// False when it was already in the cache.
    pub downloaded: bool,
}

/// Download (or find in `cache/debs`) the given packages' `.deb` files. Uses
/// `apt-get download --print-uris` to learn each candidate's file name and size, so a cached
/// file of the right name and size is reused without network access.
pub fn download_debs(cache: &Path, packages: &[&str]) -> Result<Vec<Deb>> {
    let dir = cache.join("debs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut debs = Vec::new();
    let mut missing = Vec::new();
    if packages.is_empty() {
        return Ok(debs);
    }
    // One call for all (apt-get takes about a second to start).
    let out = Command::new("apt-get")
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
    // 'http://.../pool/...deb' NAME_VERSION_ARCH.deb SIZE SHA256:...  (the epoch's ':' is "%3a",
    // as in the file apt-get download writes)
    let text = String::from_utf8_lossy(&out.stdout);
    for &package in packages {
        let prefix = format!("{package}_");
        let line = text
            .lines()
            .filter(|l| l.starts_with('\''))
            .find(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .with_context(|| format!("apt-get download --print-uris: no URI for {package}"))?;
        let mut fields = line.split_whitespace().skip(1);
        let (Some(name), Some(size)) = (fields.next(), fields.next()) else {
            bail!("unexpected apt-get --print-uris line: {line}");
        };
        let size: u64 = size.parse().with_context(|| format!("size in {line}"))?;
        let path = dir.join(name);
        let cached = fs::metadata(&path)
            .map(|m| m.len() == size)
            .unwrap_or(false);
        if !cached {
            missing.push(package);
        }
        debs.push(Deb {
            package: package.to_string(),
            path,
            size,
            downloaded: !cached,
        });
    }
    if !missing.is_empty() {
        let status = Command::new("apt-get")
            .arg("download")
            .arg("-q")
            // Downloading into a root-owned dir: don't try (and warn about) the _apt sandbox.
            .args(["-o", "APT::Sandbox::User=root"])
            .args(&missing)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .status()
            .context("running apt-get download")?;
        if !status.success() {
            bail!("apt-get download {} failed ({status})", missing.join(" "));
        }
    }
    for deb in &debs {
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
    }
    Ok(debs)
}

/// `dpkg -x deb dest` (a no-op when `dest/.done-<file name>` exists).
fn extract(deb: &Path, dest: &Path) -> Result<()> {
    let stamp = dest.join(format!(
        ".done-{}",
        deb.file_name().unwrap().to_string_lossy()
    ));
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

/// ABI numbers `N` of `linux-image-6.1.0-N-{flavour}amd64-unsigned` the apt lists know, newest
/// first.
fn kernel_abis(flavour_infix: &str) -> Result<Vec<(u32, String)>> {
    let out = Command::new("apt-cache")
        .args(["pkgnames", "linux-image-6.1.0-"])
        .output()
        .context("running apt-cache")?;
    let suffix = format!("-{flavour_infix}amd64-unsigned");
    let mut abis: Vec<(u32, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|name| {
            let abi = name
                .strip_prefix("linux-image-6.1.0-")?
                .strip_suffix(&suffix)?;
            // Digits only: this also excludes "-rt-" and "-cloud-" when asking for generic.
            Some((abi.parse().ok()?, name.to_string()))
        })
        .collect();
    abis.sort_by_key(|&(abi, _)| std::cmp::Reverse(abi));
    Ok(abis)
}

/// The newest Debian 6.1 kernel of `flavour` ("cloud", or "" for generic), unpacked into
/// `cache/kernel/<package>/`; returns the `vmlinuz` path. Falls back to older ABIs when the
/// newest cannot be downloaded, and runs `apt-get update` once when the lists know none.
pub fn fetch_kernel(cache: &Path, flavour: &str) -> Result<PathBuf> {
    let infix = if flavour.is_empty() {
        String::new()
    } else {
        format!("{flavour}-")
    };
    let mut abis = kernel_abis(&infix)?;
    if abis.is_empty() {
        run(Command::new("apt-get")
            .args(["update", "-q"])
            .stdout(Stdio::null()))?;
        abis = kernel_abis(&infix)?;
    }
    if abis.is_empty() {
        bail!("apt knows no linux-image-6.1.0-N-{infix}amd64-unsigned (is bookworm in sources?)");
    }
    let mut errors = Vec::new();
    for (_, package) in abis.iter().take(3) {
        let dest = cache.join("kernel").join(package);
        if let Some(vmlinuz) = find_vmlinuz(&dest)? {
            return Ok(vmlinuz);
        }
        match download_debs(cache, &[package]) {
            Ok(debs) => {
                // Only /boot: the modules (most of the package) are not needed.
                fs::create_dir_all(&dest)?;
                run(Command::new("sh").arg("-c").arg(
                    r#"dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards './boot/vmlinuz-*'"#,
                ).arg("sh").arg(&debs[0].path).arg(&dest))?;
                return find_vmlinuz(&dest)?
                    .with_context(|| format!("no boot/vmlinuz-* in {}", debs[0].path.display()));
            }
            Err(e) => errors.push(format!("{package}: {e:#}")),
        }
    }
    bail!(
        "no 6.1 {flavour} kernel could be fetched: {}",
        errors.join("; ")
    )
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

/// qemu-system-x86_64 from bookworm's packages, unpacked into `cache/qemu/`.
pub fn fetch_qemu(cache: &Path) -> Result<Qemu> {
    let root = cache.join("qemu");
    let mut packages = QEMU_PACKAGES.to_vec();
    packages.extend_from_slice(QEMU_LIB_PACKAGES);
    for deb in download_debs(cache, &packages)? {
        extract(&deb.path, &root)?;
    }
    let binary = root.join("usr/bin/qemu-system-x86_64");
    let libs = [
        root.join("usr/lib/x86_64-linux-gnu"),
        root.join("lib/x86_64-linux-gnu"),
    ];
    let ld_path = std::env::join_paths(libs.iter())?;
    let module_dir = root.join("usr/lib/x86_64-linux-gnu/qemu");
    if !module_dir.join("accel-tcg-x86_64.so").exists() {
        bail!("{} has no accel-tcg-x86_64.so", module_dir.display());
    }
    let qemu = Qemu {
        binary,
        bios_dirs: vec![root.join("usr/share/qemu"), root.join("usr/share/seabios")],
        env: vec![
            ("LD_LIBRARY_PATH".into(), ld_path),
            ("QEMU_MODULE_DIR".into(), module_dir.into_os_string()),
        ],
    };
    // Report a missing library by name rather than as a failed boot.
    let out = Command::new("ldd")
        .arg(&qemu.binary)
        .envs(qemu.env.iter().map(|(k, v)| (k, v)))
        .output()
        .context("running ldd")?;
    let missing: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("not found"))
        .map(|l| l.trim().to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "qemu-system-x86_64 lacks libraries (add their packages to QEMU_LIB_PACKAGES): {missing:?}"
        );
    }
    Ok(qemu)
}

/// A gzip-compressed newc initramfs: static busybox (`/bin/busybox`, `/bin/sh`), `/dev/console`,
/// the `files` (host path, absolute guest path; modes kept, parent dirs created) and `/init`
/// containing `init_script` verbatim (start it with `#!/bin/sh`; [`init_script`] writes one).
/// Written to `cache/initramfs-<hash>.cpio.gz`, a name that changes with the contents.
pub fn build_initramfs(
    cache: &Path,
    files: &[(PathBuf, &str)],
    init_script: &str,
) -> Result<PathBuf> {
    let debs = download_debs(cache, &["busybox-static"])?;
    let bb_root = cache.join("busybox");
    extract(&debs[0].path, &bb_root)?;
    let busybox = bb_root.join("bin/busybox");

    let mut cpio = Newc::default();
    for dir in [
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
    ] {
        cpio.dir(dir)?;
    }
    cpio.char_dev("/dev/console", 0o600, 5, 1)?;
    cpio.char_dev("/dev/null", 0o666, 1, 3)?;
    cpio.file(
        "/bin/busybox",
        0o755,
        &fs::read(&busybox).with_context(|| busybox.display().to_string())?,
    )?;
    cpio.symlink("/bin/sh", "busybox")?;
    for (host, guest) in files {
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = fs::metadata(host)?.permissions().mode() & 0o7777;
        cpio.file(guest, mode, &data)?;
    }
    cpio.file("/init", 0o755, init_script.as_bytes())?;
    let raw = cpio.finish();

    let out = cache.join(format!("initramfs-{:016x}.cpio.gz", fnv1a(&raw)));
    if !out.exists() {
        let tmp = out.with_extension("tmp");
        let mut child = Command::new("gzip")
            .args(["-6", "-n", "-c"])
            .stdin(Stdio::piped())
            .stdout(fs::File::create(&tmp)?)
            .spawn()
            .context("running gzip")?;
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&raw));
        let status = child.wait()?;
        writer.join().unwrap().context("writing to gzip")?;
        if !status.success() {
            bail!("gzip failed ({status})");
        }
        fs::rename(&tmp, &out)?;
    }
    Ok(out)
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

/// Boot `kernel` + `initramfs` (TCG, q35, 1 GiB, 2 vCPUs, serial console on stdout) and return
/// the console text (`\r` removed). Errors when qemu fails or `timeout` passes (qemu is killed;
/// the error carries the console's tail). qemu exits when the guest powers off or panics
/// (`panic=-1` + `-no-reboot`); that the guest succeeded is for [`parse_result`] to say.
pub fn boot(q: &Qemu, kernel: &Path, initramfs: &Path, timeout: Duration) -> Result<String> {
    let mut cmd = q.command();
    cmd.args([
        "-machine", "q35", "-accel", "tcg", "-m", "1024", "-smp", "2",
    ])
    .args(["-nographic", "-no-reboot"])
    // No NIC: q35's default e1000e wants efi-e1000e.rom (ipxe-qemu), and the guest needs none.
    .args(["-nic", "none"])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initramfs)
    .args(["-append", "console=ttyS0 panic=-1 quiet"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", q.binary.display()))?;
    let console = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    for (mut pipe, buf) in [
        (
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            console.clone(),
        ),
        (
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Arc::new(Mutex::new(Vec::new())),
        ),
    ] {
        let b = buf.clone();
        readers.push((
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    b.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            }),
            buf,
        ));
    }
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut outputs = Vec::new();
    for (handle, buf) in readers {
        let _ = handle.join();
        outputs.push(clean(&buf.lock().unwrap()));
    }
    let stderr = outputs.pop().unwrap();
    let text = outputs.pop().unwrap();
    match status {
        None => bail!(
            "qemu killed after {timeout:?}; console tail:\n{}\nstderr: {}",
            tail(&text, 40),
            stderr.trim()
        ),
        Some(s) if !s.success() => {
            bail!(
                "qemu failed ({s}): {}\nconsole tail:\n{}",
                stderr.trim(),
                tail(&text, 40)
            )
        }
        Some(_) => Ok(text),
    }
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

/// Lossy UTF-8 without `\r` and the terminal escapes SeaBIOS prints.
fn clean(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\x1b' => {
                // ESC c, or ESC [ params final-byte.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    while let Some(&p) = chars.peek() {
                        chars.next();
                        if ('@'..='~').contains(&p) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

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
        self.out.extend_from_slice(b"070701");
        for f in fields {
            write!(self.out, "{f:08x}")?;
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
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
        self.out.extend_from_slice(b"070701");
        let fields = [0u32, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0];
        for f in fields {
            let _ = write!(self.out, "{f:08x}");
        }
        self.out.extend_from_slice(b"TRAILER!!!\0");
        self.pad();
        self.out
    }
}
