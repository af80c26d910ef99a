//! `port-trace analyze FILE`: the per-stream analysis of a recording, offline.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::{
    analysis::DEFAULT_RANGE,
    netns::{
        UsableRange,
        range::{parse_port_range, parse_reserved_ports},
    },
    report,
    sinks::{print::Format, record as recording},
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
    let mut rec = recording::read(&args.file)?;
    let range = match &args.range {
        Some(r) => {
            let (low, high) = parse_port_range(&r.replace('-', " "))?;
            let reserved = parse_reserved_ports(args.reserved.as_deref().unwrap_or(""))?;
            let range = UsableRange::new(low, high, reserved);
            for ns in &mut rec.namespaces {
                ns.range = Some(range.clone());
            }
            range
        }
        None => UsableRange::new(DEFAULT_RANGE.0, DEFAULT_RANGE.1, vec![]),
    };
    if rec.events.is_empty() {
        anyhow::bail!("{} holds no events", args.file.display());
    }
    let summary = report::summarize(&rec.events, &rec.namespaces, &range);
    match args.format {
        Format::Table => print!("{}", report::render_table(&summary)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
    }
    Ok(ExitCode::SUCCESS)
}
