//! Running the aarch64 binary on this x86_64 machine: Debian's qemu-user-static (installed when
//! missing) emulates the user-space instructions and passes the system calls to this kernel.
//! Enough for the offline commands (`--help`, `--version`, `analyze`, `plot`); not for eBPF,
//! whose programs qemu-user would hand to this kernel as x86_64 code's.

use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::{arch::Arch, setup};

/// A `Command` that runs `binary` (built for `arch`) here: directly on its own architecture,
/// under `qemu-<arch>-static` otherwise.
pub fn command(arch: Arch, binary: &std::path::Path) -> Result<Command> {
    if arch.is_host() {
        return Ok(Command::new(binary));
    }
    let mut cmd = Command::new(emulator(arch)?);
    cmd.arg(binary);
    Ok(cmd)
}

/// `qemu-aarch64-static` (or the x86_64 one on an arm64 host).
pub fn emulator(arch: Arch) -> Result<PathBuf> {
    setup::install_missing(&format!("qemu-{}-static", arch.name()), "qemu-user-static")
}
