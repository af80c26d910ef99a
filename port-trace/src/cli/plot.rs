//! `port-trace plot FILE --out ports.svg`: port against time from a recording.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::{
    netns::range::parse_port_range,
    plot::{PlotOptions, write_svg},
    sinks::record as recording,
};

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A recording from `port-trace record` or `port-trace trace --format json`.
    pub file: PathBuf,
    /// Where to write the SVG.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Shade this range instead of the recording's ("LOW HIGH" or LOW-HIGH).
    #[arg(long, value_name = "LOW-HIGH")]
    pub range: Option<String>,
    #[arg(long, default_value = "source ports chosen by the kernel")]
    pub title: String,
    #[arg(long, default_value_t = 1200)]
    pub width: u32,
    #[arg(long, default_value_t = 700)]
    pub height: u32,
}

pub fn run(args: PlotArgs) -> anyhow::Result<ExitCode> {
    let rec = recording::read(&args.file)?;
    let range = match &args.range {
        Some(r) => Some(parse_port_range(&r.replace('-', " "))?),
        // The recording's own range; with several namespaces, the first one's.
        None => rec
            .namespaces
            .iter()
            .find_map(|n| n.range.as_ref().map(|r| (r.low, r.high))),
    };
    let opts = PlotOptions {
        width: args.width,
        height: args.height,
        range,
        title: args.title,
        ..Default::default()
    };
    write_svg(&rec.events, &opts, &args.out)?;
    eprintln!(
        "port-trace: plotted {} events to {}",
        rec.events.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
