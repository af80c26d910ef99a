//! `port-trace serve`: the daemon. Attaches, aggregates, serves `/metrics` and `/healthz`.

use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use port_trace_common::EVENT_SIZE;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    config::{self, FileConfig, ServeConfig},
    event::{Clock, decode},
    exporter::{self, Aggregator, Computed, http},
    hooks::{self, HookSetName},
    loader::{LoadError, LoadOptions},
    pressure::{NetnsRef, dump_sockets, read_range},
    probe::KernelSupport,
    recording,
    report::NetnsState,
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
    /// How often pressure and patterns are recomputed [default: 15s].
    #[arg(long, value_name = "DURATION")]
    pub refresh_interval: Option<String>,
    /// Recent events kept for pattern analysis [default: 100000].
    #[arg(long)]
    pub window_events: Option<usize>,
    /// Cgroup v2 directory to trace [default: the cgroup v2 root].
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Ring buffer size in KiB [default: 4096].
    #[arg(long)]
    pub ring_kib: Option<u32>,
    /// Use this hook set instead of the automatic choice.
    #[arg(long, value_enum)]
    pub hooks: Option<HookSetName>,
}

impl ServeArgs {
    fn as_overrides(&self) -> FileConfig {
        FileConfig {
            listen: self.listen,
            top_destinations: self.top_destinations,
            refresh_interval: self.refresh_interval.clone(),
            window_events: self.window_events,
            cgroup: self.cgroup.clone(),
            ring_kib: self.ring_kib,
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

/// Range and sockets of every namespace seen recently, plus our own.
fn snapshot(events: &[crate::event::Event]) -> Vec<NetnsState> {
    let mut out = recording::snapshot(events, None);
    if let Ok(own) = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino() as u32)
        && !out.iter().any(|n| n.netns == own)
    {
        out.push(NetnsState {
            netns: own,
            range: read_range(&NetnsRef::Current).ok(),
            sockets: dump_sockets(&NetnsRef::Current).ok(),
            note: None,
        });
    }
    out
}

/// CLOCK_BOOTTIME now, the clock the kernel stamps events with.
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config()?;
    crate::cli::trace::block_on(serve(args, cfg))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs, mut cfg: ServeConfig) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let k = KernelSupport::probe(true);
    if !k.root.ok {
        bail!(LoadError::NotRoot);
    }
    let hook_set = hooks::choose(&k, args.hooks).map_err(|reasons| {
        let why: Vec<String> = reasons.iter().map(|(h, w)| format!("{h}: {w}")).collect();
        anyhow::anyhow!("no usable hook set on this kernel ({})", why.join("; "))
    })?;
    let cgroup = cfg
        .cgroup
        .clone()
        .or_else(|| k.cgroup2.clone())
        .context("no cgroup v2 mount found; mount one or pass --cgroup")?;
    let ring_bytes = cfg.ring_kib * 1024;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let (mut tracer, skipped) = crate::loader::start_first(
        &k,
        &hooks::candidates(&k, args.hooks),
        &LoadOptions {
            hook_set,
            ring_bytes,
            wakeup_bytes: ring_bytes as u64 / 4,
            cgroup: cgroup.clone(),
        },
    )?;
    for why in &skipped {
        eprintln!("port-trace: falling back: {why}");
    }
    let hook_set = tracer.hook_set;

    let agg = Aggregator::new(cfg.window_events, cfg.top_destinations);
    agg.metrics
        .set_hooks(&hook_set.to_string(), &hook_set.coverage(&k));
    let drain_interval = Duration::from_millis(100);
    let shared = Arc::new(Shared {
        agg: Mutex::new(agg),
        last_drain: Mutex::new(Instant::now()),
        stall_after: Duration::from_secs(10),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, shared.clone(), async {
        let _ = stop_rx.await;
    }));
    eprintln!(
        "tracing: hook set {hook_set} ({} programs on {}); serving http://{}/metrics",
        tracer.attached.len(),
        cgroup.display(),
        cfg.listen
    );

    let clock = Clock::now();
    let dup = nix::unistd::dup(tracer.ring_fd()).context("cannot duplicate the ring buffer fd")?;
    // SAFETY: `dup` is an owned descriptor that nothing else registers or closes.
    let ring_fd = unsafe { AsyncFd::register(dup) }
        .map_err(|e| anyhow::anyhow!("cannot poll the ring buffer: {e}"))?;
    let mut tick = tokio::time::interval(drain_interval);
    let mut refresh = tokio::time::interval(cfg.refresh_interval);
    let mut refreshing: Option<tokio::task::JoinHandle<Computed>> = None;

    loop {
        tokio::select! {
            guard = ring_fd.readable() => { if let Ok(mut g) = guard { g.clear_ready(); } }
            _ = tick.tick() => {}
            _ = refresh.tick(), if refreshing.is_none() => {
                // Reading sysctls and socket tables blocks (setns threads, netlink) and pattern
                // analysis is CPU work: both run off the event loop, which keeps draining.
                let now = clock.wall_ns(boot_ns());
                if let Ok(input) = shared.agg.lock().map(|mut a| a.refresh_input(now)) {
                    refreshing = Some(tokio::task::spawn_blocking(move || {
                        let namespaces = snapshot(&input.newest_per_netns);
                        exporter::compute(input, namespaces)
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
                match &args.config {
                    Some(_) => match args.config() {
                        Ok(new) => {
                            if new.listen != cfg.listen || new.cgroup != cfg.cgroup || new.ring_kib != cfg.ring_kib {
                                eprintln!("port-trace: listen, cgroup and ring_kib changes take effect after a restart");
                            }
                            if let Ok(mut a) = shared.agg.lock() {
                                a.top_destinations = new.top_destinations;
                                a.set_window(new.window_events);
                            }
                            if new.refresh_interval != cfg.refresh_interval {
                                refresh = tokio::time::interval(new.refresh_interval);
                            }
                            cfg = new;
                            eprintln!("port-trace: configuration reloaded");
                        }
                        Err(e) => eprintln!("port-trace: keeping the old configuration: {e:#}"),
                    },
                    None => eprintln!("port-trace: SIGHUP ignored: no --config file"),
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        if let Ok(mut a) = shared.agg.lock() {
            let drained = tracer.drain(|raw| a.ingest(decode(&raw, &clock)));
            let fill = (drained * (EVENT_SIZE + 8)) as f64 / ring_bytes as f64;
            a.set_health(tracer.lost(), tracer.unresolved(), fill.min(1.0));
        }
        if let Ok(mut t) = shared.last_drain.lock() {
            *t = Instant::now();
        }
    }
    // Stop serving first, then detach (dropping the tracer closes every link).
    let _ = stop_tx.send(());
    let _ = server.await;
    drop(tracer);
    eprintln!("port-trace: stopped");
    Ok(())
}
