//! Other tracers on the machine. A BPF program someone else attached (another port-trace under
//! test, a bpftrace) taxes every column alike, the "no tracer" one included: a syscall
//! tracepoint slows every syscall. Each loop waits a little for such programs to go, and is
//! marked disturbed when one was there while it ran, so the figures can leave it out
//! (`rounds` also marks a loop that waited long for its CPU).

use std::{
    fs,
    sync::mpsc,
    time::{Duration, Instant},
};

/// How often a running loop looks for other tracers: cheap enough for the harness's CPU.
const POLL: Duration = Duration::from_millis(250);

/// Processes other than `ours` (and this one) holding a BPF program or link fd, as
/// "comm (pid)".
pub fn other_tracers(ours: Option<u32>) -> Vec<String> {
    let me = std::process::id();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || Some(pid) == ours {
            continue;
        }
        // A process that exits meanwhile simply holds nothing.
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds_bpf = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|t| {
                let t = t.to_string_lossy();
                t == "anon_inode:bpf-prog" || t == "anon_inode:bpf_link"
            })
        });
        if holds_bpf {
            let comm = fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            found.push(format!("{} ({pid})", comm.trim()));
        }
    }
    found
}

/// Waits up to `patience` for [`other_tracers`] to be gone.
pub fn wait(ours: Option<u32>, patience: Duration) {
    let deadline = Instant::now() + patience;
    while !other_tracers(ours).is_empty() && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
}

/// Runs `f`, looking for other tracers before, during and after it; returns f's result and
/// every one seen.
pub fn watch<T>(ours: Option<u32>, f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let watcher = scope.spawn(move || {
            let mut seen: Vec<String> = Vec::new();
            loop {
                for t in other_tracers(ours) {
                    if !seen.contains(&t) {
                        seen.push(t);
                    }
                }
                if stopped.recv_timeout(POLL) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return seen;
                }
            }
        });
        let out = f();
        let _ = stop.send(());
        let mut seen = watcher.join().unwrap_or_default();
        for t in other_tracers(ours) {
            if !seen.contains(&t) {
                seen.push(t);
            }
        }
        (out, seen)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_never_another_tracer() {
        let me = format!("({})", std::process::id());
        let (value, seen) = super::watch(None, || 7);
        assert_eq!(value, 7);
        assert!(seen.iter().all(|t| !t.ends_with(&me)));
    }
}
