//! What the serve process holds, read from /proc: resident memory, open fds, threads, CPU time.

use std::{fs, time::Duration};

use anyhow::{Context, Result};

/// One reading of /proc/PID.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    /// User + system time since the process started.
    pub cpu: Duration,
}

pub fn read(pid: u32) -> Result<Reading> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("list /proc/{pid}/fd"))?
        .count() as u64;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(Reading {
        rss_kib: field("VmRSS:").context("VmRSS in /proc/PID/status")?,
        threads: field("Threads:").context("Threads in /proc/PID/status")?,
        fds,
        cpu: cpu_time(&stat).context("utime/stime in /proc/PID/stat")?,
    })
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line; the command name, in
/// parentheses, may hold spaces, so fields are counted after its closing parenthesis.
fn cpu_time(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime (14) is index 11.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_cpu_time_past_a_name_with_spaces() {
        let stat = "42 (port trace) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 5 0";
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(
            super::cpu_time(stat),
            Some(std::time::Duration::from_millis(300 * 1000 / hz))
        );
    }

    #[test]
    fn reads_this_process() {
        let r = super::read(std::process::id()).unwrap();
        assert!(r.rss_kib > 0 && r.fds > 0 && r.threads > 0);
    }
}
