//! The soak's bounds, the table of samples, and the verdict. The bounds (also in README.md):
//!
//! - RSS below [`RSS_CEILING_MIB`] at every sample, and its mean over the last third of the run
//!   at most [`RSS_GROWTH`] above its mean over the first third (plus [`RSS_SLACK_MIB`], the
//!   allocator's noise on a small heap). The sample at start is left out: the daemon then has
//!   not yet filled its event window.
//! - fds and threads: after the start, highest minus lowest at most [`FD_SLACK`] /
//!   [`THREAD_SLACK`] (a scrape's socket, tokio's blocking pool), plus what the namespaces
//!   whose NAT the daemon watches may add: [`FDS_PER_NAT_WATCH`] fds and a thread each, times
//!   the spread of their number over the run (namespaces come and go in the workload).
//! - CPU: at most [`CPU_CEILING`] of one core on average, and no third of the run above it.
//! - Every scrape (one a second) answered 200 within [`SCRAPE_LIMIT`].
//! - Events seen: a soak whose workload the daemon never saw soaked nothing.

use std::{fmt::Write, time::Duration};

use super::sample::Reading;

pub const RSS_CEILING_MIB: f64 = 256.0;
pub const RSS_GROWTH: f64 = 0.10;
pub const RSS_SLACK_MIB: f64 = 8.0;
pub const FD_SLACK: u64 = 8;
pub const THREAD_SLACK: u64 = 4;
/// A NAT watcher's fds: two netlink sockets and its namespace's file.
pub const FDS_PER_NAT_WATCH: u64 = 3;
pub const CPU_CEILING: f64 = 0.5;
pub const SCRAPE_LIMIT: Duration = Duration::from_secs(1);

/// One row of the table: a reading of the process and what the scrapes saw since the last one.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Duration,
    pub reading: Reading,
    /// Share of one core used since the previous sample.
    pub cpu_share: f64,
    /// Series in the last scrape.
    pub series: usize,
    /// Namespaces whose NAT the daemon watched at the last scrape.
    pub nat_watched: usize,
    /// `port_trace_assignments_total` in the last scrape.
    pub events: f64,
    pub scrapes: u64,
    pub slowest_scrape: Duration,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub const HEADER: &str =
    "     t   RSS MiB   fds  threads  NAT ns   CPU %   series      events  scrapes  slowest scrape";

/// One sample as a row under [`HEADER`].
pub fn row(s: &Sample) -> String {
    format!(
        "{:>5}s {:>9.1} {:>5} {:>8} {:>7} {:>7.1} {:>8} {:>11.0} {:>8} {:>12.1} ms",
        s.at.as_secs(),
        mib(s.reading.rss_kib),
        s.reading.fds,
        s.reading.threads,
        s.nat_watched,
        s.cpu_share * 100.0,
        s.series,
        s.events,
        s.scrapes,
        s.slowest_scrape.as_secs_f64() * 1000.0
    )
}

pub fn table(samples: &[Sample]) -> String {
    let mut t = format!("{HEADER}\n");
    for s in samples {
        let _ = writeln!(t, "{}", row(s));
    }
    t
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, sum) = xs.fold((0u32, 0.0), |(n, s), x| (n + 1, s + x));
    (n > 0).then(|| sum / f64::from(n))
}

/// Every bound broken, as sentences (empty: the soak passed). `scrape_failures` are the
/// scrapes that failed or were slow, already described.
pub fn judge(samples: &[Sample], total: Duration, scrape_failures: &[String]) -> Vec<String> {
    let mut broken: Vec<String> = scrape_failures.to_vec();
    let settled: Vec<&Sample> = samples.iter().filter(|s| !s.at.is_zero()).collect();
    if settled.len() < 3 {
        broken.push(format!(
            "only {} samples after the start: run the soak for 30 s or more",
            settled.len()
        ));
        return broken;
    }
    let third = total.as_secs_f64() / 3.0;
    let first = |s: &&&Sample| s.at.as_secs_f64() <= third;
    let last = |s: &&&Sample| s.at.as_secs_f64() >= 2.0 * third;
    for s in &settled {
        if mib(s.reading.rss_kib) > RSS_CEILING_MIB {
            broken.push(format!(
                "RSS {:.1} MiB at {}s: above the {RSS_CEILING_MIB} MiB ceiling",
                mib(s.reading.rss_kib),
                s.at.as_secs()
            ));
        }
    }
    let rss = |keep: &dyn Fn(&&&Sample) -> bool| {
        mean(
            settled
                .iter()
                .filter(|s| keep(s))
                .map(|s| mib(s.reading.rss_kib)),
        )
    };
    if let (Some(a), Some(b)) = (rss(&first), rss(&last))
        && b > a * (1.0 + RSS_GROWTH) + RSS_SLACK_MIB
    {
        broken.push(format!(
            "RSS grew from {a:.1} MiB (first third) to {b:.1} MiB (last third): more than {:.0} % + {RSS_SLACK_MIB} MiB",
            RSS_GROWTH * 100.0
        ));
    }
    let watched = settled.iter().map(|s| s.nat_watched as u64);
    let watched_spread = watched.clone().max().unwrap_or(0) - watched.min().unwrap_or(0);
    for (what, slack, pick) in [
        (
            "fds",
            FD_SLACK + FDS_PER_NAT_WATCH * watched_spread,
            (|r: &Reading| r.fds) as fn(&Reading) -> u64,
        ),
        ("threads", THREAD_SLACK + watched_spread, |r: &Reading| {
            r.threads
        }),
    ] {
        let values = settled.iter().map(|s| pick(&s.reading));
        let (lo, hi) = (values.clone().min(), values.max());
        if let (Some(lo), Some(hi)) = (lo, hi)
            && hi - lo > slack
        {
            broken.push(format!(
                "{what} went from {lo} to {hi}: more than {slack} apart"
            ));
        }
    }
    let cpu = |keep: &dyn Fn(&&&Sample) -> bool| {
        mean(settled.iter().filter(|s| keep(s)).map(|s| s.cpu_share))
    };
    for (part, keep) in [
        (
            "the run",
            &(|_: &&&Sample| true) as &dyn Fn(&&&Sample) -> bool,
        ),
        ("the first third", &first),
        ("the last third", &last),
    ] {
        if let Some(c) = cpu(keep)
            && c > CPU_CEILING
        {
            broken.push(format!(
                "CPU {:.0} % of a core over {part}: above {:.0} %",
                c * 100.0,
                CPU_CEILING * 100.0
            ));
        }
    }
    if settled
        .last()
        .is_some_and(|s| s.events <= settled[0].events)
    {
        broken.push(
            "the daemon counted no new event after the start: the workload was not seen".into(),
        );
    }
    broken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, rss_mib: u64, fds: u64, threads: u64) -> Sample {
        Sample {
            at: Duration::from_secs(at),
            reading: Reading {
                rss_kib: rss_mib * 1024,
                fds,
                threads,
                cpu: Duration::ZERO,
            },
            cpu_share: 0.05,
            series: 100,
            nat_watched: 1,
            events: at as f64 * 100.0,
            scrapes: 10,
            slowest_scrape: Duration::from_millis(5),
        }
    }

    fn run(rss: &[u64], fds: &[u64]) -> Vec<String> {
        let samples: Vec<Sample> = rss
            .iter()
            .zip(fds)
            .enumerate()
            .map(|(i, (&r, &f))| sample(i as u64 * 10, r, f, 5))
            .collect();
        judge(
            &samples,
            Duration::from_secs(10 * (rss.len() as u64 - 1)),
            &[],
        )
    }

    #[test]
    fn a_flat_series_passes() {
        assert!(run(&[10, 40, 41, 40, 42, 41, 41], &[12; 7]).is_empty());
    }

    #[test]
    fn growth_leaks_and_ceilings_fail() {
        let v = run(&[10, 40, 50, 60, 70, 80, 90], &[12; 7]);
        assert!(v.iter().any(|s| s.contains("RSS grew")), "{v:?}");
        let v = run(&[10, 300, 300, 300, 300, 300, 300], &[12; 7]);
        assert!(v.iter().any(|s| s.contains("ceiling")), "{v:?}");
        let v = run(&[10, 40, 40, 40, 40, 40, 40], &[12, 12, 14, 16, 18, 20, 22]);
        assert!(v.iter().any(|s| s.starts_with("fds")), "{v:?}");
    }

    #[test]
    fn no_new_events_fail() {
        let mut samples: Vec<Sample> = (0..5).map(|i| sample(i * 10, 40, 12, 5)).collect();
        for s in &mut samples {
            s.events = 7.0;
        }
        let v = judge(&samples, Duration::from_secs(40), &[]);
        assert!(v.iter().any(|s| s.contains("no new event")), "{v:?}");
    }

    #[test]
    fn the_table_has_a_row_per_sample() {
        let t = table(&[sample(0, 10, 12, 5), sample(10, 40, 12, 5)]);
        assert_eq!(t.lines().count(), 3);
        assert!(t.lines().nth(2).unwrap().trim_start().starts_with("10s"));
    }
}
