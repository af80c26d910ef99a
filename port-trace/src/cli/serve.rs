//! `port-trace serve`: the daemon. Attaches, aggregates, serves `/metrics` and `/healthz`.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::{self, FileConfig, ServeConfig},
    exporter::{self, Aggregator, Computed, http, web_config::WebConfig},
    hook_set::HookSet,
    netns::snapshot::snapshot_with_own,
    tracer::{Session, SessionOptions, StopSignals},
};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for /metrics and /healthz [default: 127.0.0.1:9864].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// TOML file with the same settings; flags win. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How many destinations get their own pressure series [default: 10].
    #[arg(long)]
    pub top_destinations: Option<usize>,
    /// How often pressure and patterns are recomputed [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub refresh_interval: Option<String>,
    /// Recent events kept for pattern analysis [default: 100000].
    #[arg(long)]
    pub window_events: Option<usize>,
    /// Cgroup v2 directory to trace [default: the cgroup v2 root].
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Cgroup hook set: also hook every unconnected UDP send (see `trace --udp-send-hooks`).
    #[arg(long)]
    pub udp_send_hooks: bool,
    /// Ring buffer size in KiB [default: 4096].
    #[arg(long)]
    pub ring_kib: Option<u32>,
    /// TLS and basic auth in the Prometheus exporter-toolkit web config format (docs/metrics.md);
    /// re-read on SIGHUP and when it or a file it names changes.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Use this hook set instead of the automatic choice.
    #[arg(long, value_enum)]
    pub hooks: Option<HookSet>,
    #[command(flatten)]
    pub nat: super::nat_args::NatArgs,
}

impl ServeArgs {
    fn as_overrides(&self) -> FileConfig {
        FileConfig {
            listen: self.listen,
            top_destinations: self.top_destinations,
            refresh_interval: self.refresh_interval.clone(),
            window_events: self.window_events,
            cgroup: self.cgroup.clone(),
            udp_send_hooks: self.udp_send_hooks.then_some(true),
            ring_kib: self.ring_kib,
            web_config_file: self.web_config_file.clone(),
            nat: self.nat.nat,
            nat_ports: self.nat.nat_ports.map(|r| format!("{}-{}", r.low, r.high)),
            nat_netns: (!self.nat.nat_netns.is_empty()).then(|| self.nat.nat_netns.clone()),
        }
    }

    fn config(&self) -> anyhow::Result<ServeConfig> {
        let flags = self.as_overrides();
        // Flags get the same checks as the file.
        flags.validate("command line")?;
        let file = match &self.config {
            Some(p) => config::load(p)?,
            None => FileConfig::default(),
        };
        Ok(config::merge(&file, &flags))
    }
}

/// State shared by the drain loop, the refresher and the HTTP server.
struct Shared {
    agg: Mutex<Aggregator>,
    last_drain: Mutex<Instant>,
    stall_after: Duration,
}

impl http::Source for Shared {
    fn metrics(&self) -> String {
        self.agg
            .lock()
            .map(|a| a.metrics.render())
            .unwrap_or_default()
    }

    fn health(&self) -> Result<(), String> {
        let since = self
            .last_drain
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(Duration::MAX);
        if since > self.stall_after {
            return Err(format!(
                "the ring buffer has not been drained for {}s",
                since.as_secs()
            ));
        }
        Ok(())
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config()?;
    // Checked before anything is attached.
    let web = load_web_config(&cfg)?;
    crate::cli::trace::block_on(serve(args, cfg, web))?;
    Ok(ExitCode::SUCCESS)
}

fn load_web_config(cfg: &ServeConfig) -> anyhow::Result<WebConfig> {
    Ok(match &cfg.web_config_file {
        Some(p) => WebConfig::load(p)?,
        None => WebConfig::default(),
    })
}

/// How often the web config and the certificate files are checked for changes (a rotated
/// Kubernetes secret changes them without a SIGHUP).
const WEB_CONFIG_CHECK: Duration = Duration::from_secs(5);

/// The daemon drains this often when the ring buffer is not filling up.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

async fn serve(args: ServeArgs, mut cfg: ServeConfig, web: WebConfig) -> anyhow::Result<()> {
    let mut stop = StopSignals::install()?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut session = Session::start(&SessionOptions {
        hooks: args.hooks,
        cgroup: cfg.cgroup.clone(),
        udp_send_hooks: cfg.udp_send_hooks,
        ring_kib: cfg.ring_kib,
        wakeup_kib: None,
        drain_interval: DRAIN_INTERVAL,
    })?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    // The address really bound: `listen = "127.0.0.1:0"` picks a port.
    let serving = listener.local_addr().unwrap_or(cfg.listen);
    for why in &session.skipped {
        eprintln!("port-trace: falling back: {why}");
    }
    if let Some(limits) = session.limits() {
        eprintln!("port-trace: {limits}");
    }

    let agg = Aggregator::new(cfg.window_events, cfg.top_destinations);
    // NAT: our own namespace now, each namespace events come from as it appears (docs/nat.md).
    let mut nat_agg = exporter::nat::NatAggregator::new(&agg.metrics.registry)
        .context("cannot register the NAT metrics")?;
    let nat_args = super::nat_args::NatArgs {
        nat: Some(cfg.nat),
        nat_ports: cfg.nat_ports,
        nat_netns: cfg.nat_netns.clone(),
    };
    let mut nat = nat_args.start(&[super::nat_args::own_target()])?;
    // Watched for the daemon's whole life: its own namespace and each --nat-netns.
    let pinned: Vec<u32> = nat.as_ref().map(|w| w.watched.clone()).unwrap_or_default();
    let set = session.hook_set();
    agg.metrics
        .set_hooks(&set.to_string(), &set.coverage(&session.kernel));
    let shared = Arc::new(Shared {
        agg: Mutex::new(agg),
        last_drain: Mutex::new(Instant::now()),
        stall_after: Duration::from_secs(10),
    });
    // Loading the programs (BTF above all) freed more than the daemon keeps.
    release_freed_memory();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let scheme = web.scheme();
    let (web_tx, web_rx) = tokio::sync::watch::channel(Arc::new(web));
    let server = tokio::spawn(http::serve(listener, shared.clone(), web_rx, async {
        let _ = stop_rx.await;
    }));
    eprintln!(
        "tracing: {}; serving {scheme}://{serving}/metrics",
        session.describe()
    );
    let mut web_check = tokio::time::interval(WEB_CONFIG_CHECK);
    // What the web config's files looked like at the last (re)load attempt.
    let mut web_seen = web_tx.borrow().stamps();

    let mut refresh = tokio::time::interval(cfg.refresh_interval);
    let mut refreshing: Option<tokio::task::JoinHandle<Computed>> = None;
    loop {
        tokio::select! {
            _ = session.ready() => {}
            _ = refresh.tick(), if refreshing.is_none() => {
                // Reading sysctls and socket tables blocks (setns threads, netlink) and pattern
                // analysis is CPU work: both run off the event loop, which keeps draining.
                let now = session.now_ns();
                if let Ok(input) = shared.agg.lock().map(|mut a| a.refresh_input(now)) {
                    if let Some(w) = &mut nat {
                        // Namespaces no longer tracked are let go (a watcher keeps its
                        // namespace alive); ours and --nat-netns ones stay.
                        let tracked: std::collections::HashSet<u32> =
                            input.newest_per_netns.iter().map(|e| e.netns).collect();
                        for gone in w.retain(|n| tracked.contains(&n) || pinned.contains(&n)) {
                            nat_agg.forget(gone);
                        }
                        let new: Vec<_> = input
                            .newest_per_netns
                            .iter()
                            .filter(|e| !w.tried.contains(&e.netns))
                            .filter_map(super::nat_args::target_of_event)
                            .collect();
                        nat_args.watch_more(w, &new)?;
                    }
                    refreshing = Some(tokio::task::spawn_blocking(move || {
                        let namespaces = snapshot_with_own(&input.newest_per_netns);
                        let mut computed = exporter::compute(input, namespaces);
                        // Who holds each namespace: the `netns` labels' readable companion.
                        computed.netns_owners = crate::attribution::scan_proc();
                        // The socket tables and the analysis are gone by now.
                        release_freed_memory();
                        computed
                    }));
                }
            }
            done = async { refreshing.as_mut().expect("guarded").await }, if refreshing.is_some() => {
                refreshing = None;
                if let (Ok(computed), Ok(mut a)) = (done, shared.agg.lock()) {
                    a.apply(&computed);
                }
            }
            _ = sighup.recv() => {
                reload(&args, &mut cfg, &shared, &mut refresh);
                reload_web_config(&cfg, &web_tx);
                web_seen = web_tx.borrow().stamps();
            }
            _ = web_check.tick() => {
                // A failed reload is reported once, not at every check.
                let now = web_tx.borrow().stamps();
                if now != web_seen {
                    reload_web_config(&cfg, &web_tx);
                    web_seen = web_tx.borrow().stamps();
                }
            }
            _ = stop.recv() => break,
            u = super::nat_args::next(&mut nat) => {
                if let Some(u) = u {
                    nat_agg.apply(&u, crate::netns::snapshot::wall_ns());
                }
            }
        }
        if let Ok(mut a) = shared.agg.lock() {
            let fill = session.drain(|e| a.ingest(e));
            let losses = session.losses();
            a.set_health(losses.lost, losses.unresolved, fill);
        }
        if let Ok(mut t) = shared.last_drain.lock() {
            *t = Instant::now();
        }
    }
    // Stop serving first, then detach (dropping the session closes every link).
    let _ = stop_tx.send(());
    let _ = server.await;
    drop(session);
    drop(nat);
    eprintln!("port-trace: stopped");
    Ok(())
}

/// Hands the heap that the allocator keeps after frees back to the kernel: glibc returns only
/// the top of each arena, so without this the daemon's RSS stays at its peak (after loading,
/// 25 of its 40 MiB were freed heap).
#[cfg(target_env = "gnu")]
fn release_freed_memory() {
    // SAFETY: malloc_trim takes no pointer; it only walks the allocator's own free lists.
    let _ = unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
fn release_freed_memory() {}

/// SIGHUP: re-reads the configuration file; a bad one keeps the running configuration.
fn reload(
    args: &ServeArgs,
    cfg: &mut ServeConfig,
    shared: &Shared,
    refresh: &mut tokio::time::Interval,
) {
    if args.config.is_none() {
        return;
    }
    let new = match args.config() {
        Ok(new) => new,
        Err(e) => {
            eprintln!("port-trace: keeping the old configuration: {e:#}");
            return;
        }
    };
    if new.listen != cfg.listen
        || new.cgroup != cfg.cgroup
        || new.ring_kib != cfg.ring_kib
        || new.udp_send_hooks != cfg.udp_send_hooks
    {
        eprintln!(
            "port-trace: listen, cgroup, ring_kib and udp_send_hooks changes take effect after a restart"
        );
    }
    if let Ok(mut a) = shared.agg.lock() {
        a.top_destinations = new.top_destinations;
        a.set_window(new.window_events);
    }
    if new.refresh_interval != cfg.refresh_interval {
        *refresh = tokio::time::interval(new.refresh_interval);
    }
    *cfg = new;
    eprintln!("port-trace: configuration reloaded");
}

/// Re-reads the web config (TLS, basic auth); a bad one keeps the running settings. New
/// connections get the new TLS settings, every request the new users.
fn reload_web_config(cfg: &ServeConfig, web: &tokio::sync::watch::Sender<Arc<WebConfig>>) {
    match load_web_config(cfg) {
        Ok(new) => {
            // A change of scheme on a running listener would surprise its scrapers.
            if new.scheme() != web.borrow().scheme() {
                eprintln!(
                    "port-trace: keeping the old web config: switching between http and https takes a restart"
                );
                return;
            }
            web.send_replace(Arc::new(new));
            eprintln!("port-trace: web config reloaded");
        }
        Err(e) => eprintln!("port-trace: keeping the old web config: {e:#}"),
    }
}
