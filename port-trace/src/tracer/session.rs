//! One capture session: probe the kernel, choose and start a hook set (falling back when the
//! kernel refuses one), then hand every decoded event to the caller as the ring buffer fills
//! or the drain timer fires. `trace`, `record` and `serve` are its consumers.

use std::{os::fd::OwnedFd, path::PathBuf, time::Duration};

use port_trace_common::EVENT_SIZE;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
    time::{Interval, MissedTickBehavior},
};

use super::{
    decode::{Clock, decode},
    load::{LoadError, LoadOptions, Tracer, can_load, start_first},
};
use crate::{
    attribution::Attributor,
    event::Event,
    hook_set::{self, HookSet, NoHookSet},
    kernel::probe::KernelSupport,
};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    NoHookSet(#[from] NoHookSet),
    #[error("cannot poll the ring buffer")]
    Poll(#[source] std::io::Error),
    #[error("cannot install a signal handler")]
    Signal(#[source] std::io::Error),
}

/// What to capture and how.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// A forced hook set; otherwise the first usable one.
    pub hooks: Option<HookSet>,
    /// Cgroup v2 directory for the cgroup hook set.
    pub cgroup: Option<PathBuf>,
    /// Also attach the cgroup set's sendmsg hooks.
    pub udp_send_hooks: bool,
    pub ring_kib: u32,
    /// Wake up early once this many KiB wait (default: a quarter of the ring).
    pub wakeup_kib: Option<u32>,
    /// How often to drain when the ring buffer is not filling up.
    pub drain_interval: Duration,
}

/// SIGINT and SIGTERM, installed before anything is attached: a signal that arrives right
/// after the `tracing:` line must still drain and exit cleanly.
pub struct StopSignals {
    int: Signal,
    term: Signal,
}

impl StopSignals {
    pub fn install() -> Result<Self, SessionError> {
        let install = |k| signal(k).map_err(SessionError::Signal);
        Ok(Self {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
        })
    }

    /// Resolves when either signal arrives.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// An attached hook set and its ring buffer.
pub struct Session {
    tracer: Tracer,
    pub kernel: KernelSupport,
    clock: Clock,
    ring_bytes: u32,
    /// A duplicate of the ring buffer's fd: epoll on it reports the kernel's forced wake-ups.
    ring_fd: AsyncFd<OwnedFd>,
    tick: Interval,
    /// Why hook sets preferred to the one running were refused.
    pub skipped: Vec<String>,
    /// Names each event's cgroup and workload.
    attributor: Attributor,
}

impl Session {
    /// Probes the kernel, chooses a hook set and starts it. Needs a tokio runtime.
    pub fn start(opts: &SessionOptions) -> Result<Self, SessionError> {
        let kernel = KernelSupport::probe(true);
        can_load(&kernel)?;
        let sets = hook_set::choose(&kernel, opts.hooks)?;
        let ring_bytes = opts.ring_kib * 1024;
        let load = LoadOptions {
            ring_bytes,
            wakeup_bytes: opts
                .wakeup_kib
                .map(|k| k as u64 * 1024)
                .unwrap_or(ring_bytes as u64 / 4),
            cgroup: opts.cgroup.clone(),
            udp_send_hooks: opts.udp_send_hooks,
        };
        let (tracer, skipped) = start_first(&kernel, &sets, &load)?;
        let dup = tracer
            .ring_fd()
            .try_clone_to_owned()
            .map_err(SessionError::Poll)?;
        // SAFETY: `dup` is an owned descriptor that nothing else registers or closes.
        let ring_fd =
            unsafe { AsyncFd::register(dup) }.map_err(|e| SessionError::Poll(e.into_parts().1))?;
        let mut tick = tokio::time::interval(opts.drain_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let attributor = Attributor::new(kernel.cgroup2.as_deref());
        Ok(Self {
            attributor,
            tracer,
            kernel,
            clock: Clock::now(),
            ring_bytes,
            ring_fd,
            tick,
            skipped,
        })
    }

    /// What this process may not do that a root one could, in one sentence (None: nothing).
    pub fn limits(&self) -> Option<String> {
        let lacking = self
            .kernel
            .caps
            .lacking(&crate::kernel::privilege::OTHER_NAMESPACES);
        (!lacking.is_empty()).then(|| {
            format!(
                "without {}, the port ranges and socket tables of other network namespaces are not read",
                crate::kernel::privilege::describe(&lacking)
            )
        })
    }

    pub fn hook_set(&self) -> HookSet {
        self.tracer.hook_set
    }

    /// `hook set cgroup (17 programs on /sys/fs/cgroup/unified)`, and the paths this set
    /// cannot see here: the body of the `tracing:` line.
    pub fn describe(&self) -> String {
        let set = self.tracer.hook_set;
        let on = match &self.tracer.cgroup {
            Some(dir) => format!(" on {}", dir.display()),
            None => String::new(),
        };
        let blind: Vec<&str> = set
            .coverage(&self.kernel)
            .iter()
            .filter(|r| !r.seen)
            .map(|r| r.path)
            .collect();
        let blind = if blind.is_empty() {
            String::new()
        } else {
            format!("; not seen here: {}", blind.join(", "))
        };
        let note = self
            .tracer
            .note
            .into_iter()
            .chain(self.attributor.limits())
            .map(|n| format!("; {n}"))
            .collect::<String>();
        format!(
            "hook set {set} ({} programs{on}){blind}{note}",
            self.tracer.programs.len()
        )
    }

    /// Waits until the kernel wakes us (the ring buffer is filling) or the drain timer fires.
    pub async fn ready(&mut self) {
        tokio::select! {
            guard = self.ring_fd.readable() => {
                if let Ok(mut g) = guard {
                    g.clear_ready();
                }
            }
            _ = self.tick.tick() => {}
        }
    }

    /// Decodes every waiting record and hands it to `f`; returns the ring buffer's fill before
    /// the drain (0 to 1).
    pub fn drain(&mut self, mut f: impl FnMut(Event)) -> f64 {
        let clock = self.clock;
        let mut failed = 0;
        let attributor = &mut self.attributor;
        let n = self.tracer.drain(|raw| match decode(&raw, &clock) {
            Ok(mut e) => {
                attributor.attribute(&mut e);
                f(e)
            }
            Err(_) => failed += 1,
        });
        self.tracer.count_undecodable(failed);
        ((n * (EVENT_SIZE + 8)) as f64 / self.ring_bytes as f64).min(1.0)
    }

    /// Kernel-side counters: events lost to a full ring buffer, port choices whose socket
    /// could not be read back; and records that did not decode here.
    pub fn losses(&self) -> Losses {
        Losses {
            lost: self.tracer.lost(),
            unresolved: self.tracer.unresolved(),
            undecodable: self.tracer.undecodable(),
        }
    }

    /// The attributor, for its resolver's counters.
    pub fn attributor(&self) -> &Attributor {
        &self.attributor
    }

    /// Wall-clock nanoseconds now, on the clock events are stamped with.
    pub fn now_ns(&self) -> u64 {
        let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        self.clock.wall_ns(boot)
    }
}

/// What a session could not deliver; never silent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Losses {
    pub lost: u64,
    pub unresolved: u64,
    pub undecodable: u64,
}
