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
    let summary = args.trace.summary;
    // The file is created (and an old one truncated) only once tracing has started.
    let mut recording: Option<File> = None;
    let path = args.file.clone();
    let done = trace::block_on(trace::trace(
        args.trace,
        || {
            let file =
                File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
            let events = file
                .try_clone()
                .context("cannot duplicate the recording's handle")?;
            recording = Some(file);
            Ok(Box::new(events))
        },
        true,
    ))?;
    let mut file = recording.context("the recording was never opened")?;
    let namespaces = if summary {
        trace::print_summary(&done)
    } else {
        snapshot(&done.kept, done.netns_path.as_deref())
    };
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
