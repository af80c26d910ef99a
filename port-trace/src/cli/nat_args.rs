//! The NAT flags shared by `trace`, `record` and `serve`, and starting the watchers they ask for.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use crate::{
    event::NatRange,
    nat::{NatError, Target, Watchers, parse_nat_ports},
    netns::{NetnsRef, locate, netns_path, own_netns, parse_netns},
};

/// Whether to watch conntrack for NAT-chosen ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum NatMode {
    /// Watch where conntrack netlink is available; say so once where it is not.
    #[default]
    Auto,
    /// Watch, or exit with an error.
    On,
    /// Do not watch.
    Off,
}

#[derive(Debug, Clone, Args)]
pub struct NatArgs {
    /// Report ports chosen by SNAT/MASQUERADE from conntrack (docs/nat.md).
    #[arg(long, value_enum, default_value_t = NatMode::Auto)]
    pub nat: NatMode,
    /// The NAT rule's port range (its `--to-ports`), for NAT pressure; without it the
    /// kernel's default for rules without `--to-ports`, 1024-65535.
    #[arg(long, value_name = "LOW-HIGH", value_parser = parse_nat_ports)]
    pub nat_ports: Option<NatRange>,
}

/// How often the watchers read conntrack's statistics.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The namespace `--netns ARG` names, as a watcher target.
pub fn target_of(arg: &str) -> anyhow::Result<Target> {
    let netns = parse_netns(arg)?;
    let path = match netns_path(arg) {
        Some(p) => Some(p),
        None => match locate(netns, &[], None) {
            Some(NetnsRef::Path(p)) => Some(p),
            Some(NetnsRef::Current) => None,
            None => anyhow::bail!("--netns {arg}: no path leads into namespace {netns}"),
        },
    };
    Ok(Target { netns, path })
}

/// Our own namespace, as a watcher target.
pub fn own_target() -> Target {
    Target {
        netns: own_netns().unwrap_or(0),
        path: None,
    }
}

impl NatArgs {
    /// Starts a watcher per target. In `auto` a namespace that cannot be watched is skipped
    /// with one sentence on stderr; in `on` it is an error.
    pub fn start(&self, targets: &[Target]) -> anyhow::Result<Option<Watchers>> {
        if self.nat == NatMode::Off {
            return Ok(None);
        }
        let mut w = Watchers::new(self.nat_ports, STATS_INTERVAL);
        for t in targets {
            if let Err(e) = w.watch(t.clone()) {
                if self.nat == NatMode::On {
                    return Err(anyhow::Error::new(e).context(format!(
                        "cannot watch NAT in network namespace {}",
                        t.netns
                    )));
                }
                eprintln!(
                    "port-trace: not watching NAT in network namespace {}: {}",
                    t.netns,
                    sentence(&e)
                );
            }
        }
        Ok((!w.watched.is_empty()).then_some(w))
    }
}

/// The error and its first cause on one line.
fn sentence(e: &NatError) -> String {
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// A namespace file of a tracked namespace, for `serve`'s watchers.
pub fn target_for_inode(netns: u32, path: Option<PathBuf>) -> Target {
    Target { netns, path }
}
