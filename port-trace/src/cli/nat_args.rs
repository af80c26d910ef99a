//! The NAT flags shared by `trace`, `record` and `serve`, and starting the watchers they ask for.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    event::NatRange,
    nat::{NatError, NatMode, Target, Watchers, parse_nat_ports},
    netns::{NetnsRef, locate, netns_path, own_netns, parse_netns},
};

#[derive(Debug, Clone, Args)]
pub struct NatArgs {
    /// Report ports chosen by SNAT/MASQUERADE from conntrack (docs/nat.md) [default: auto].
    #[arg(long, value_enum)]
    pub nat: Option<NatMode>,
    /// The NAT rule's port range (its `--to-ports`), for NAT pressure; without it the
    /// kernel's default for rules without `--to-ports`, 1024-65535.
    #[arg(long, value_name = "LOW-HIGH", value_parser = parse_nat_ports)]
    pub nat_ports: Option<NatRange>,
    /// Also watch NAT in this network namespace (path, `ip netns` name or inode; repeatable):
    /// a gateway namespace that forwards but opens no sockets of its own.
    #[arg(long = "nat-netns", value_name = "PATH|INODE")]
    pub nat_netns: Vec<String>,
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
    fn mode(&self) -> NatMode {
        self.nat.unwrap_or_default()
    }

    /// Starts a watcher per target (None with `--nat off`). In `auto` a namespace that
    /// cannot be watched is skipped with one sentence on stderr; in `on` it is an error.
    pub fn start(&self, targets: &[Target]) -> anyhow::Result<Option<Watchers>> {
        if self.mode() == NatMode::Off {
            return Ok(None);
        }
        let mut w = Watchers::new(self.nat_ports, STATS_INTERVAL);
        let mut all = targets.to_vec();
        for arg in &self.nat_netns {
            all.push(target_of(arg)?);
        }
        self.watch_more(&mut w, &all)?;
        Ok(Some(w))
    }

    /// Adds targets to running watchers, each tried once.
    pub fn watch_more(&self, w: &mut Watchers, targets: &[Target]) -> anyhow::Result<()> {
        for t in targets {
            if w.tried.contains(&t.netns) {
                continue;
            }
            if w.is_full() {
                // Not marked as tried: it is watched at a refresh after a slot frees.
                if !std::mem::replace(&mut w.said_full, true) {
                    eprintln!(
                        "port-trace: watching NAT in {} network namespaces, the most at once; more wait for a slot",
                        crate::nat::MAX_WATCHED
                    );
                }
                break;
            }
            w.tried.insert(t.netns);
            if let Err(e) = w.watch(t.clone()) {
                if self.mode() == NatMode::On {
                    return Err(anyhow::Error::new(e)
                        .context(format!("cannot watch NAT in network namespace {}", t.netns)));
                }
                eprintln!(
                    "port-trace: not watching NAT in network namespace {}: {}",
                    t.netns,
                    sentence(&e)
                );
            }
        }
        Ok(())
    }
}

/// The next NAT update, or never when NAT is not watched.
pub async fn next(w: &mut Option<Watchers>) -> Option<crate::nat::NatUpdate> {
    match w {
        Some(w) => w.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The error and its first cause on one line.
fn sentence(e: &NatError) -> String {
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// Where to watch a namespace `serve` tracks, found from its newest event.
pub fn target_of_event(e: &crate::event::Event) -> Option<Target> {
    let path: Option<PathBuf> = match locate(e.netns, std::slice::from_ref(e), None)? {
        NetnsRef::Path(p) => Some(p),
        NetnsRef::Current => None,
    };
    Some(Target {
        netns: e.netns,
        path,
    })
}
