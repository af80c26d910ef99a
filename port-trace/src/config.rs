//! `serve` configuration: an optional TOML file, overridden by flags.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Chosen because no common exporter uses it (Prometheus' default port allocations list).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9864";
pub const DEFAULT_TOP_DESTINATIONS: usize = 10;
/// Forecasts describe the moment of the last refresh: 5 s, the shipped scrape interval, keeps
/// a fast ramp warnable (docs/pressure.md).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
pub const DEFAULT_WINDOW_EVENTS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}")]
    Toml {
        path: String,
        #[source]
        source: TomlError,
    },
    #[error("config {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("config {path}: refresh_interval {value:?}")]
    Duration {
        path: String,
        value: String,
        #[source]
        source: humantime::DurationError,
    },
}

/// A TOML syntax or type error, on one line: toml's message names the line and column but
/// spans several lines with a caret drawing.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.to_string().trim().replace('\n', " "))]
pub struct TomlError(toml::de::Error);

/// The file's shape. Every key is optional; unknown keys are errors (a typo must not be
/// silently ignored).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub top_destinations: Option<usize>,
    /// How often pressure and patterns are recomputed, e.g. "5s".
    pub refresh_interval: Option<String>,
    /// Events kept for pattern analysis.
    pub window_events: Option<usize>,
    pub cgroup: Option<std::path::PathBuf>,
    /// `--udp-send-hooks`.
    pub udp_send_hooks: Option<bool>,
    pub ring_kib: Option<u32>,
    /// `--web.config.file`: TLS and basic auth (exporter-toolkit format, checked when loaded).
    pub web_config_file: Option<PathBuf>,
    /// `--nat`: auto, on or off (docs/nat.md).
    pub nat: Option<crate::nat::NatMode>,
    /// `--nat-ports`: the NAT rule's port range, "LOW-HIGH".
    pub nat_ports: Option<String>,
    /// `--nat-netns`: more namespaces to watch for NAT.
    pub nat_netns: Option<Vec<String>>,
}

/// What `serve` runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub top_destinations: usize,
    pub refresh_interval: Duration,
    pub window_events: usize,
    pub cgroup: Option<std::path::PathBuf>,
    pub udp_send_hooks: bool,
    pub ring_kib: u32,
    pub web_config_file: Option<PathBuf>,
    pub nat: crate::nat::NatMode,
    pub nat_ports: Option<crate::event::NatRange>,
    pub nat_netns: Vec<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            top_destinations: DEFAULT_TOP_DESTINATIONS,
            refresh_interval: DEFAULT_REFRESH,
            window_events: DEFAULT_WINDOW_EVENTS,
            cgroup: None,
            udp_send_hooks: false,
            ring_kib: 4096,
            web_config_file: None,
            nat: crate::nat::NatMode::Auto,
            nat_ports: None,
            nat_netns: Vec::new(),
        }
    }
}

/// The range every duration and count must fall in: flags, the file and a reload are all
/// checked here. Below the low ends the daemon would spin (a zero period panics the timer);
/// above the high ends a typo would cost memory or hide problems for hours.
pub mod limits {
    use std::time::Duration;

    /// `serve --refresh-interval` / `refresh_interval`.
    pub const REFRESH: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
    /// `trace --drain-interval` (the ring buffer still wakes the reader when it fills).
    pub const DRAIN: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));
    /// `top_destinations`: five series each.
    pub const TOP_DESTINATIONS: (usize, usize) = (1, 1000);
    /// `window_events`: events kept for pattern analysis (~64 bytes each, docs/metrics.md).
    pub const WINDOW_EVENTS: (usize, usize) = (1, 1_000_000);
}

/// `what` lies in `range`, or a sentence saying where it must lie.
pub fn check_duration(
    what: &str,
    d: Duration,
    (low, high): (Duration, Duration),
) -> Result<(), String> {
    if (low..=high).contains(&d) {
        Ok(())
    } else {
        Err(format!(
            "{what} {}: must be between {} and {}",
            humantime::format_duration(d),
            humantime::format_duration(low),
            humantime::format_duration(high)
        ))
    }
}

/// `what` lies in `range`, or a sentence saying where it must lie.
pub fn check_count(what: &str, n: usize, (low, high): (usize, usize)) -> Result<(), String> {
    if (low..=high).contains(&n) {
        Ok(())
    } else {
        Err(format!("{what} {n}: must be between {low} and {high}"))
    }
}

/// Parses `trace --drain-interval` and checks its range.
pub fn parse_drain_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    check_duration("drain interval", d, limits::DRAIN)?;
    Ok(d)
}

/// Ring buffer sizes the kernel accepts: a power-of-two number of pages.
pub fn check_ring_kib(k: u32) -> Result<(), String> {
    if k.is_power_of_two() && (4..=1 << 20).contains(&k) {
        Ok(())
    } else {
        Err(format!(
            "ring_kib {k}: must be a power of two between 4 and 1048576"
        ))
    }
}

impl FileConfig {
    /// The checks TOML types cannot express; the same for the file and the flags.
    pub fn validate(&self, source: &str) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::Invalid {
            path: source.into(),
            reason,
        };
        if let Some(r) = &self.refresh_interval {
            let d = humantime::parse_duration(r).map_err(|e| ConfigError::Duration {
                path: source.into(),
                value: r.clone(),
                source: e,
            })?;
            check_duration("refresh_interval", d, limits::REFRESH).map_err(bad)?;
        }
        if let Some(k) = self.ring_kib {
            check_ring_kib(k).map_err(bad)?;
        }
        if let Some(n) = self.top_destinations {
            check_count("top_destinations", n, limits::TOP_DESTINATIONS).map_err(bad)?;
        }
        if let Some(n) = self.window_events {
            check_count("window_events", n, limits::WINDOW_EVENTS).map_err(bad)?;
        }
        if let Some(r) = &self.nat_ports {
            crate::nat::parse_nat_ports(r).map_err(|e| bad(format!("nat_ports {e}")))?;
        }
        Ok(())
    }
}

pub fn parse(text: &str, path: &str) -> Result<FileConfig, ConfigError> {
    let parsed: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Toml {
        path: path.into(),
        source: TomlError(e),
    })?;
    parsed.validate(path)?;
    Ok(parsed)
}

pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Defaults, then the file, then flags (`overrides`, already in FileConfig shape).
pub fn merge(file: &FileConfig, flags: &FileConfig) -> ServeConfig {
    let d = ServeConfig::default();
    let pick_dur =
        |s: &Option<String>| s.as_deref().and_then(|s| humantime::parse_duration(s).ok());
    ServeConfig {
        listen: flags.listen.or(file.listen).unwrap_or(d.listen),
        top_destinations: flags
            .top_destinations
            .or(file.top_destinations)
            .unwrap_or(d.top_destinations),
        refresh_interval: pick_dur(&flags.refresh_interval)
            .or_else(|| pick_dur(&file.refresh_interval))
            .unwrap_or(d.refresh_interval),
        window_events: flags
            .window_events
            .or(file.window_events)
            .unwrap_or(d.window_events),
        cgroup: flags.cgroup.clone().or_else(|| file.cgroup.clone()),
        udp_send_hooks: flags
            .udp_send_hooks
            .or(file.udp_send_hooks)
            .unwrap_or(d.udp_send_hooks),
        ring_kib: flags.ring_kib.or(file.ring_kib).unwrap_or(d.ring_kib),
        web_config_file: flags
            .web_config_file
            .clone()
            .or_else(|| file.web_config_file.clone()),
        nat: flags.nat.or(file.nat).unwrap_or(d.nat),
        nat_ports: flags
            .nat_ports
            .as_deref()
            .or(file.nat_ports.as_deref())
            .and_then(|r| crate::nat::parse_nat_ports(r).ok()),
        nat_netns: flags
            .nat_netns
            .clone()
            .or_else(|| file.nat_netns.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_keys_parse_and_a_bad_range_is_refused() {
        let file = parse(
            "nat = \"on\"\nnat_ports = \"40000-40009\"\nnat_netns = [\"gw\"]\n",
            "f",
        )
        .unwrap();
        let c = merge(&file, &FileConfig::default());
        assert_eq!(c.nat, crate::nat::NatMode::On);
        assert_eq!(c.nat_ports.map(|r| r.size()), Some(10));
        assert_eq!(c.nat_netns, vec!["gw".to_string()]);
        assert!(parse("nat_ports = \"9-1\"\n", "f").is_err());
        assert!(parse("nat = \"sometimes\"\n", "f").is_err());
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let file = parse("top_destinations = 5\nrefresh_interval = \"30s\"\n", "f").unwrap();
        let flags = FileConfig {
            top_destinations: Some(3),
            ..Default::default()
        };
        let c = merge(&file, &flags);
        assert_eq!(c.top_destinations, 3);
        assert_eq!(c.refresh_interval, Duration::from_secs(30));
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn udp_send_hooks_are_off_unless_the_file_or_a_flag_says_so() {
        let none = FileConfig::default();
        assert!(!merge(&none, &none).udp_send_hooks);
        let file = parse("udp_send_hooks = true\n", "f").unwrap();
        assert!(merge(&file, &none).udp_send_hooks);
        let flag = FileConfig {
            udp_send_hooks: Some(true),
            ..Default::default()
        };
        assert!(merge(&none, &flag).udp_send_hooks);
    }

    #[test]
    fn web_config_file_from_the_file_or_the_flag() {
        let file = parse("web_config_file = \"/etc/port-trace/web.yml\"\n", "f").unwrap();
        let none = FileConfig::default();
        assert_eq!(
            merge(&file, &none).web_config_file,
            Some(PathBuf::from("/etc/port-trace/web.yml"))
        );
        let flag = FileConfig {
            web_config_file: Some("w.yml".into()),
            ..Default::default()
        };
        assert_eq!(
            merge(&file, &flag).web_config_file,
            Some(PathBuf::from("w.yml"))
        );
    }

    #[test]
    fn bad_config_names_the_line() {
        let err = parse(
            "listen = \"127.0.0.1:9864\"\ntop_destinations = \"ten\"\n",
            "p.toml",
        )
        .unwrap_err();
        let err = crate::errors::chain(&err);
        assert!(err.contains("line 2") && !err.contains('\n'), "{err}");
        let err = crate::errors::chain(&parse("\n\nlisten_addr = \"x\"\n", "p.toml").unwrap_err());
        assert!(
            err.contains("line 3") && err.contains("listen_addr"),
            "{err}"
        );
        assert!(parse("refresh_interval = \"soon\"", "p").is_err());
        assert!(parse("ring_kib = 3", "p").is_err());
        assert!(parse("top_destinations = 0", "p").is_err());
    }

    /// Issue rows 1 and 7: a zero or absurd period or count is refused with its range, the
    /// same way from the file and from the flags.
    #[test]
    fn durations_and_counts_have_ranges() {
        for bad in [
            "refresh_interval = \"0s\"",
            "refresh_interval = \"1ns\"",
            "refresh_interval = \"2days\"",
            "top_destinations = 1000000000",
            "window_events = 0",
            "window_events = 100000000",
        ] {
            let err = crate::errors::chain(&parse(bad, "p").unwrap_err());
            assert!(err.contains("must be between"), "{bad}: {err}");
        }
        assert!(parse("refresh_interval = \"1s\"\ntop_destinations = 1000", "p").is_ok());
        let flags = FileConfig {
            refresh_interval: Some("0s".into()),
            ..Default::default()
        };
        assert!(flags.validate("command line").is_err());
        assert!(parse_drain_interval("0s").is_err());
        assert_eq!(
            parse_drain_interval("100ms"),
            Ok(Duration::from_millis(100))
        );
    }

    /// The packaged example (deploy/config/port-trace.toml) names every key with its default:
    /// as shipped it is empty, uncommented it parses to the defaults.
    #[test]
    fn the_example_config_lists_every_key_with_its_default() {
        let text = include_str!("../../deploy/config/port-trace.toml");
        assert_eq!(parse(text, "example").unwrap(), FileConfig::default());
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| !l.starts_with(' ') && !l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        let file = parse(&uncommented, "example").unwrap();
        let FileConfig {
            listen,
            top_destinations,
            refresh_interval,
            window_events,
            cgroup,
            udp_send_hooks,
            ring_kib,
            web_config_file,
            nat,
            nat_ports,
            nat_netns,
        } = file.clone();
        assert!(
            listen.is_some()
                && top_destinations.is_some()
                && refresh_interval.is_some()
                && window_events.is_some()
                && cgroup.is_some()
                && udp_send_hooks.is_some()
                && ring_kib.is_some()
                && web_config_file.is_some()
                && nat.is_some()
                && nat_ports.is_some()
                && nat_netns.is_some(),
            "a key is missing from the example: {file:?}"
        );
        let defaults = ServeConfig {
            cgroup: file.cgroup.clone(),
            web_config_file: file.web_config_file.clone(),
            // An example range: no range is the default.
            nat_ports: file
                .nat_ports
                .as_deref()
                .and_then(|r| crate::nat::parse_nat_ports(r).ok()),
            ..ServeConfig::default()
        };
        assert_eq!(merge(&file, &FileConfig::default()), defaults);
    }
}
