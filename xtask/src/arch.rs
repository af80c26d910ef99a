//! The two architectures port-trace ships for, and each one's names: Rust's target, Debian's
//! architecture (also the OCI platform's), the cross C compiler `ring` needs, and qemu-user.

use std::fmt;

use anyhow::{Result, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The kernel's name (`uname -m`), also the name in our artefacts' file names.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The static Rust target.
    pub fn musl_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// Debian's architecture, which is also the OCI platform's (`linux/amd64`, `linux/arm64`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Whether binaries for it run here without emulation.
    pub fn is_host(self) -> bool {
        std::env::consts::ARCH == self.name()
    }

    /// `--arch x86_64|arm64|all` (repeatable; `aarch64` and `amd64` are accepted too).
    pub fn parse(args: &[String]) -> Result<Vec<Arch>> {
        let mut out = Vec::new();
        for a in args {
            let add: Vec<Arch> = match a.as_str() {
                "all" => Arch::ALL.to_vec(),
                "x86_64" | "amd64" => vec![Arch::X86_64],
                "arm64" | "aarch64" => vec![Arch::Aarch64],
                other => bail!("--arch {other}: not one of x86_64, arm64, all"),
            };
            for arch in add {
                if !out.contains(&arch) {
                    out.push(arch);
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Arch {
    /// Debian's name, as in kernel package names and the matrix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.debian())
    }
}

#[cfg(test)]
mod tests {
    use super::Arch;

    #[test]
    fn names_parse_and_unknown_ones_are_refused() {
        assert_eq!(Arch::parse(&["all".into()]).unwrap(), Arch::ALL);
        assert_eq!(
            Arch::parse(&["arm64".into(), "aarch64".into()]).unwrap(),
            [Arch::Aarch64]
        );
        assert!(Arch::parse(&["riscv64".into()]).is_err());
        assert_eq!(Arch::Aarch64.to_string(), "arm64");
    }
}
