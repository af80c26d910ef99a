//! Raw ring-buffer records, as the kernel side would submit them, through everything a record
//! meets in `trace` and `serve`: decoding, the JSON line, the table row, and the aggregator's
//! counters, refresh and rendering. The input is cut into records of `EVENT_SIZE` bytes (the
//! last one may be short, as a corrupt record would be).

#![no_main]

use libfuzzer_sys::fuzz_target;
use port_trace::{
    event::Event,
    exporter::Aggregator,
    sinks::print::table_row,
    tracer::decode::{Clock, decode, parse_raw},
};
use port_trace_common::EVENT_SIZE;

fuzz_target!(|data: &[u8]| {
    let mut aggregator = Aggregator::new(64, 5);
    for record in data.chunks(EVENT_SIZE) {
        let Ok(raw) = parse_raw(record) else {
            assert!(record.len() < EVENT_SIZE, "a full-size record must parse");
            continue;
        };
        let Ok(event) = decode(&raw, &Clock::identity()) else {
            continue;
        };
        // The JSON line is the recording format: what `trace` writes, `analyze` reads back.
        let line = serde_json::to_string(&event).expect("an event always serialises");
        let back: Event = serde_json::from_str(&line).expect("its own JSON line reads back");
        assert_eq!(back, event, "{line}");
        // A comm is the traced program's to choose: it must not forge rows or escape codes.
        let row = table_row(&event);
        assert!(!row.chars().any(char::is_control), "{row:?}");
        aggregator.ingest(event);
    }
    aggregator.refresh(&[]);
    let _ = aggregator.metrics.render();
});
