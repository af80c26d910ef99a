//! Support for port-trace's root integration tests: network-namespace guards, a tracer running
//! as a child process, and workloads whose ground truth comes from the syscalls themselves.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

pub mod scrape;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// `port-trace analyze FILE --format FORMAT` (`table` or `json`), which must succeed: what it
/// printed.
pub fn analyze(file: &Path, format: &str) -> String {
    let out = Command::new(port_trace_bin())
        .arg("analyze")
        .arg(file)
        .args(["--format", format])
        .output()
        .expect("run port-trace analyze");
    assert!(
        out.status.success(),
        "analyze {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `port-trace analyze FILE --format json`, parsed.
pub fn analyze_json(file: &Path) -> Value {
    serde_json::from_str(&analyze(file, "json")).expect("analyze prints JSON")
}

/// Integration tests share the kernel's hooks and sysctls; run them one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Returns false (and says why) when the tests cannot run here. Under CI a missing
/// prerequisite is a failure, not a skip.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    eprintln!("skipped {test}: needs root to load eBPF programs and make network namespaces");
    false
}

/// The port-trace binary: $PORT_TRACE_BIN, else target/{debug,release}/port-trace.
pub fn port_trace_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PORT_TRACE_BIN") {
        return p.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["debug", "release"] {
        let p = root.join("target").join(profile).join("port-trace");
        if p.exists() {
            return p;
        }
    }
    panic!("port-trace is not built: run `cargo xtask test` (or set PORT_TRACE_BIN)");
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct Netns {
    pub name: String,
    pub inode: u64,
}

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

impl Netns {
    pub fn new() -> Result<Self> {
        let name = format!(
            "pt-test-{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns {
            inode: fs::metadata(format!("/run/netns/{name}"))?.ino(),
            name,
        };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Narrows (or widens) the namespace's ephemeral range, `net.ipv4.ip_local_port_range`.
    pub fn set_port_range(&self, low: u16, high: u16) -> Result<()> {
        self.sysctl("net.ipv4.ip_local_port_range", &format!("{low} {high}"))
    }

    /// Runs `args` in this namespace with `ip netns exec`; returns its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// Runs `f` on a new thread that has entered this namespace and is named `comm`.
    /// Returns f's result and the thread id.
    pub fn run<T: Send>(&self, comm: &str, f: impl FnOnce() -> T + Send) -> Result<(T, u32)> {
        self.on_thread(Some(comm), || {
            let tid = nix::unistd::gettid().as_raw() as u32;
            (f(), tid)
        })
    }

    /// Runs `f` on a new thread that has entered this namespace; sockets it makes stay in it.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.on_thread(None, f)
    }

    fn on_thread<T: Send>(&self, comm: Option<&str>, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let mut thread = std::thread::Builder::new();
        if let Some(comm) = comm {
            thread = thread.name(comm.to_string());
        }
        std::thread::scope(|scope| {
            thread
                .spawn_scoped(scope, move || -> Result<T> {
                    let f_ns = fs::File::open(&path)?;
                    // setns(CLONE_NEWNET) moves only this thread.
                    nix::sched::setns(f_ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
                    Ok(f())
                })?
                .join()
                .map_err(|_| anyhow::anyhow!("workload thread panicked"))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `port-trace trace --format json` running as a child, filtered to one namespace.
pub struct TraceProcess {
    child: Child,
    stderr: BufReader<ChildStderr>,
    /// Reads stdout as it comes, so a full pipe never stalls the tracer's drain loop.
    stdout: Option<std::thread::JoinHandle<std::io::Result<String>>>,
    pub banner: String,
    /// What it said on stderr before the banner (fallbacks, limits).
    pub preamble: String,
}

/// A test that fails before `stop()` must not leave a tracer or daemon running.
impl Drop for TraceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl TraceProcess {
    /// Starts `port-trace trace --format json EXTRA...` and waits for its `tracing:` line.
    /// $PORT_TRACE_HOOKS forces a hook set (the VM matrix runs these tests once per set).
    pub fn start(extra: &[&str]) -> Result<Self> {
        let hooks = std::env::var("PORT_TRACE_HOOKS").unwrap_or_default();
        let mut args = vec!["trace", "--format", "json"];
        if !hooks.is_empty() {
            args.extend_from_slice(&["--hooks", &hooks]);
        }
        args.extend_from_slice(extra);
        Self::spawn(&args)
    }

    /// Starts `port-trace ARGS...` and waits until it prints its `tracing:` line (or exits).
    /// `port-trace serve` on a free loopback port, refreshing every second, with `extra`
    /// flags: the daemon and the address it serves.
    pub fn serve(extra: &[&str]) -> Result<(Self, SocketAddr)> {
        let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, scrape::free_port()));
        let listen = addr.to_string();
        let mut args = vec!["serve", "--listen", &listen, "--refresh-interval", "1s"];
        args.extend_from_slice(extra);
        Ok((Self::spawn(&args)?, addr))
    }

    pub fn spawn(args: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(port_trace_bin());
        cmd.args(args);
        Self::spawn_command(cmd)
    }

    /// As `spawn`, for a command that runs port-trace (e.g. under `setpriv`).
    pub fn spawn_command(mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn port-trace")?;
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if stderr.read_line(&mut line)? == 0 {
                let status = child.wait()?;
                bail!("port-trace exited ({status}) before tracing: {seen}");
            }
            if line.starts_with("tracing:") {
                let mut out = child.stdout.take().unwrap();
                let stdout = std::thread::spawn(move || {
                    let mut s = String::new();
                    out.read_to_string(&mut s).map(|_| s)
                });
                return Ok(Self {
                    child,
                    stderr,
                    stdout: Some(stdout),
                    banner: line.trim().to_string(),
                    preamble: seen,
                });
            }
            seen.push_str(&line);
        }
    }

    /// The child's process id (for reading its /proc entries).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn in_netns(ns: &Netns) -> Result<Self> {
        Self::start(&["--netns", &ns.inode.to_string()])
    }

    /// SIGINT, then every event it printed, and the rest of its stderr.
    pub fn stop(self) -> Result<(Vec<Value>, String)> {
        self.stop_with(nix::sys::signal::Signal::SIGINT)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)?;
        Ok(())
    }

    /// Sends `sig`; the process must exit 0. Returns its events and the rest of its stderr.
    pub fn stop_with(mut self, sig: nix::sys::signal::Signal) -> Result<(Vec<Value>, String)> {
        self.signal(sig)?;
        let out = self
            .stdout
            .take()
            .expect("stop() runs once")
            .join()
            .map_err(|_| anyhow::anyhow!("stdout reader panicked"))??;
        let mut err = String::new();
        self.stderr.read_to_string(&mut err)?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("port-trace exited with {status}: {err}");
        }
        let events = out
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad JSON line: {l}")))
            .collect::<Result<Vec<Value>>>()?;
        Ok((events, err))
    }
}

/// What a workload did, from the syscall's own answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truth {
    pub op: &'static str,
    pub proto: &'static str,
    pub family: &'static str,
    /// From getsockname(); 0 on failure.
    pub port: u16,
    pub dest: Option<SocketAddr>,
    /// "ok" or the errno name.
    pub result: String,
}

impl Truth {
    pub fn ok(
        op: &'static str,
        proto: &'static str,
        family: &'static str,
        port: u16,
        dest: Option<SocketAddr>,
    ) -> Self {
        Self {
            op,
            proto,
            family,
            port,
            dest,
            result: "ok".into(),
        }
    }

    pub fn failed(
        op: &'static str,
        proto: &'static str,
        family: &'static str,
        dest: Option<SocketAddr>,
        err: &std::io::Error,
    ) -> Self {
        let errno = err.raw_os_error().unwrap_or(0);
        Self {
            op,
            proto,
            family,
            port: 0,
            dest,
            result: format!("{:?}", nix::errno::Errno::from_raw(errno)),
        }
    }

    fn matches(&self, e: &Value) -> bool {
        let dest_ok = match self.dest {
            Some(d) => {
                e["daddr"].as_str() == Some(&d.ip().to_string())
                    && e["dport"].as_u64() == Some(d.port() as u64)
            }
            None => e["daddr"].is_null() && e["dport"].is_null(),
        };
        e["op"] == self.op
            && e["proto"] == self.proto
            && e["family"] == self.family
            && e["port"].as_u64() == Some(self.port as u64)
            && e["result"] == self.result.as_str()
            && dest_ok
    }
}

/// Every truth is reported exactly once by thread `tid` named `comm` of this process, and
/// nothing else is reported. Returns a readable diff on mismatch.
pub fn assert_same(events: &[Value], truths: &[Truth], tid: u32, comm: &str) {
    let pid = std::process::id() as u64;
    let mut unmatched: Vec<&Value> = events.iter().collect();
    let mut missing = Vec::new();
    for t in truths {
        match unmatched.iter().position(|e| t.matches(e)) {
            Some(i) => {
                let e = unmatched.remove(i);
                assert_eq!(e["pid"].as_u64(), Some(pid), "pid of {e}");
                assert_eq!(e["tid"].as_u64(), Some(tid as u64), "tid of {e}");
                assert_eq!(e["comm"], comm, "comm of {e}");
                assert_eq!(e["uid"].as_u64(), Some(0), "uid of {e}");
                assert!(e["cgroup_id"].as_u64().unwrap_or(0) > 0, "cgroup_id of {e}");
            }
            None => missing.push(t.clone()),
        }
    }
    // Expected vs seen per row, for the record (`cargo xtask test -- --nocapture`).
    let mut rows: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for t in truths {
        let row = format!("{} {} {} {}", t.op, t.proto, t.family, t.result);
        rows.entry(row.clone()).or_default().0 += 1;
        if !missing.contains(t) {
            rows.entry(row).or_default().1 += 1;
        }
    }
    for (row, (expected, seen)) in &rows {
        eprintln!("  {row:<40} expected {expected:>3}  seen {seen:>3}");
    }
    // Port-search latency, where the hook set measures it (fexit, kprobe).
    for e in events {
        if let Some(ns) = e["latency_ns"].as_u64() {
            eprintln!(
                "  latency {} {} {} {} {ns} ns",
                e["op"].as_str().unwrap_or(""),
                e["proto"].as_str().unwrap_or(""),
                e["family"].as_str().unwrap_or(""),
                e["result"].as_str().unwrap_or("")
            );
        }
    }
    assert!(
        missing.is_empty() && unmatched.is_empty(),
        "port-trace disagrees with ground truth\nnot reported: {missing:#?}\ninvented: {unmatched:#?}"
    );
}
