//! The `serve` configuration file (TOML, re-read on SIGHUP) and the flag values parsed from
//! text: whatever parses must lie in its documented range.

#![no_main]

use libfuzzer_sys::fuzz_target;
use port_trace::{
    config::{self, FileConfig, limits},
    netns::{
        UsableRange,
        range::{parse_port_range, parse_reserved_ports},
    },
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = config::parse(text, "fuzz.toml") {
        let c = config::merge(&file, &FileConfig::default());
        let (low, high) = limits::REFRESH;
        assert!((low..=high).contains(&c.refresh_interval), "{c:?}");
        let (low, high) = limits::TOP_DESTINATIONS;
        assert!((low..=high).contains(&c.top_destinations), "{c:?}");
        let (low, high) = limits::WINDOW_EVENTS;
        assert!((low..=high).contains(&c.window_events), "{c:?}");
        assert!(config::check_ring_kib(c.ring_kib).is_ok(), "{c:?}");
        // Flags arrive in the same shape and pass the same checks.
        assert!(file.validate("command line").is_ok());
    }
    if let Ok(d) = config::parse_drain_interval(text) {
        let (low, high) = limits::DRAIN;
        assert!((low..=high).contains(&d));
    }
    // `analyze --range` / `--reserved`, and the sysctls' text.
    let range = parse_port_range(text);
    if let Ok((low, high)) = range {
        assert!(low <= high);
    }
    let reserved = parse_reserved_ports(text);
    if let Ok(reserved) = &reserved {
        assert!(reserved.iter().all(|(a, b)| a <= b), "{reserved:?}");
    }
    // As `analyze --range R --reserved R` builds it, here from one text for both.
    if let (Ok((low, high)), Ok(reserved)) = (range, reserved) {
        let usable = UsableRange::new(low, high, reserved);
        assert!(usable.usable <= usable.span(), "{usable:?}");
    }
});
