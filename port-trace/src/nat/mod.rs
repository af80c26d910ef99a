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

/// Most namespaces watched at once: each costs a thread, two netlink sockets and the
/// namespace's file. Past it, a namespace is watched when a slot frees.
pub const MAX_WATCHED: usize = 64;

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

/// One running watcher.
struct Running {
    netns: u32,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl Running {
    /// Asks the thread to end without waiting for it: it ends within its receive timeout,
    /// and the serve loop that lets namespaces go must not stall meanwhile.
    fn signal(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // The thread wakes within its receive timeout, polls the counters once more, ends.
        let _ = self.handle.join();
    }
}

/// Running watchers: their updates arrive on `rx`; dropping this stops them.
pub struct Watchers {
    pub rx: mpsc::Receiver<NatUpdate>,
    running: Vec<Running>,
    tx: mpsc::Sender<NatUpdate>,
    opts: WatchOptions,
    /// Namespaces watched (inodes).
    pub watched: Vec<u32>,
    /// Namespaces tried, watched or not: each is tried once.
    pub tried: std::collections::HashSet<u32>,
    /// Whether reaching [`MAX_WATCHED`] was said (it is said once).
    pub said_full: bool,
}

impl Watchers {
    pub fn new(range: Option<NatRange>, stats_interval: Duration) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL);
        Watchers {
            rx,
            running: Vec::new(),
            tx,
            opts: WatchOptions {
                range: range.unwrap_or(KERNEL_DEFAULT_RANGE),
                stats_interval,
            },
            watched: Vec::new(),
            tried: Default::default(),
            said_full: false,
        }
    }

    /// Whether [`MAX_WATCHED`] namespaces are watched already.
    pub fn is_full(&self) -> bool {
        self.running.len() >= MAX_WATCHED
    }

    /// Starts watching one namespace (once).
    pub fn watch(&mut self, target: Target) -> Result<(), NatError> {
        if self.watched.contains(&target.netns) {
            return Ok(());
        }
        let netns = target.netns;
        let stop = Arc::new(AtomicBool::new(false));
        let handle = watch::spawn(target, self.opts, self.tx.clone(), stop.clone())?;
        self.running.push(Running {
            netns,
            stop,
            handle,
        });
        self.watched.push(netns);
        Ok(())
    }

    /// Stops watching the namespaces `keep` refuses, and forgets that they were tried (a
    /// namespace that comes back is watched again); returns them. A watcher's sockets keep
    /// its namespace alive, so one that is no longer tracked must go.
    pub fn retain(&mut self, keep: impl Fn(u32) -> bool) -> Vec<u32> {
        let (kept, gone): (Vec<Running>, Vec<Running>) =
            self.running.drain(..).partition(|r| keep(r.netns));
        self.running = kept;
        let gone: Vec<u32> = gone
            .into_iter()
            .map(|r| {
                let n = r.netns;
                r.signal();
                n
            })
            .collect();
        self.watched.retain(|n| !gone.contains(n));
        self.tried.retain(|n| keep(*n));
        gone
    }

    /// Stops every watcher and waits for it; their last updates stay in `rx`.
    pub fn stop(&mut self) {
        for r in &self.running {
            r.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        for r in self.running.drain(..) {
            r.stop();
        }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.stop();
    }
}
