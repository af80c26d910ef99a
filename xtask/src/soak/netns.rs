//! The network namespaces the soak makes: loopback up and holding 192.0.2.1/24 (TEST-NET-1: UDP
//! sent to the rest of that subnet goes out on loopback and is dropped, inside the namespace),
//! deleted when dropped.

use std::{fs::File, os::fd::AsRawFd, process::Command};

use anyhow::{Context, Result, bail};

/// `ip netns` names start with this and the xtask's pid, so leftovers are recognisable.
pub fn name(kind: &str, n: u64) -> String {
    format!("pt-soak-{}-{kind}{n}", std::process::id())
}

/// A namespace made with `ip netns add`; `ip netns del` when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: String) -> Result<Self> {
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", "192.0.2.1/24", "dev", "lo"],
        ] {
            let mut all = vec!["-n", ns.name.as_str()];
            all.extend_from_slice(args);
            ip(&all)?;
        }
        Ok(ns)
    }

    /// `net.ipv4.ip_local_port_range` inside the namespace.
    pub fn set_port_range(&self, low: u16, high: u16) -> Result<()> {
        let value = format!("net.ipv4.ip_local_port_range={low} {high}");
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name, "sysctl", "-qw", &value])
            .status()
            .context("run ip netns exec sysctl")?;
        if !status.success() {
            bail!("sysctl -w {value} in {} failed", self.name);
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Moves the calling thread (only it: network namespaces are per thread) into `name`.
pub fn enter(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let f = File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: the fd is open for the call's duration; setns only changes this thread's netns.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
