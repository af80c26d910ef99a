//! The network namespace the loops run in: `ip netns add`, loopback up, deleted on drop. The
//! loops talk only to 127.0.0.1 inside it, so nothing leaves the namespace.

use std::{os::unix::fs::MetadataExt, process::Command};

use anyhow::{Context, Result, bail};

pub struct Netns {
    pub name: String,
    /// What `trace` prints as an event's `netns`.
    pub inode: u64,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("pt-bench-{}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        // Dropped from here on, so a failure below still deletes it.
        let mut ns = Netns { name, inode: 0 };
        ns.inode = std::fs::metadata(format!("/run/netns/{}", ns.name))
            .context("the namespace ip made")?
            .ino();
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
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
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
