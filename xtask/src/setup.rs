//! `cargo xtask setup`: install what building the eBPF object needs, and what the tests drive.
//! Where it cannot install (not root, or no apt-get) it collects the commands to run by hand.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::shell::{cargo, is_root, step, succeeds, which_path};

pub const NIGHTLY: &str = "nightly";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Programs the tests drive, and the Debian package of each: namespaces, sysctls, dropping
/// privileges, and a real Prometheus with promtool for the exporter tests.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("sysctl", "procps"),
    ("setpriv", "util-linux"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    // The TLS test: a self-signed certificate, and a client that checks it.
    ("openssl", "openssl"),
    ("curl", "curl"),
    // The NAT test: a MASQUERADE rule, and conntrack's own view of the table.
    ("iptables", "iptables"),
    ("conntrack", "conntrack"),
];

/// Installs what is missing; `for_tests` adds the programs the root tests drive.
pub fn setup(for_tests: bool) -> Result<()> {
    let mut apt = Apt::new();
    nightly_with_rust_src()?;
    bpf_linker(&mut apt)?;
    if for_tests {
        test_programs(&mut apt)?;
    }
    apt.finish()
}

/// `bin` from PATH, installed from Debian package `package` with apt-get when missing.
pub fn install_missing(bin: &str, package: &str) -> Result<PathBuf> {
    if let Ok(p) = which_path(bin) {
        return Ok(p);
    }
    let mut apt = Apt::new();
    if !apt.can_install {
        bail!("{bin} is missing and apt-get cannot run here: apt-get install -y {package}");
    }
    apt.install(&[package])?;
    which_path(bin)
}

/// Installs `packages` with apt-get (for files no program on PATH stands for, such as headers).
pub fn install_packages(packages: &[&str]) -> Result<()> {
    let mut apt = Apt::new();
    if !apt.can_install {
        bail!(
            "apt-get cannot run here: apt-get install -y {}",
            packages.join(" ")
        );
    }
    apt.install(packages)
}

/// Adds each of `components` that `toolchain` (None: the active one) lacks.
pub fn ensure_components(toolchain: Option<&str>, components: &[&str]) -> Result<()> {
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--installed"]);
    if let Some(t) = toolchain {
        list.args(["--toolchain", t]);
    }
    let out = list.output().context("run rustup")?;
    let installed = String::from_utf8_lossy(&out.stdout);
    for &component in components {
        // Listed as "rust-src", or with the host triple: "clippy-x86_64-unknown-linux-gnu".
        let has = installed
            .lines()
            .any(|l| l == component || l.starts_with(&format!("{component}-")));
        if has {
            continue;
        }
        let mut add = Command::new("rustup");
        add.args(["component", "add", component]);
        if let Some(t) = toolchain {
            add.args(["--toolchain", t]);
        }
        let name = toolchain.unwrap_or("active");
        step(
            &format!("adding {component} to the {name} toolchain"),
            &mut add,
        )?;
    }
    Ok(())
}

/// Nightly with rust-src, for -Z build-std=core on bpfel-unknown-none.
fn nightly_with_rust_src() -> Result<()> {
    if !succeeds(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--version"])) {
        step(
            "installing the nightly toolchain with rust-src",
            Command::new("rustup").args([
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
        )?;
    }
    ensure_components(Some(NIGHTLY), &["rust-src"])
}

/// bpf-linker, built against LLVM 22 (the nightly's LLVM).
fn bpf_linker(apt: &mut Apt) -> Result<()> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        apt.install(LLVM_PACKAGES)?;
    }
    if apt.manual.is_empty() {
        step(
            "building bpf-linker against LLVM 22 (a few minutes, once)",
            Command::new(cargo())
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", LLVM_PREFIX),
        )
    } else {
        apt.manual.push(format!(
            "LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --locked --no-default-features --features llvm-22"
        ));
        Ok(())
    }
}

/// cargo-fuzz (libFuzzer, run on the nightly toolchain) and the C++ compiler that builds
/// libFuzzer itself, for `cargo xtask fuzz`.
pub fn fuzzing() -> Result<()> {
    install_missing("c++", "g++")?;
    let has = succeeds(Command::new("rustup").args(["run", NIGHTLY, "cargo", "fuzz", "--version"]));
    if has {
        return Ok(());
    }
    step(
        "installing cargo-fuzz (a minute or two, once)",
        Command::new(cargo()).args(["install", "cargo-fuzz", "--locked"]),
    )
}

/// What the root tests drive.
fn test_programs(apt: &mut Apt) -> Result<()> {
    let mut missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(bin, _)| which_path(bin).is_err())
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    apt.install(&missing)
}

/// apt-get where it can run (root and Debian), else the commands for a person to run.
struct Apt {
    can_install: bool,
    updated: bool,
    /// Commands to run by hand, reported together at the end.
    manual: Vec<String>,
}

impl Apt {
    fn new() -> Self {
        Self {
            can_install: Path::new("/usr/bin/apt-get").exists() && is_root(),
            updated: false,
            manual: Vec::new(),
        }
    }

    fn install(&mut self, packages: &[&str]) -> Result<()> {
        if !self.can_install {
            self.manual
                .push(format!("apt-get install -y {}", packages.join(" ")));
            return Ok(());
        }
        if !self.updated {
            step(
                "apt-get update",
                Command::new("apt-get").args(["update", "-q"]),
            )?;
            self.updated = true;
        }
        step(
            &format!("installing {}", packages.join(" ")),
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    }

    fn finish(self) -> Result<()> {
        if !self.manual.is_empty() {
            bail!(
                "cannot install the eBPF toolchain here (needs root and apt-get); run:\n  {}",
                self.manual.join("\n  ")
            );
        }
        Ok(())
    }
}
