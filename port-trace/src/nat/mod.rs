//! Ports chosen by NAT (SNAT/MASQUERADE): conntrack netlink, no eBPF (docs/nat.md).
//!
//! - [`decode`]: ctnetlink messages as plain data (tuples, per-CPU statistics);
//! - [`occupancy`]: the live translations per NAT port space (pure);
//! - [`watch`]: one thread per watched network namespace, reporting [`watch::NatUpdate`]s.

pub mod decode;
pub mod occupancy;
pub mod watch;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use tokio::sync::mpsc;

pub use watch::{NatUpdate, Target, WatchOptions};

use crate::event::{NatRange, NatRangeSource};

/// The range MASQUERADE/SNAT uses without `--to-ports`, for source ports from 1024.
pub const KERNEL_DEFAULT_RANGE: NatRange = NatRange {
    low: 1024,
    high: 65535,
    source: NatRangeSource::KernelDefault,
};

/// How many updates may wait between the watchers and the consumer; past it they are counted
/// as lost, not queued.
pub const CHANNEL: usize = 65536;

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error(
        "conntrack netlink is not available (load nf_conntrack_netlink: `modprobe nf_conntrack_netlink`)"
    )]
    ModuleMissing(#[source] std::io::Error),
    #[error("reading conntrack needs CAP_NET_ADMIN")]
    NoCapability(#[source] std::io::Error),
    #[error("conntrack netlink")]
    Netlink(#[source] std::io::Error),
    #[error("cannot open the namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setns(CLONE_NEWNET)")]
    Setns(#[source] nix::Error),
    #[error("cannot start the NAT watcher thread")]
    Thread(#[source] std::io::Error),
    #[error("the NAT watcher thread died while starting")]
    ThreadDied,
    #[error("conntrack reply: {0}")]
    Decode(String),
}

impl NatError {
    fn from_io(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => NatError::NoCapability(e),
            Some(libc::EOPNOTSUPP | libc::ENOENT | libc::EPROTONOSUPPORT) => {
                NatError::ModuleMissing(e)
            }
            _ => NatError::Netlink(e),
        }
    }
}

/// Whether to watch conntrack for NAT-chosen ports (`--nat`, `nat` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatMode {
    /// Watch where conntrack netlink is available; say so once where it is not.
    #[default]
    Auto,
    /// Watch, or exit with an error.
    On,
    /// Do not watch.
    Off,
}

/// Parses `LOW-HIGH` (the `--to-ports` of the NAT rule).
pub fn parse_nat_ports(s: &str) -> Result<NatRange, String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not LOW-HIGH"))?;
    let low: u16 = lo.trim().parse().map_err(|e| format!("{lo:?}: {e}"))?;
    let high: u16 = hi.trim().parse().map_err(|e| format!("{hi:?}: {e}"))?;
    if low == 0 || low > high {
        return Err(format!("{s:?}: need 1 <= LOW <= HIGH"));
    }
    Ok(NatRange {
        low,
        high,
        source: NatRangeSource::Configured,
    })
}

/// Running watchers: their updates arrive on `rx`; dropping this stops them.
pub struct Watchers {
    pub rx: mpsc::Receiver<NatUpdate>,
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
    tx: mpsc::Sender<NatUpdate>,
    opts: WatchOptions,
    /// Namespaces watched (inodes).
    pub watched: Vec<u32>,
    /// Namespaces tried, watched or not: each is tried once.
    pub tried: std::collections::HashSet<u32>,
}

impl Watchers {
    pub fn new(range: Option<NatRange>, stats_interval: Duration) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL);
        Watchers {
            rx,
            stop: Arc::new(AtomicBool::new(false)),
            handles: Vec::new(),
            tx,
            opts: WatchOptions {
                range: range.unwrap_or(KERNEL_DEFAULT_RANGE),
                stats_interval,
            },
            watched: Vec::new(),
            tried: Default::default(),
        }
    }

    /// Starts watching one namespace (once).
    pub fn watch(&mut self, target: Target) -> Result<(), NatError> {
        if self.watched.contains(&target.netns) {
            return Ok(());
        }
        let netns = target.netns;
        let h = watch::spawn(target, self.opts, self.tx.clone(), self.stop.clone())?;
        self.handles.push(h);
        self.watched.push(netns);
        Ok(())
    }
}

impl Watchers {
    /// Stops every watcher and waits for it; their last updates stay in `rx`.
    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Each thread wakes within its receive timeout, polls the counters once more, ends.
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.stop();
    }
}
