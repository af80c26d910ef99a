//! Network namespaces the xtask's bench and soak make with `ip netns add`: loopback up,
//! deleted when dropped. Names start with `pt-<owner>-<xtask pid>-`, so leftovers are
//! recognisable.

use std::{fs::File, os::fd::AsRawFd, os::unix::fs::MetadataExt, process::Command};

use anyhow::{Context, Result, bail};

/// A namespace made with `ip netns add`; `ip netns del` when dropped.
pub struct Netns {
    pub name: String,
    /// What `trace` prints as an event's `netns`.
    pub inode: u64,
}

impl Netns {
    /// `pt-<owner>-<pid>-<tag>`, loopback up.
    pub fn create(owner: &str, tag: &str) -> Result<Self> {
        let name = format!("pt-{owner}-{}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        // Dropped from here on, so a failure below still deletes it.
        let mut ns = Netns { name, inode: 0 };
        ns.inode = std::fs::metadata(format!("/run/netns/{}", ns.name))
            .context("the namespace ip made")?
            .ino();
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// An address on the namespace's loopback, e.g. `192.0.2.1/24`.
    pub fn add_loopback_address(&self, cidr: &str) -> Result<()> {
        self.ip(&["addr", "add", cidr, "dev", "lo"])
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

    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
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
