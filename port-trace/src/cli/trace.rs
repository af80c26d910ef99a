//! `port-trace trace`: live events.

use std::{
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::Args;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    analysis::DEFAULT_RANGE,
    event::{Clock, Event, decode},
    filter::{Filter, parse_netns},
    hooks::{self, HookSetName},
    loader::{LoadOptions, Tracer},
    output::{Format, Printer},
    pressure::UsableRange,
    probe::KernelSupport,
    recording,
    report::{self, NetnsState},
};

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Only events from this process id (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only events from this command name (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Only this protocol.
    #[arg(long, value_parser = ["tcp", "udp"])]
    pub proto: Option<String>,
    /// Only this network namespace: an inode number, a path like /proc/PID/ns/net, or an
    /// `ip netns` name.
    #[arg(long, value_name = "PATH|INODE")]
    pub netns: Option<String>,
    /// Stop after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Use this hook set instead of the automatic choice.
    #[arg(long, value_enum)]
    pub hooks: Option<HookSetName>,
    /// Cgroup v2 directory to trace (default: the root of the cgroup v2 mount).
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Ring buffer size in KiB (power of two).
    #[arg(long, default_value_t = 1024, value_parser = parse_ring_kib)]
    pub ring_kib: u32,
    /// Wake up early once this many KiB wait in the ring buffer (default: a quarter of it).
    #[arg(long, value_name = "KIB")]
    pub wakeup_kib: Option<u32>,
    /// On exit, print a per-stream summary (pattern, predictability, pressure, failures) on
    /// stderr.
    #[arg(long)]
    pub summary: bool,
    /// How often to drain the ring buffer when it is not filling up.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub drain_interval: Duration,
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    crate::config::check_ring_kib(v)?;
    Ok(v)
}

/// Most events kept in memory for `--summary` and `record`; beyond it the summary says so.
const MAX_KEPT: usize = 2_000_000;

/// What a finished trace hands back to its caller.
pub struct Finished {
    /// Events that passed the filter, when asked to keep them.
    pub kept: Vec<Event>,
    pub dropped_from_memory: u64,
    /// A path to the `--netns` namespace, for reading its range and sockets.
    pub netns_path: Option<PathBuf>,
}

pub fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let summary = args.summary;
    let out: Box<dyn Write> = Box::new(io::stdout().lock());
    let done = block_on(trace(args, out, summary))?;
    if summary {
        print_summary(&done);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(f)
}

/// Reads the namespaces' ranges and socket tables now and prints the summary on stderr.
pub fn print_summary(done: &Finished) -> Vec<NetnsState> {
    let namespaces = recording::snapshot(&done.kept, done.netns_path.as_deref());
    let default = UsableRange::new(DEFAULT_RANGE.0, DEFAULT_RANGE.1, vec![]);
    let summary = report::summarize(&done.kept, &namespaces, &default);
    eprint!("{}", report::render_table(&summary));
    if done.dropped_from_memory > 0 {
        eprintln!(
            "note: the summary covers the first {MAX_KEPT} events; {} more were not kept",
            done.dropped_from_memory
        );
    }
    namespaces
}

fn netns_path(arg: &str) -> Option<PathBuf> {
    if arg.parse::<u32>().is_ok() {
        return None;
    }
    [
        PathBuf::from(arg),
        PathBuf::from(format!("/run/netns/{arg}")),
    ]
    .into_iter()
    .find(|p| p.exists())
}

pub async fn trace(args: TraceArgs, out: Box<dyn Write>, keep: bool) -> anyhow::Result<Finished> {
    // Before anything is attached: a signal that arrives right after the `tracing:` line
    // must still drain and exit cleanly.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let filter = Filter {
        pids: args.pids.clone(),
        comms: args.comms.clone(),
        proto: args.proto.clone(),
        netns: args.netns.as_deref().map(parse_netns).transpose()?,
    };
    let k = KernelSupport::probe(true);
    if !k.root.ok {
        bail!(crate::loader::LoadError::NotRoot);
    }
    let hook_set = match hooks::choose(&k, args.hooks) {
        Ok(h) => h,
        Err(reasons) => {
            let why: Vec<String> = reasons.iter().map(|(h, w)| format!("{h}: {w}")).collect();
            bail!(
                "no usable hook set on this kernel ({}); `port-trace check` shows the details",
                why.join("; ")
            );
        }
    };
    let cgroup = match args.cgroup.clone().or_else(|| k.cgroup2.clone()) {
        Some(c) => c,
        None => bail!(
            "no cgroup v2 mount found; mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) or pass --cgroup"
        ),
    };
    let opts = LoadOptions {
        hook_set,
        ring_bytes: args.ring_kib * 1024,
        wakeup_bytes: args
            .wakeup_kib
            .map(|k| k as u64 * 1024)
            .unwrap_or(args.ring_kib as u64 * 1024 / 4),
        cgroup,
    };
    let (mut tracer, skipped) =
        crate::loader::start_first(&k, &hooks::candidates(&k, args.hooks), &opts)?;
    for why in &skipped {
        eprintln!("port-trace: falling back: {why}");
    }
    let hook_set = tracer.hook_set;
    let blind: Vec<&str> = hook_set
        .coverage(&k)
        .iter()
        .filter(|r| !r.seen)
        .map(|r| r.path)
        .collect();
    eprintln!(
        "tracing: hook set {hook_set} ({} programs on {}){}",
        tracer.attached.len(),
        opts.cgroup.display(),
        if blind.is_empty() {
            String::new()
        } else {
            format!("; not seen here: {}", blind.join(", "))
        }
    );

    let clock = Clock::now();
    let mut printer = Printer::new(io::BufWriter::new(out), args.format);
    let mut kept = Vec::new();
    let mut dropped_from_memory = 0u64;
    // A duplicate of the ring buffer's fd: epoll on it reports the kernel's forced wake-ups.
    let dup = nix::unistd::dup(tracer.ring_fd()).context("cannot duplicate the ring buffer fd")?;
    // SAFETY: `dup` is an owned descriptor that nothing else registers or closes.
    let ring_fd = unsafe { AsyncFd::register(dup) }
        .map_err(|e| anyhow::anyhow!("cannot poll the ring buffer: {e}"))?;
    let mut tick = tokio::time::interval(args.drain_interval);
    let deadline = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);

    let mut total = 0u64;
    let mut shown = 0u64;
    let mut stdout_closed = false;
    let mut drain = |tracer: &mut Tracer, stdout_closed: &mut bool| {
        tracer.drain(|raw| {
            total += 1;
            let e = decode(&raw, &clock);
            if !*stdout_closed && filter.matches(&e) {
                shown += 1;
                if printer.print(&e).is_err() {
                    *stdout_closed = true;
                }
                if keep {
                    if kept.len() < MAX_KEPT {
                        kept.push(e);
                    } else {
                        dropped_from_memory += 1;
                    }
                }
            }
        });
        if printer.flush().is_err() {
            *stdout_closed = true;
        }
    };
    loop {
        tokio::select! {
            guard = ring_fd.readable() => {
                if let Ok(mut g) = guard { g.clear_ready(); }
            }
            _ = tick.tick() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
        }
        drain(&mut tracer, &mut stdout_closed);
        if stdout_closed {
            break;
        }
    }
    // Everything submitted before we stopped is still in the ring buffer.
    drain(&mut tracer, &mut stdout_closed);
    drop(printer);
    let lost = tracer.lost();
    let unresolved = tracer.unresolved();
    eprintln!(
        "port-trace: {total} events, {shown} shown, {lost} lost to a full ring buffer{}{}",
        if lost > 0 { " (raise --ring-kib)" } else { "" },
        if unresolved > 0 {
            format!(", {unresolved} port choices whose socket could not be read")
        } else {
            String::new()
        }
    );
    Ok(Finished {
        kept,
        dropped_from_memory,
        netns_path: args.netns.as_deref().and_then(netns_path),
    })
}
