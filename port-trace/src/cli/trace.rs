//! `port-trace trace`: live events.

use std::{
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use clap::Args;

use crate::{
    analysis::DEFAULT_RANGE,
    event::{Event, Proto},
    hook_set::HookSet,
    netns::{NetnsState, UsableRange, netns_path, parse_netns, snapshot::snapshot},
    report,
    sinks::{
        filter::Filter,
        print::{Format, Printer},
    },
    tracer::{Session, SessionOptions, StopSignals},
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
    /// Only this protocol (tcp or udp).
    #[arg(long, value_parser = parse_proto)]
    pub proto: Option<Proto>,
    /// Only this network namespace: an inode number, a path like /proc/PID/ns/net, or an
    /// `ip netns` name.
    #[arg(long, value_name = "PATH|INODE")]
    pub netns: Option<String>,
    /// Stop after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Use this hook set instead of the automatic choice.
    #[arg(long, value_enum)]
    pub hooks: Option<HookSet>,
    /// Cgroup v2 directory to trace (default: the root of the cgroup v2 mount).
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Cgroup hook set: also hook every unconnected UDP send (cgroup sendmsg4/6), so that a
    /// UDP port autobound on send is reported at the send instead of when the socket closes.
    /// Costs every such send on the host a program run and a socket lock (docs/capture.md).
    #[arg(long)]
    pub udp_send_hooks: bool,
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
    #[arg(long, default_value = "100ms", value_parser = crate::config::parse_drain_interval)]
    pub drain_interval: Duration,
    #[command(flatten)]
    pub nat: super::nat_args::NatArgs,
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    Proto::ALL
        .iter()
        .copied()
        .find(|p| p.name() == s)
        .ok_or_else(|| format!("{s:?} is not tcp or udp"))
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
    let done = block_on(trace(args, || Ok(Box::new(io::stdout().lock())), summary))?;
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
    let namespaces = snapshot(&done.kept, done.netns_path.as_deref());
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

impl TraceArgs {
    fn session(&self) -> SessionOptions {
        SessionOptions {
            hooks: self.hooks,
            cgroup: self.cgroup.clone(),
            udp_send_hooks: self.udp_send_hooks,
            ring_kib: self.ring_kib,
            wakeup_kib: self.wakeup_kib,
            drain_interval: self.drain_interval,
        }
    }

    fn filter(&self) -> anyhow::Result<Filter> {
        Ok(Filter {
            pids: self.pids.clone(),
            comms: self.comms.clone(),
            proto: self.proto,
            netns: self.netns.as_deref().map(parse_netns).transpose()?,
        })
    }
}

/// The events a trace shows: printed, and kept for the summary or the recording.
struct Shown<W: Write> {
    printer: Printer<W>,
    keep: bool,
    kept: Vec<Event>,
    dropped_from_memory: u64,
    total: u64,
    shown: u64,
    /// stdout was closed (`| head`): the trace ends quietly.
    closed: bool,
}

impl<W: Write> Shown<W> {
    fn take(&mut self, e: Event, filter: &Filter) {
        self.total += 1;
        if self.closed || !filter.matches(&e) {
            return;
        }
        self.shown += 1;
        if self.printer.print(&e).is_err() {
            self.closed = true;
        }
        if self.keep {
            if self.kept.len() < MAX_KEPT {
                self.kept.push(e);
            } else {
                self.dropped_from_memory += 1;
            }
        }
    }

    fn flush(&mut self) {
        if self.printer.flush().is_err() {
            self.closed = true;
        }
    }
}

/// Traces until a signal, `--duration` or a closed output. `open` makes the output once the
/// hook set is attached, so a refused start (not root, a bad cgroup) leaves no file behind.
pub async fn trace(
    args: TraceArgs,
    open: impl FnOnce() -> anyhow::Result<Box<dyn Write>>,
    keep: bool,
) -> anyhow::Result<Finished> {
    let mut stop = StopSignals::install()?;
    let filter = args.filter()?;
    let mut session = Session::start(&args.session())?;
    let out = open()?;
    for why in &session.skipped {
        eprintln!("port-trace: falling back: {why}");
    }
    if let Some(limits) = session.limits() {
        eprintln!("port-trace: {limits}");
    }
    // NAT: the --netns namespace, else our own (docs/nat.md); watching before `tracing:`.
    let nat_targets = match &args.netns {
        Some(a) => vec![super::nat_args::target_of(a)?],
        None => vec![super::nat_args::own_target()],
    };
    let mut nat = args.nat.start(&nat_targets)?;
    let mut nat_stats = NatTotals::default();
    eprintln!("tracing: {}", session.describe());

    let mut shown = Shown {
        printer: Printer::new(io::BufWriter::new(out), args.format),
        keep,
        kept: Vec::new(),
        dropped_from_memory: 0,
        total: 0,
        shown: 0,
        closed: false,
    };
    let deadline = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = session.ready() => {}
            _ = stop.recv() => break,
            _ = &mut deadline => break,
            u = super::nat_args::next(&mut nat) => {
                nat_stats.take(u, |e| shown.take(e, &filter));
                shown.flush();
                // The ring buffer keeps its own wake-ups (--drain-interval, --wakeup-kib).
                continue;
            }
        }
        session.drain(|e| shown.take(e, &filter));
        shown.flush();
        if shown.closed {
            break;
        }
    }
    // Everything submitted before we stopped is still in the ring buffer.
    session.drain(|e| shown.take(e, &filter));
    if let Some(w) = &mut nat {
        w.stop();
        while let Ok(u) = w.rx.try_recv() {
            nat_stats.take(Some(u), |e| shown.take(e, &filter));
        }
    }
    shown.flush();
    drop(nat);
    nat_stats.report();
    let losses = session.losses();
    eprintln!(
        "port-trace: {} events, {} shown, {} lost to a full ring buffer{}{}{}",
        shown.total,
        shown.shown,
        losses.lost,
        if losses.lost > 0 {
            " (raise --ring-kib)"
        } else {
            ""
        },
        if losses.unresolved > 0 {
            format!(
                ", {} port choices whose socket could not be read",
                losses.unresolved
            )
        } else {
            String::new()
        },
        if losses.undecodable > 0 {
            format!(
                ", {} records this version could not decode",
                losses.undecodable
            )
        } else {
            String::new()
        }
    );
    Ok(Finished {
        kept: shown.kept,
        dropped_from_memory: shown.dropped_from_memory,
        netns_path: args.netns.as_deref().and_then(netns_path),
    })
}

/// Conntrack's counters per watched namespace: at the first and the last report.
#[derive(Default)]
struct NatTotals {
    seen: std::collections::BTreeMap<
        u32,
        (
            crate::nat::decode::CpuStats,
            crate::nat::decode::CpuStats,
            u64,
        ),
    >,
}

impl NatTotals {
    fn take(&mut self, u: Option<crate::nat::NatUpdate>, mut show: impl FnMut(Event)) {
        match u {
            Some(crate::nat::NatUpdate::Event(e)) => show(e),
            Some(crate::nat::NatUpdate::Status {
                netns, stats, lost, ..
            }) => {
                let s = self.seen.entry(netns).or_insert((stats, stats, 0));
                s.1 = stats;
                s.2 = lost;
            }
            None => {}
        }
    }

    /// One line per namespace where the counters that tell of NAT trouble rose meanwhile (a
    /// quiet namespace says nothing).
    fn report(&self) {
        for (netns, (first, last, lost)) in &self.seen {
            let d = |a: u64, b: u64| b.saturating_sub(a);
            let rose = d(first.insert_failed, last.insert_failed)
                + d(first.drop, last.drop)
                + d(first.clash_resolve, last.clash_resolve)
                + d(first.search_restart, last.search_restart)
                + d(first.early_drop, last.early_drop)
                + lost;
            if rose == 0 {
                continue;
            }
            eprintln!(
                "port-trace: conntrack in namespace {netns}: insert_failed +{}, drop +{}, clash_resolve +{}, search_restart +{}, early_drop +{}{}",
                d(first.insert_failed, last.insert_failed),
                d(first.drop, last.drop),
                d(first.clash_resolve, last.clash_resolve),
                d(first.search_restart, last.search_restart),
                d(first.early_drop, last.early_drop),
                if *lost > 0 {
                    format!(", {lost} conntrack events lost")
                } else {
                    String::new()
                }
            );
        }
    }
}
