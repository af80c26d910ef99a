//! `port-trace analyze FILE`: the per-stream analysis of a recording, offline. The recording is
//! streamed (a first pass reads its namespace lines, unless --range makes them unnecessary):
//! memory grows with the number of streams, not with the number of events.

use std::{collections::HashMap, io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;

use crate::{
    analysis::DEFAULT_RANGE,
    netns::{
        UsableRange,
        range::{parse_port_range, parse_reserved_ports},
    },
    report::{self, Summarizer},
    sinks::{
        print::Format,
        record::{self as recording, Line},
        reorder::{REORDER_EVENTS, Reorder},
    },
};

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// A recording from `port-trace record` or `port-trace trace --format json`.
    pub file: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The ephemeral range ("LOW HIGH" or LOW-HIGH) for every namespace, overriding the
    /// recording (default when the recording has none: 32768-60999).
    #[arg(long, value_name = "LOW-HIGH")]
    pub range: Option<String>,
    /// ip_local_reserved_ports to apply with --range (e.g. "40000-40010,50000").
    #[arg(long, value_name = "PORTS", requires = "range")]
    pub reserved: Option<String>,
}

pub fn run(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let range = match &args.range {
        Some(r) => {
            let (low, high) = parse_port_range(&r.replace('-', " "))?;
            let reserved = parse_reserved_ports(args.reserved.as_deref().unwrap_or(""))?;
            Some(UsableRange::new(low, high, reserved))
        }
        None => None,
    };
    // Without --range the namespace lines, at the end, must be read first: a first pass.
    let (ranges, connect_netns) = match &range {
        Some(_) => (HashMap::new(), None),
        None => {
            let scan = recording::scan(&args.file)?;
            (scan.ranges, scan.first_connect_netns)
        }
    };
    let default = range
        .clone()
        .unwrap_or_else(|| UsableRange::new(DEFAULT_RANGE.0, DEFAULT_RANGE.1, vec![]));
    let mut summarizer = Summarizer::new(ranges, default, connect_netns);
    let mut namespaces = Vec::new();
    let mut order = Reorder::new(REORDER_EVENTS);
    // Parsing JSON is most of the work: one parser per core (at most 8); the summary itself
    // needs less than one.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    for line in recording::Parsed::spawn(recording::open(&args.file)?, workers) {
        match line? {
            Line::Event(e) => {
                if let Some(e) = order.push(e) {
                    summarizer.push(&e);
                }
            }
            Line::Netns(ns) => namespaces.push(*ns),
        }
    }
    for e in order.drain() {
        summarizer.push(&e);
    }
    summarizer.set_out_of_order(order.late());
    if let Some(range) = &range {
        for ns in &mut namespaces {
            ns.range = Some(range.clone());
        }
    }
    if summarizer.events() == 0 {
        anyhow::bail!("{} holds no events", args.file.display());
    }
    let summary = summarizer.finish(namespaces);
    // Written as it is made: with 100,000 streams the JSON text is larger than the summary.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = match args.format {
        Format::Table => out.write_all(report::render_table(&summary).as_bytes()),
        Format::Json => serde_json::to_writer_pretty(&mut out, &summary)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
    }
    .and_then(|()| out.flush());
    match written {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("cannot write the summary")?,
    }
    Ok(ExitCode::SUCCESS)
}
