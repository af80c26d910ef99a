//! Where the bench runs: the harness (and every tracer it starts) on CPU 0, the loops on CPU 1,
//! all of it ahead of other work on a shared machine; and how much of a CPU the hypervisor and
//! the softirq thread took meanwhile.

use anyhow::{Result, bail};

/// The nice value the bench runs at: concurrent builds take little of its CPUs from it (and
/// from qemu's vCPU threads, which would otherwise time-share with them), so its figures are
/// less noisy. Everything it runs is bounded, so nothing holds the CPUs for long.
const NICE: i32 = -20;

/// Runs this thread, and every thread and process it starts from now on, at [`NICE`] (call it
/// while the harness has one thread: Linux sets the nice value per thread).
pub fn favour() -> Result<()> {
    // SAFETY: setpriority has no memory-safety preconditions; 0 names the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } != 0 {
        bail!("setpriority({NICE}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The harness pinned to CPU 0 (and so every tracer it starts), CPU 1 left to the loops; the
/// old affinity comes back on drop, so what runs after the rounds (qemu) has every CPU again.
pub struct Pinned {
    old: libc::cpu_set_t,
    /// How many CPUs the machine has.
    pub cpus: usize,
}

pub fn pin_harness() -> Result<Pinned> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size and pointer describe `old`, which it fills.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut old) } != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus > 1 {
        // SAFETY: as above, the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU 0 is inside the set's CPU_SETSIZE bits.
        unsafe { libc::CPU_SET(0, &mut set) };
        set_affinity(&set)?;
    }
    Ok(Pinned { old, cpus })
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = set_affinity(&self.old);
    }
}

fn set_affinity(set: &libc::cpu_set_t) -> Result<()> {
    // SAFETY: pid 0 is this thread; the size and pointer describe `set`.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) } != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Seconds the hypervisor has taken from `cpu` so far (`steal` in /proc/stat; the average over
/// CPUs for -1); None where the kernel does not say.
pub fn stolen(cpu: i32) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = if cpu < 0 {
        "cpu".to_string()
    } else {
        format!("cpu{cpu}")
    };
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    // user nice system idle iowait irq softirq steal: the 8th value, in clock ticks.
    let ticks: f64 = line.split_whitespace().nth(8)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let cpus = if cpu < 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    };
    Some(ticks / hz as f64 / cpus as f64)
}

/// Seconds `ksoftirqd/cpu` has run so far (/proc/PID/schedstat): loopback traffic the loop
/// makes is partly received there, and the loop waits for it. That wait is the loop's own work,
/// not contention. None for -1 or where the thread or schedstat is missing.
pub fn softirq_thread_ran(cpu: i32) -> Option<f64> {
    if cpu < 0 {
        return None;
    }
    let name = format!("ksoftirqd/{cpu}");
    let pid = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find(|p| std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| c.trim() == name))?;
    let stat = std::fs::read_to_string(pid.path().join("schedstat")).ok()?;
    let ns: f64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// The machine's CPU pressure and steal so far, to say how busy it was over a stretch of the
/// bench (the VM cannot see what the host does to its vCPU threads).
#[derive(Debug, Clone, Copy)]
pub struct Load {
    at: std::time::Instant,
    /// /proc/pressure/cpu `some total=` in seconds: time at least one task waited for a CPU.
    waited: Option<f64>,
    stolen: Option<f64>,
}

impl Load {
    pub fn now() -> Self {
        let waited = std::fs::read_to_string("/proc/pressure/cpu")
            .ok()
            .and_then(|t| {
                let some = t.lines().find(|l| l.starts_with("some "))?;
                let total = some
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("total="))?;
                Some(total.parse::<f64>().ok()? / 1e6)
            });
        Self {
            at: std::time::Instant::now(),
            waited,
            stolen: stolen(-1),
        }
    }

    /// "tasks waited for a CPU 12% of the time, steal 1%" since `earlier`.
    pub fn since(&self, earlier: &Load) -> String {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let share = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.0}%", 100.0 * (b - a) / secs),
            _ => "?".into(),
        };
        format!(
            "tasks waited for a CPU {} of the time (PSI), hypervisor steal {} of the CPUs",
            share(earlier.waited, self.waited),
            share(earlier.stolen, self.stolen)
        )
    }
}
