//! Recordings as `analyze` reads them: the first pass (`scan`, from a file), the line reader
//! and its threaded twin (`Parsed`), the reordering window and the summary with its table and
//! JSON. The input is the recording's bytes.

#![no_main]

use std::{collections::HashMap, io::Cursor, path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use port_trace::{
    analysis::DEFAULT_RANGE,
    netns::UsableRange,
    report::{Summarizer, render_table},
    sinks::{
        record::{self, Line, Lines, Parsed, RecordingError},
        reorder::Reorder,
    },
};

/// `scan` reads a file (it refuses pipes): one per fuzzing process, rewritten per input.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("port-trace-fuzz-{}.jsonl", std::process::id()))
    })
}

/// A line or its error, comparable across the two readers.
fn shown(r: &Result<Line, RecordingError>) -> String {
    match r {
        Ok(line) => format!("{line:?}"),
        Err(e) => format!("error: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("write the scratch recording");
    let scan = record::scan(path);
    // Not left behind in the temporary directory when the fuzzer stops.
    let _ = std::fs::remove_file(path);

    // The plain reader goes on after a bad line; `analyze` (and `Parsed`) stop at the first.
    let mut plain = Vec::new();
    for r in Lines::new(Cursor::new(data), path) {
        let failed = r.is_err();
        plain.push(r);
        if failed {
            break;
        }
    }
    let threaded: Vec<_> = Parsed::spawn(Lines::new(Cursor::new(data.to_vec()), path), 2).collect();
    let (a, b): (Vec<_>, Vec<_>) = (
        plain.iter().map(shown).collect(),
        threaded.iter().map(shown).collect(),
    );
    assert_eq!(a, b, "Lines and Parsed disagree");
    let readable = plain.iter().all(Result::is_ok);
    // Both passes hold lines to the same limits: a recording the second reads, the first does.
    if readable {
        assert!(scan.is_ok(), "scan refused a readable recording: {scan:?}");
    }

    let (ranges, connect_netns) = match scan {
        Ok(s) => (s.ranges, s.first_connect_netns),
        Err(_) => (HashMap::new(), None),
    };
    let default = UsableRange::new(DEFAULT_RANGE.0, DEFAULT_RANGE.1, vec![]);
    let mut summarizer = Summarizer::new(ranges, default, connect_netns);
    // A small window, so that late events (analysed where they stand) are exercised too.
    let mut order = Reorder::new(4);
    let mut namespaces = Vec::new();
    for line in plain.into_iter().flatten() {
        match line {
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
    let summary = summarizer.finish(namespaces);
    let _ = render_table(&summary);
    let _ = serde_json::to_string(&summary).expect("a summary always serialises");
});
