//! Command line: one file per subcommand.

pub mod check;
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
}

impl Cli {
    pub fn run(self) -> anyhow::Result<std::process::ExitCode> {
        match self.command {
            Command::Trace(args) => trace::run(args),
            Command::Check(args) => check::run(args),
        }
    }
}
