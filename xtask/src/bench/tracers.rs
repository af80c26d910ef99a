//! The tracer configurations, one per table column: none, the cgroup set's floor (programs
//! that do nothing, on the same hooks: `xtask/bench/loops/floor.c`), `port-trace trace --format
//! json`, the same with the cgroup set's opt-in `--udp-send-hooks`, `port-trace serve`, and a
//! bpftrace peer. Each is started before a round's loops (the call
//! returns once its programs are attached), counts what it saw, and is stopped after them.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::{
    Env,
    events::{self, Counts},
    metrics,
};

/// One map update per `inet_sock_set_state` event: a peer of the same kind as port-trace's
/// own tracepoint, for scale. BEGIN runs once every probe is attached, so "ready" means ready.
const BPFTRACE_PROGRAM: &str = r#"BEGIN { printf("ready\n"); } tracepoint:sock:inet_sock_set_state { @[args->sport] = count(); }"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Column {
    None,
    /// Empty programs on the cgroup set's default hooks (host only): what the kernel charges
    /// for running programs there at all, the least any tracer using them can cost.
    Floor,
    Trace,
    /// `trace` with `--udp-send-hooks` (host only: the other sets have no such hooks).
    SendHooks,
    Serve,
    Bpftrace,
}

impl Column {
    pub const ALL: [Column; 6] = [
        Column::None,
        Column::Floor,
        Column::Trace,
        Column::SendHooks,
        Column::Serve,
        Column::Bpftrace,
    ];

    /// Where this column's cell is in a row (`ALL` order).
    pub fn index(self) -> usize {
        Column::ALL.iter().position(|&c| c == self).unwrap_or(0)
    }

    pub fn heading(self) -> &'static str {
        match self {
            Column::None => "no tracer",
            Column::Floor => "empty programs, cgroup set's hooks (floor)",
            Column::Trace => "`trace --format json`",
            Column::SendHooks => "`trace --udp-send-hooks`",
            Column::Serve => "`serve`",
            Column::Bpftrace => "bpftrace peer",
        }
    }
}

/// A column, and the hook set forced with `--hooks` (None: port-trace chooses).
#[derive(Debug, Clone)]
pub struct Config {
    pub column: Column,
    pub hooks: Option<String>,
}

impl Config {
    pub fn describe(&self) -> String {
        match &self.hooks {
            Some(h) => format!("{:?} --hooks {h}", self.column).to_lowercase(),
            None => format!("{:?}", self.column).to_lowercase(),
        }
    }
}

/// A running configuration. Dropping it kills the process, so an error mid-round leaves no
/// tracer attached.
pub struct Tracer {
    column: Column,
    child: Option<Child>,
    /// Lines of the pipe that announced readiness, after that announcement.
    lines: Option<Receiver<String>>,
    reader: Option<JoinHandle<()>>,
    /// trace: the thread counting its JSON events.
    counter: Option<JoinHandle<std::io::Result<Counts>>>,
    /// The line that said the programs are attached.
    pub banner: String,
    /// The hook set port-trace says it attached.
    pub hook_set: Option<String>,
    metrics: Option<SocketAddr>,
    patience: Duration,
}

/// What a configuration saw over its whole run.
#[derive(Default)]
pub struct Stopped {
    /// Events lost to a full ring buffer (trace's exit line, serve's counter).
    pub lost: Option<u64>,
    /// trace: events in the loops' namespace per (comm, op).
    pub by_comm: Counts,
}

impl Stopped {
    /// Events trace saw from loop `comm`: of `op`, or of any op when `op` is None.
    pub fn seen(&self, comm: &str, op: Option<&str>) -> u64 {
        self.by_comm
            .iter()
            .filter(|((c, o), _)| c == comm && op.is_none_or(|op| o == op))
            .map(|(_, n)| n)
            .sum()
    }
}

impl Tracer {
    /// Starts `cfg` and waits until it has attached; trace counts the events of namespace
    /// `netns`.
    pub fn start(cfg: &Config, env: &Env, netns: u64) -> Result<Tracer> {
        let mut t = Tracer {
            column: cfg.column,
            child: None,
            lines: None,
            reader: None,
            counter: None,
            banner: String::new(),
            hook_set: None,
            metrics: None,
            patience: env.patience,
        };
        let hooks: Vec<&str> = match &cfg.hooks {
            Some(h) => vec!["--hooks", h],
            None => vec![],
        };
        match cfg.column {
            Column::None => {}
            Column::Floor => {
                let cgroup2 = cgroup2_mount()?;
                let mut cmd = Command::new(env.loops.join(super::loops::FLOOR));
                // Every hook, whatever the caller's environment says (floor.c's FLOOR_SKIP).
                cmd.arg(&cgroup2).env_remove("FLOOR_SKIP");
                let child = spawn(
                    cmd.stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped()),
                )?;
                t.launch_ready_on_stdout(child, "floor")?;
            }
            Column::Trace | Column::SendHooks => {
                let mut cmd = Command::new(&env.port_trace);
                cmd.args(["trace", "--format", "json"]).args(&hooks);
                if cfg.column == Column::SendHooks {
                    cmd.arg("--udp-send-hooks");
                }
                let mut child = spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))?;
                let out = child.stdout.take().context("trace's stdout")?;
                t.counter = Some(events::count_in_background(out, netns));
                let err = child.stderr.take().context("trace's stderr")?;
                t.launch(child, err, None, "tracing:")?;
            }
            Column::Serve => {
                let mut cmd = Command::new(&env.port_trace);
                cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(&hooks);
                let mut child = spawn(cmd.stdout(Stdio::null()).stderr(Stdio::piped()))?;
                let err = child.stderr.take().context("serve's stderr")?;
                t.launch(child, err, None, "tracing:")?;
                t.metrics = Some(serving_address(&t.banner)?);
            }
            Column::Bpftrace => {
                let bpftrace = env.bpftrace.clone().map_err(|e| anyhow!(e))?;
                let mut cmd = Command::new(bpftrace);
                cmd.args(["-e", BPFTRACE_PROGRAM]);
                let child = spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))?;
                t.launch_ready_on_stdout(child, "bpftrace")?;
            }
        }
        t.hook_set = t
            .banner
            .split_once("hook set ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(String::from);
        Ok(t)
    }

    /// [`Self::launch`] for a helper that says "ready" on its stdout; its stderr is kept for
    /// the error if it never does.
    fn launch_ready_on_stdout(&mut self, mut child: Child, name: &str) -> Result<()> {
        let out = child
            .stdout
            .take()
            .with_context(|| format!("{name}'s stdout"))?;
        let mut err = child
            .stderr
            .take()
            .with_context(|| format!("{name}'s stderr"))?;
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        self.launch(child, out, Some(err), "ready")
    }

    /// Takes `child` and waits for a line of its `watched` pipe starting with `ready`; `other`
    /// reads the rest of its output, quoted when it exits first.
    fn launch(
        &mut self,
        child: Child,
        watched: impl Read + Send + 'static,
        other: Option<JoinHandle<String>>,
        ready: &str,
    ) -> Result<()> {
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        self.reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(watched).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        }));
        let deadline = Instant::now() + self.patience;
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(ready) => {
                    self.banner = line;
                    self.lines = Some(rx);
                    return Ok(());
                }
                Ok(line) => said.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "not attached after {:?}: {}",
                        self.patience,
                        said.join(" | ")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().map(|c| c.wait()).transpose()?;
                    let rest = other
                        .map(|h| h.join().unwrap_or_default())
                        .unwrap_or_default();
                    bail!(
                        "exited ({}) before attaching: {} {}",
                        status.map(|s| s.to_string()).unwrap_or_default(),
                        said.join(" | "),
                        rest.trim()
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// serve's counters now (None for the other columns).
    pub fn mark(&self) -> Result<Option<metrics::Counters>> {
        self.metrics.map(metrics::scrape).transpose()
    }

    /// serve: port choices of `op` (any op when None) since `mark`, once serve has drained.
    pub fn seen_since(
        &self,
        mark: Option<metrics::Counters>,
        op: Option<&str>,
    ) -> Result<Option<u64>> {
        let (Some(addr), Some(before)) = (self.metrics, mark) else {
            return Ok(None);
        };
        // serve drains every 100 ms when the ring buffer is not filling.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Some(metrics::scrape(addr)?.since(&before, op)))
    }

    /// Stops the configuration (SIGINT, as a person would) and reads what it saw.
    pub fn stop(mut self) -> Result<Stopped> {
        let mut stopped = Stopped::default();
        if self.column == Column::Serve
            && let Some(addr) = self.metrics
        {
            stopped.lost = Some(metrics::scrape(addr)?.lost as u64);
        }
        let Some(mut child) = self.child.take() else {
            return Ok(stopped);
        };
        // SAFETY: kill() has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + self.patience;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("still running {:?} after SIGINT", self.patience);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let said: Vec<String> = self
            .lines
            .take()
            .map(|rx| rx.iter().collect())
            .unwrap_or_default();
        if !status.success() {
            bail!("exited with {status}: {}", said.join(" | "));
        }
        if matches!(self.column, Column::Trace | Column::SendHooks) {
            stopped.lost = said.iter().find_map(|l| lost_in_summary(l));
            if let Some(counter) = self.counter.take() {
                stopped.by_comm = counter
                    .join()
                    .map_err(|_| anyhow!("the event counter panicked"))?
                    .context("reading trace's events")?;
            }
        }
        Ok(stopped)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(cmd: &mut Command) -> Result<Child> {
    cmd.spawn().with_context(|| format!("starting {cmd:?}"))
}

/// The host's cgroup v2 mount, where the floor attaches (as the cgroup set does by default).
fn cgroup2_mount() -> Result<String> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dir, kind) = (f.nth(1)?, f.next()?);
            (kind == "cgroup2").then(|| dir.to_string())
        })
        .next()
        .context("no cgroup v2 mount for the floor's programs")
}

/// "tracing: ...; serving http://127.0.0.1:PORT/metrics" -> 127.0.0.1:PORT.
fn serving_address(banner: &str) -> Result<SocketAddr> {
    banner
        .split_once("serving http://")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no serving address in {banner:?}"))
}

/// "port-trace: N events, M shown, L lost to a full ring buffer..." -> L.
fn lost_in_summary(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("port-trace: ")?;
    let (_, after) = rest.split_once(" shown, ")?;
    after.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_banners_and_the_exit_line() {
        let b = "tracing: hook set cgroup (17 programs on /sys/fs/cgroup); serving http://127.0.0.1:41234/metrics";
        assert_eq!(
            super::serving_address(b).unwrap(),
            "127.0.0.1:41234".parse().unwrap()
        );
        let l = "port-trace: 46432 events, 46432 shown, 7 lost to a full ring buffer (raise --ring-kib)";
        assert_eq!(super::lost_in_summary(l), Some(7));
        assert_eq!(super::lost_in_summary("tracing: hook set cgroup"), None);
    }

    #[test]
    fn counts_events_by_comm_and_op() {
        let mut s = super::Stopped::default();
        s.by_comm.insert(("pt-connect".into(), "connect".into()), 5);
        s.by_comm.insert(("pt-connect".into(), "bind".into()), 1);
        assert_eq!(s.seen("pt-connect", Some("connect")), 5);
        assert_eq!(s.seen("pt-connect", None), 6);
        assert_eq!(s.seen("pt-getppid", None), 0);
    }
}
