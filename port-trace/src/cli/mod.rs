//! Command line: one file per subcommand.

pub mod analyze;
pub mod check;
pub mod generate;
pub mod nat_args;
pub mod plot;
pub mod record;
pub mod serve;
pub mod trace;

use clap::{Parser, Subcommand};

/// `--version`: the version, the commit it was built from, and the hook sets in the binary
/// (every one is built in; `check` says which this kernel would use).
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit ",
    env!("PORT_TRACE_GIT_COMMIT"),
    "\nhook sets: fexit, kprobe, cgroup"
);

const EXAMPLES: &str = "\
Examples:
  port-trace check                             what this kernel supports, which hook set is used
  port-trace trace --proto tcp --duration 30s  every TCP port the kernel picks for 30 seconds
  port-trace record run.json --duration 5m     a recording with each namespace's range and sockets
  port-trace analyze run.json                  sequential or random? exhausted? per destination
  port-trace plot run.json -o ports.svg        port against time
  port-trace serve --config /etc/port-trace/port-trace.toml
                                               Prometheus metrics on 127.0.0.1:9864/metrics";

#[derive(Debug, Parser)]
#[command(
    name = "port-trace",
    version,
    long_version = LONG_VERSION,
    about = "See every source port the Linux kernel picks, and every failure to pick one",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print kernel port choices live until Ctrl-C or --duration.
    Trace(trace::TraceArgs),
    /// Show what this kernel supports and which hook set would be used.
    Check(check::CheckArgs),
    /// Trace into a JSON recording for `analyze` and `plot`.
    Record(record::RecordArgs),
    /// Allocation pattern, predictability, pressure and failures per stream of a recording.
    Analyze(analyze::AnalyzeArgs),
    /// Run as a daemon: serve Prometheus metrics on /metrics and health on /healthz.
    Serve(serve::ServeArgs),
    /// Draw port against time from a recording (SVG).
    Plot(plot::PlotArgs),
    /// Write man pages or shell completions (used to build the packages).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

impl Cli {
    pub fn run(self) -> anyhow::Result<std::process::ExitCode> {
        if matches!(self.command, Command::Check(_) | Command::Analyze(_)) {
            stop_quietly_on_a_closed_pipe();
        }
        match self.command {
            Command::Trace(args) => trace::run(args),
            Command::Check(args) => check::run(args),
            Command::Record(args) => record::run(args),
            Command::Analyze(args) => analyze::run(args),
            Command::Plot(args) => plot::run(args),
            Command::Serve(args) => serve::run(args),
            Command::Generate(args) => generate::run(args),
        }
    }
}

/// `port-trace check | head` must end like any Unix filter, not panic in `println!`: the
/// commands that only print to stdout take SIGPIPE's default action again (Rust ignores it).
/// The others keep it ignored: `serve` must survive a scraper hanging up, and `trace`/`record`
/// report a closed output as an error and detach.
fn stop_quietly_on_a_closed_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: restores the default disposition before any thread exists; no handler runs.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
