//! qemu-system-x86_64 and qemu-system-aarch64 unpacked from bookworm's packages, and one boot
//! of a kernel with an initramfs under TCG.
//!
//! The packages are `qemu-system-x86` (or `qemu-system-arm`), `qemu-system-common` (the x86
//! TCG accel module), `qemu-system-data`, `seabios` (bios-256k.bin, x86 only: the arm `virt`
//! machine boots the kernel directly) and the shared libraries a bookworm host without
//! qemu-system may lack; qemu runs with `LD_LIBRARY_PATH`, `QEMU_MODULE_DIR` and `-L` dirs.
//! Installing qemu-system-* with apt would remove the newer backported qemu-utils, hence this.

use std::{
    ffi::OsString,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{debian, kernel::Arch, tail};

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

/// A qemu-system-x86_64 or -aarch64 unpacked from Debian packages, and what it needs to run.
#[derive(Debug, Clone)]
pub struct Qemu {
    /// The guest's architecture.
    arch: Arch,
    /// `.../usr/bin/qemu-system-x86_64` or `qemu-system-aarch64`.
    binary: PathBuf,
    /// Firmware dirs, each passed as `-L` (qemu's data dir, then seabios).
    bios_dirs: Vec<PathBuf>,
    /// `LD_LIBRARY_PATH` (the unpacked libraries) and `QEMU_MODULE_DIR` (accel-tcg-x86_64.so).
    env: Vec<(String, OsString)>,
}

impl Qemu {
    /// A `Command` for qemu with the environment and `-L` dirs set; add the machine arguments.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        for dir in &self.bios_dirs {
            cmd.arg("-L").arg(dir);
        }
        cmd
    }
}

/// qemu-system-x86_64 from bookworm's packages, unpacked into `cache/qemu/`.
pub fn fetch_qemu(cache: &Path) -> Result<Qemu> {
    fetch_qemu_for(cache, Arch::X86_64)
}

/// The qemu-system for `arch` guests from bookworm's packages, unpacked into `cache/qemu/`
/// (both share it: their packages hold different files).
pub fn fetch_qemu_for(cache: &Path, arch: Arch) -> Result<Qemu> {
    let root = cache.join("qemu");
    let mut packages = match arch {
        Arch::X86_64 => QEMU_PACKAGES.to_vec(),
        Arch::Aarch64 => vec!["qemu-system-arm", "qemu-system-common", "qemu-system-data"],
    };
    packages.extend_from_slice(QEMU_LIB_PACKAGES);
    for deb in debian::download_debs(cache, &packages)? {
        debian::extract(&deb.path, &root)?;
    }
    let libs = [
        root.join("usr/lib/x86_64-linux-gnu"),
        root.join("lib/x86_64-linux-gnu"),
    ];
    let ld_path = std::env::join_paths(libs.iter())?;
    let module_dir = root.join("usr/lib/x86_64-linux-gnu/qemu");
    // x86's TCG is a module in Debian's build (beside KVM); arm's is built into the binary.
    if arch == Arch::X86_64 && !module_dir.join("accel-tcg-x86_64.so").exists() {
        bail!("{} has no accel-tcg-x86_64.so", module_dir.display());
    }
    let (binary, bios_dirs) = match arch {
        Arch::X86_64 => (
            "usr/bin/qemu-system-x86_64",
            vec![root.join("usr/share/qemu"), root.join("usr/share/seabios")],
        ),
        Arch::Aarch64 => (
            "usr/bin/qemu-system-aarch64",
            vec![root.join("usr/share/qemu")],
        ),
    };
    let qemu = Qemu {
        arch,
        binary: root.join(binary),
        bios_dirs,
        env: vec![
            ("LD_LIBRARY_PATH".into(), ld_path),
            ("QEMU_MODULE_DIR".into(), module_dir.into_os_string()),
        ],
    };
    check_libraries(&qemu)?;
    Ok(qemu)
}

/// Reports a missing library by name rather than as a failed boot.
fn check_libraries(qemu: &Qemu) -> Result<()> {
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
            "{} lacks libraries (add their packages to QEMU_LIB_PACKAGES): {missing:?}",
            qemu.binary.display()
        );
    }
    Ok(())
}

/// Boot `kernel` + `initramfs` (TCG, q35, 1 GiB, 2 vCPUs, serial console on stdout) and return
/// the console text (`\r` removed). Errors when qemu fails or `timeout` passes (qemu is killed;
/// the error carries the console's tail). qemu exits when the guest powers off or panics
/// (`panic=-1` + `-no-reboot`); whether the guest succeeded is for
/// [`super::initramfs::parse_result`] to say.
pub fn boot(q: &Qemu, kernel: &Path, initramfs: &Path, timeout: Duration) -> Result<String> {
    let mut child = machine(q, kernel, initramfs)
        .spawn()
        .with_context(|| format!("starting {}", q.binary.display()))?;
    let console = Capture::start(child.stdout.take().context("qemu stdout")?);
    let stderr = Capture::start(child.stderr.take().context("qemu stderr")?);
    let status = wait_or_kill(&mut child, timeout)?;
    let text = console.finish();
    let stderr = stderr.finish();
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

/// The qemu command line: q35 (x86_64) or virt with the `max` CPU (arm64) under TCG, no NIC,
/// the kernel's console on the serial port (ttyS0, or the virt machine's PL011 ttyAMA0).
fn machine(q: &Qemu, kernel: &Path, initramfs: &Path) -> Command {
    let mut cmd = q.command();
    let console = match q.arch {
        Arch::X86_64 => {
            cmd.args(["-machine", "q35"]);
            "ttyS0"
        }
        Arch::Aarch64 => {
            // pauth-impdef: qemu's own pointer-authentication hash; the architected one (QARMA)
            // is several times slower to emulate and the guest cannot tell.
            cmd.args(["-machine", "virt", "-cpu", "max,pauth-impdef=on"]);
            "ttyAMA0"
        }
    };
    cmd.args(["-accel", "tcg", "-m", "1024", "-smp", "2"])
        .args(["-nographic", "-no-reboot"])
        // No NIC: q35's default e1000e wants efi-e1000e.rom (ipxe-qemu), and the guest needs none.
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("console={console} panic=-1 quiet"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// `Some(status)` when qemu exits in time, `None` when it was killed at `timeout`.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pipe read to its end on its own thread, so a full pipe never stalls qemu.
struct Capture {
    reader: JoinHandle<()>,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Capture {
    fn start(mut pipe: impl Read + Send + 'static) -> Self {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = bytes.clone();
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]);
            }
        });
        Self { reader, bytes }
    }

    /// Waits for the end of the pipe; the text as [`clean`] leaves it.
    fn finish(self) -> String {
        let _ = self.reader.join();
        clean(&self.bytes.lock().unwrap_or_else(|e| e.into_inner()))
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

#[cfg(test)]
mod tests {
    #[test]
    fn clean_drops_carriage_returns_and_escapes() {
        assert_eq!(
            super::clean(b"\x1bc\x1b[2J\x1b[01;01Hboot\r\nok\r\n"),
            "boot\nok\n"
        );
    }
}
