//! `cargo xtask soak [--duration 10m]` (root): `port-trace serve` under a mixed workload for a
//! while, watched from outside; fails when it grows, stalls or dies.
//!
//! - [`netns`]: the namespaces it makes (two for the whole run, one more every few seconds
//!   that lives for a burst and is deleted, port ranges changed in between);
//! - [`workload`]: the traffic inside them (TCP connect to 8,000 loopback destinations, TCP
//!   bind(0)+listen, UDP autobind, UDP bind(0), and a tiny range run out: EADDRNOTAVAIL);
//! - [`daemon`]: serve itself, reloaded with SIGHUP every minute (a third of shorter runs);
//! - [`scrape`]: one `GET /metrics` a second, timed;
//! - [`sample`]: RSS, fds, threads and CPU of serve from /proc, every 10 s;
//! - [`verdict`]: the bounds, the table and the verdict.

mod daemon;
mod sample;
mod scrape;
mod verdict;
mod workload;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::Args;

use crate::netns::Netns;
use crate::{build::build, setup, shell::workspace_root};
use verdict::{SCRAPE_LIMIT, Sample};
use workload::Counts;

/// What `cargo xtask test` runs.
pub const TEST_DURATION: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: u64 = 10;
const CHURN_EVERY: u64 = 5;
const RANGE_EVERY: u64 = 15;
const SIGHUP_EVERY: u64 = 60;
/// The two ranges the long-lived namespaces switch between.
const RANGES: [(u16, u16); 2] = [(32768, 60999), (40000, 44999)];

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// How long the workload runs, e.g. 60s or 10m.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

pub fn command(args: SoakArgs) -> Result<()> {
    setup::setup(true)?;
    let bin = build(false)?;
    let broken = run(&bin, args.duration)?;
    if !broken.is_empty() {
        bail!("soak failed:\n  {}", broken.join("\n  "));
    }
    Ok(())
}

/// Runs the soak and prints its table; the bounds broken (empty: passed). An error is a soak
/// that could not run (not root, no `ip`).
pub fn run(bin: &Path, duration: Duration) -> Result<Vec<String>> {
    if !crate::shell::is_root() {
        bail!("the soak needs root (it loads eBPF programs and makes network namespaces)");
    }
    let dir = workspace_root().join("target/soak");
    std::fs::create_dir_all(&dir)?;
    let secs = duration.as_secs().max(1);
    let sighup_every = SIGHUP_EVERY.min(secs / 3).max(1);
    println!(
        "soak: {secs} s; a scrape every 1 s, a sample every {SAMPLE_EVERY} s, SIGHUP every {sighup_every} s, \
         a namespace made and deleted every {CHURN_EVERY} s, port ranges changed every {RANGE_EVERY} s"
    );

    let mut daemon = daemon::Daemon::start(bin, &dir)?;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let long: Vec<Netns> = (0..2)
        .map(|i| soak_netns(&format!("long{i}")))
        .collect::<Result<_>>()?;
    let workers: Vec<_> = long
        .iter()
        .map(|ns| workload::spawn_worker(ns.name.clone(), stop.clone(), counts.clone()))
        .collect();

    let mut broken = Vec::new();
    let mut samples = Vec::new();
    let mut watch = Watch::default();
    let start = Instant::now();
    let mut last = sample::read(daemon.pid())?;
    samples.push(watch.sample(Duration::ZERO, last, last, Duration::from_secs(1)));
    // Each row as it is taken (a long run shows its progress), the whole table at the end.
    println!("{}\n{}", verdict::HEADER, verdict::row(&samples[0]));
    let mut churn: Option<JoinHandle<Result<()>>> = None;
    let mut churned = 0;
    for tick in 1..=secs {
        let due = start + Duration::from_secs(tick);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if let Some(how) = daemon.exited() {
            broken.push(format!("serve died at {tick}s: {how}"));
            break;
        }
        watch.scrape(daemon.addr, tick);
        if tick.is_multiple_of(SAMPLE_EVERY) || tick == secs {
            let now = sample::read(daemon.pid())?;
            let since = Duration::from_secs(tick)
                - samples.last().map_or(Duration::ZERO, |s: &Sample| s.at);
            samples.push(watch.sample(Duration::from_secs(tick), now, last, since));
            println!("{}", verdict::row(&samples[samples.len() - 1]));
            last = now;
        }
        if tick.is_multiple_of(CHURN_EVERY) {
            if let Some(Err(e)) = churn.take().map(join) {
                broken.push(format!("a churned namespace failed: {e:#}"));
            }
            churned += 1;
            churn = Some(spawn_churn(churned, counts.clone()));
        }
        if tick.is_multiple_of(RANGE_EVERY) {
            let (low, high) = RANGES[(tick / RANGE_EVERY) as usize % 2];
            for ns in &long {
                ns.set_port_range(low, high)?;
            }
        }
        if tick.is_multiple_of(sighup_every) && tick < secs {
            daemon.reload()?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers.into_iter().chain(churn) {
        if let Err(e) = join(w) {
            broken.push(format!("workload failed: {e:#}"));
        }
    }
    drop(long);
    let log: Vec<String> = daemon.log.try_iter().collect();
    let reloaded = log
        .iter()
        .filter(|l| l.contains("configuration reloaded"))
        .count() as u64;
    if reloaded != daemon.reloads() {
        broken.push(format!(
            "{} SIGHUPs sent, {reloaded} reloads logged",
            daemon.reloads()
        ));
    }
    let elapsed = start.elapsed();
    let stopped = daemon.stop();

    println!("\n{}", verdict::table(&samples));
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "soak: {:.0} s; workload: {} TCP connects ({} failed), {} UDP sends, {} bind(0)s in 2 \
         long-lived and {churned} churned namespaces; {reloaded} reloads; {} scrapes, slowest {:.1} ms",
        elapsed.as_secs_f64(),
        c(&counts.connects),
        c(&counts.failures),
        c(&counts.udp_sends),
        c(&counts.binds),
        watch.scrapes,
        watch.slowest.as_secs_f64() * 1000.0
    );
    for l in log.iter().filter(|l| !l.contains("configuration reloaded")) {
        println!("serve: {l}");
    }
    broken.extend(verdict::judge(&samples, duration, &watch.failures));
    if let Err(e) = stopped {
        broken.push(format!("{e:#}"));
    }
    if broken.is_empty() {
        println!("soak: passed (bounds in xtask/src/soak/verdict.rs)");
    } else {
        println!("soak: FAILED");
        for b in &broken {
            println!("  {b}");
        }
    }
    Ok(broken)
}

/// A namespace made for one burst of traffic, a tiny range run out, then deleted.
fn spawn_churn(n: u64, counts: Arc<Counts>) -> JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        let ns = soak_netns(&format!("churn{n}"))?;
        let name = ns.name.clone();
        let c = counts.clone();
        // Each part on a thread of its own: a thread that entered the namespace stays in it.
        std::thread::spawn(move || workload::burst(&name, 300, &c))
            .join()
            .map_err(|_| anyhow::anyhow!("burst panicked"))??;
        ns.set_port_range(workload::TINY_RANGE.0, workload::TINY_RANGE.1)?;
        let name = ns.name.clone();
        std::thread::spawn(move || workload::exhaust(&name, &counts))
            .join()
            .map_err(|_| anyhow::anyhow!("exhaust panicked"))??;
        drop(ns);
        Ok(())
    })
}

fn join(h: JoinHandle<Result<()>>) -> Result<()> {
    h.join()
        .map_err(|_| anyhow::anyhow!("a workload thread panicked"))?
}

/// The scrapes so far, and what the next sample reports of them.
#[derive(Default)]
struct Watch {
    scrapes: u64,
    slowest: Duration,
    failures: Vec<String>,
    /// Since the last sample.
    recent: u64,
    recent_slowest: Duration,
    series: usize,
    nat_watched: usize,
    events: f64,
}

impl Watch {
    fn scrape(&mut self, addr: std::net::SocketAddr, tick: u64) {
        self.scrapes += 1;
        self.recent += 1;
        match scrape::scrape(addr) {
            Ok(s) => {
                self.slowest = self.slowest.max(s.took);
                self.recent_slowest = self.recent_slowest.max(s.took);
                self.series = s.series;
                self.nat_watched = s.nat_watched;
                self.events = s.assignments;
                if s.took > SCRAPE_LIMIT {
                    self.failures.push(format!(
                        "scrape at {tick}s took {:.0} ms (limit {SCRAPE_LIMIT:?})",
                        s.took.as_secs_f64() * 1000.0
                    ));
                }
            }
            Err(e) => self.failures.push(format!("scrape at {tick}s failed: {e}")),
        }
    }

    fn sample(
        &mut self,
        at: Duration,
        now: sample::Reading,
        before: sample::Reading,
        since: Duration,
    ) -> Sample {
        let used = now.cpu.saturating_sub(before.cpu).as_secs_f64();
        let s = Sample {
            at,
            reading: now,
            cpu_share: used / since.as_secs_f64().max(0.001),
            series: self.series,
            nat_watched: self.nat_watched,
            events: self.events,
            scrapes: self.recent,
            slowest_scrape: self.recent_slowest,
        };
        self.recent = 0;
        self.recent_slowest = Duration::ZERO;
        s
    }
}

/// A soak namespace: loopback holds 192.0.2.1/24 (TEST-NET-1), so UDP sent to the rest of that
/// subnet goes out on loopback and is dropped, inside the namespace.
fn soak_netns(tag: &str) -> Result<Netns> {
    let ns = Netns::create("soak", tag)?;
    ns.add_loopback_address("192.0.2.1/24")?;
    Ok(ns)
}
