//! `port-trace record FILE`: a JSON recording for `analyze` and `plot`, ending with each
//! namespace's range and socket table.

use std::{fs::File, io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;

use super::trace::{self, TraceArgs};
use crate::{
    netns::snapshot::snapshot,
    sinks::{print::Format, record},
};

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Where to write the recording (JSON lines).
    pub file: PathBuf,
    #[command(flatten)]
    pub trace: TraceArgs,
}

pub fn run(mut args: RecordArgs) -> anyhow::Result<ExitCode> {
    args.trace.format = Format::Json;
    let file = File::create(&args.file)
        .with_context(|| format!("cannot create {}", args.file.display()))?;
    let summary = args.trace.summary;
    let done = trace::block_on(trace::trace(
        args.trace,
        Box::new(
            file.try_clone()
                .context("cannot duplicate the recording's handle")?,
        ),
        true,
    ))?;
    let namespaces = if summary {
        trace::print_summary(&done)
    } else {
        snapshot(&done.kept, done.netns_path.as_deref())
    };
    let mut file = file;
    for ns in &namespaces {
        writeln!(file, "{}", record::meta_line(ns))
            .with_context(|| format!("cannot write {}", args.file.display()))?;
    }
    eprintln!(
        "port-trace: recorded {} events and {} namespace snapshot(s) to {}",
        done.kept.len(),
        namespaces.len(),
        args.file.display()
    );
    Ok(ExitCode::SUCCESS)
}
