//! Command line: one file per subcommand.

pub mod analyze;
pub mod check;
pub mod plot;
pub mod record;
pub mod serve;
pub mod trace;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "port-trace",
    version,
    about = "See every source port the Linux kernel picks, and every failure to pick one"
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
