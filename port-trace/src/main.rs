use std::process::ExitCode;

use clap::Parser;
use port_trace::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.run() {
        Ok(code) => code,
        Err(e) => {
            // One sentence naming the cause; no backtrace.
            eprintln!("port-trace: {e:#}");
            ExitCode::from(2)
        }
    }
}
