//! One conntrack watcher per network namespace: a thread that joins the namespace (netlink
//! sockets see only the namespace they were made in), dumps the conntrack table to learn the
//! live translations, then follows NEW/DESTROY events and polls the per-CPU statistics.

use std::{
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterProtoFamily, conntrack::ConntrackMessage,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::sched::{CloneFlags, setns};
use tokio::sync::mpsc;

use super::{
    NatError,
    decode::{CpuStats, CtMessage, IPCTNL_MSG_CT_GET_STATS_CPU, decode, split},
    occupancy::{Occupancy, SpaceKey},
};
use crate::{
    event::{Errno, Event, Family, HookId, NatInfo, NatRange, Op, Outcome, Proto},
    netns::snapshot::wall_ns,
};

/// `NFNLGRP_CONNTRACK_NEW` and `NFNLGRP_CONNTRACK_DESTROY` (linux/netfilter/nfnetlink.h).
const GROUP_NEW: u32 = 1;
const GROUP_DESTROY: u32 = 3;
/// How many of a namespace's fullest NAT spaces each report carries.
pub const TOP_SPACES: usize = 10;
/// Most failure events made from one statistics poll; the counters keep the full count.
const MAX_FAILURE_EVENTS_PER_POLL: u64 = 1000;

/// Which namespace to watch.
#[derive(Debug, Clone)]
pub struct Target {
    /// The namespace's inode (the `netns` of events and labels).
    pub netns: u32,
    /// A file to setns() into; None for our own namespace.
    pub path: Option<PathBuf>,
}

/// What a watcher reports.
#[derive(Debug, Clone)]
pub enum NatUpdate {
    /// A NAT allocation or failure, as an event.
    Event(Event),
    /// The namespace's conntrack counters (summed over CPUs) and its fullest NAT spaces.
    Status {
        netns: u32,
        stats: CpuStats,
        range: NatRange,
        top: Vec<(SpaceKey, u32)>,
        /// Events lost: the kernel's socket buffer overflowed (ENOBUFS) or our channel was full.
        lost: u64,
    },
}

/// Watcher settings.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    pub range: NatRange,
    /// How often the statistics are read.
    pub stats_interval: Duration,
}

/// Starts watching `target`. Returns once the watcher has subscribed and read the table, or
/// with the reason it cannot (module missing, capability missing).
pub fn spawn(
    target: Target,
    opts: WatchOptions,
    tx: mpsc::Sender<NatUpdate>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, NatError> {
    let ns_file = match &target.path {
        Some(p) => Some(File::open(p).map_err(|source| NatError::Open {
            path: p.clone(),
            source,
        })?),
        None => None,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("nat-{}", target.netns))
        .spawn(move || {
            let start = || -> Result<Watcher, NatError> {
                if let Some(f) = &ns_file {
                    setns(f, CloneFlags::CLONE_NEWNET).map_err(NatError::Setns)?;
                }
                Watcher::open(target.netns, opts)
            };
            match start() {
                Ok(mut w) => {
                    let _ = ready_tx.send(Ok(()));
                    w.run(&tx, &stop);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(NatError::Thread)?;
    ready_rx.recv().map_err(|_| NatError::ThreadDied)??;
    Ok(handle)
}

/// Whether a receive handled anything.
enum Received {
    Some,
    None,
}

struct Watcher {
    netns: u32,
    opts: WatchOptions,
    events: Socket,
    requests: Socket,
    occupancy: Occupancy,
    /// Counters at the last poll; None before the first.
    last: Option<CpuStats>,
    lost: u64,
    seq: u32,
}

fn open_socket() -> Result<Socket, NatError> {
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(NatError::from_io)?;
    s.bind_auto().map_err(NatError::from_io)?;
    Ok(s)
}

impl Watcher {
    fn open(netns: u32, opts: WatchOptions) -> Result<Self, NatError> {
        let events = open_socket()?;
        let _ = events.set_rx_buf_sz(8 << 20);
        for g in [GROUP_NEW, GROUP_DESTROY] {
            events.add_membership(g).map_err(NatError::from_io)?;
        }
        set_timeout(&events, Duration::from_millis(200))?;
        let requests = open_socket()?;
        requests
            .connect(&SocketAddr::new(0, 0))
            .map_err(NatError::from_io)?;
        set_timeout(&requests, Duration::from_secs(5))?;
        let mut w = Watcher {
            netns,
            opts,
            events,
            requests,
            occupancy: Occupancy::default(),
            last: None,
            lost: 0,
            seq: 0,
        };
        // Both also prove that nf_conntrack_netlink answers in this namespace.
        w.resync()?;
        w.last = Some(w.read_stats()?);
        Ok(w)
    }

    /// Reads the whole conntrack table again: the live translations, without events.
    fn resync(&mut self) -> Result<(), NatError> {
        self.occupancy.clear();
        let mut seeded = Vec::new();
        self.dump(ConntrackMessage::Get(vec![]), |m| {
            if let CtMessage::New(c) = m
                && let Some(n) = c.source_nat()
            {
                seeded.push(n);
            }
        })?;
        for n in &seeded {
            self.occupancy.insert(n);
        }
        Ok(())
    }

    fn read_stats(&mut self) -> Result<CpuStats, NatError> {
        let mut total = CpuStats::default();
        let asked = self.dump(
            ConntrackMessage::Other {
                message_type: IPCTNL_MSG_CT_GET_STATS_CPU,
                attributes: vec![],
            },
            |m| {
                if let CtMessage::Stats { stats, .. } = m {
                    total.add(&stats);
                }
            },
        );
        match asked {
            Ok(()) => Ok(total),
            // Older kernels without the netlink request still have the proc file.
            Err(e) => std::fs::read_to_string(
                // This thread's namespace: /proc/net follows the process's main thread.
                "/proc/thread-self/net/stat/nf_conntrack",
            )
            .ok()
            .and_then(|t| CpuStats::parse_proc(&t))
            .ok_or(e),
        }
    }

    /// Sends a dump request and hands every reply to `f` until the dump ends.
    fn dump(
        &mut self,
        request: ConntrackMessage,
        f: impl FnMut(CtMessage),
    ) -> Result<(), NatError> {
        self.seq += 1;
        dump(&self.requests, self.seq, request, f)
    }

    fn run(&mut self, tx: &mpsc::Sender<NatUpdate>, stop: &AtomicBool) {
        // The counters failures are measured from, first: consumers count from them.
        if let Some(baseline) = self.last {
            self.status(tx, baseline);
        }
        let mut next_poll = Instant::now() + self.opts.stats_interval;
        while !stop.load(Ordering::Relaxed) {
            if self.receive(tx).is_err() {
                return;
            }
            if Instant::now() >= next_poll {
                next_poll = Instant::now() + self.opts.stats_interval;
                self.poll(tx);
            }
        }
        // The failures counted since the last poll are reported before the watcher ends.
        self.poll(tx);
    }

    /// Handles one datagram of events, or none when the receive timeout passes first.
    fn receive(&mut self, tx: &mpsc::Sender<NatUpdate>) -> Result<Received, ()> {
        match self.events.recv_from_full() {
            Ok((data, _)) => {
                for one in split(&data) {
                    match decode(one) {
                        Ok(m) => self.on_message(m, tx),
                        Err(_) => self.lost += 1,
                    }
                }
                Ok(Received::Some)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // Events were lost: the table is the truth again.
                self.lost += 1;
                let _ = self.resync();
                Ok(Received::Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Received::None),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(Received::Some),
            Err(e) => {
                eprintln!(
                    "port-trace: NAT watcher of namespace {} stopped: {e}",
                    self.netns
                );
                Err(())
            }
        }
    }

    /// Handles every event already queued: a NAT failure the counters show next was caused by
    /// mappings whose NEW events were queued before it.
    fn catch_up(&mut self, tx: &mpsc::Sender<NatUpdate>) {
        if self.events.set_non_blocking(true).is_err() {
            return;
        }
        // Bounded: a queue refilling as fast as it drains must not starve the poll.
        for _ in 0..100_000 {
            if !matches!(self.receive(tx), Ok(Received::Some)) {
                break;
            }
        }
        let _ = self.events.set_non_blocking(false);
    }

    fn on_message(&mut self, m: CtMessage, tx: &mpsc::Sender<NatUpdate>) {
        match m {
            CtMessage::New(c) => {
                let Some(n) = c.source_nat() else { return };
                let in_use = self.occupancy.insert(&n);
                let e = self.nat_event(
                    (n.orig.proto, n.translated_addr, n.translated_port),
                    Some((n.peer_addr, n.peer_port)),
                    Outcome::Ok,
                    HookId::ConntrackNew,
                    NatInfo {
                        orig_saddr: Some(n.orig.src),
                        orig_sport: Some(n.orig.sport),
                        orig_daddr: (n.orig.dst != n.peer_addr).then_some(n.orig.dst),
                        orig_dport: (n.orig.dport != n.peer_port).then_some(n.orig.dport),
                        in_use,
                        range: self.opts.range,
                    },
                );
                self.send(tx, NatUpdate::Event(e));
            }
            CtMessage::Destroy(c) => self.occupancy.remove(&c.orig),
            _ => {}
        }
    }

    /// Reads the counters; a rise of `insert_failed` is that many connections whose NAT
    /// mapping failed, made into failure events charged to the full space, if one.
    fn poll(&mut self, tx: &mpsc::Sender<NatUpdate>) {
        self.catch_up(tx);
        let Ok(now) = self.read_stats() else { return };
        let failed = self
            .last
            .map_or(0, |l| now.insert_failed.saturating_sub(l.insert_failed));
        self.last = Some(now);
        let space = self.occupancy.failing_space(&self.opts.range);
        for _ in 0..failed.min(MAX_FAILURE_EVENTS_PER_POLL) {
            let (proto, saddr, dest, in_use) = match space {
                Some((k, c)) => (k.proto, k.translated, Some((k.daddr, k.dport)), c),
                None => (Proto::Tcp, IpAddr::from([0, 0, 0, 0]), None, 0),
            };
            let e = self.nat_event(
                (proto, saddr, 0),
                dest,
                Outcome::Err(Errno(libc::EADDRNOTAVAIL)),
                HookId::ConntrackStats,
                NatInfo {
                    orig_saddr: None,
                    orig_sport: None,
                    orig_daddr: None,
                    orig_dport: None,
                    in_use,
                    range: self.opts.range,
                },
            );
            self.send(tx, NatUpdate::Event(e));
        }
        self.status(tx, now);
    }

    /// A NAT event in this namespace: `(proto, translated address, translated port)` toward
    /// `dest`. No task is known: conntrack sees packets, not processes.
    fn nat_event(
        &self,
        (proto, saddr, port): (Proto, IpAddr, u16),
        dest: Option<(IpAddr, u16)>,
        result: Outcome,
        hook: HookId,
        nat: NatInfo,
    ) -> Event {
        Event {
            ts_ns: wall_ns(),
            op: Op::Nat,
            proto,
            family: family(saddr),
            port,
            saddr,
            daddr: dest.map(|d| d.0),
            dport: dest.map(|d| d.1),
            result,
            pid: 0,
            tid: 0,
            comm: String::new(),
            uid: 0,
            cgroup_id: 0,
            netns: self.netns,
            hook,
            latency_ns: None,
            cgroup: None,
            workload: None,
            nat: Some(nat),
        }
    }

    /// Reports the counters and the fullest spaces.
    fn status(&mut self, tx: &mpsc::Sender<NatUpdate>, stats: CpuStats) {
        let status = NatUpdate::Status {
            netns: self.netns,
            stats,
            range: self.opts.range,
            top: self.occupancy.top(TOP_SPACES),
            lost: self.lost,
        };
        self.send(tx, status);
    }

    fn send(&mut self, tx: &mpsc::Sender<NatUpdate>, u: NatUpdate) {
        if tx.try_send(u).is_err() {
            self.lost += 1;
        }
    }
}

/// Sends a dump request on `socket` and hands every reply to `f` until the dump ends.
fn dump(
    socket: &Socket,
    seq: u32,
    request: ConntrackMessage,
    mut f: impl FnMut(CtMessage),
) -> Result<(), NatError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        header,
        NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            request,
        )
        .into(),
    );
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0).map_err(NatError::from_io)?;
    // A dump is finite; this bounds it should the kernel never say "done".
    for _ in 0..1_000_000 {
        let (data, _) = socket.recv_from_full().map_err(NatError::from_io)?;
        for one in split(&data) {
            match decode(one).map_err(NatError::Decode)? {
                CtMessage::Done => return Ok(()),
                CtMessage::Error(0) => {}
                CtMessage::Error(code) => {
                    return Err(NatError::from_io(std::io::Error::from_raw_os_error(-code)));
                }
                m => f(m),
            }
        }
    }
    Err(NatError::Decode("a conntrack dump did not end".into()))
}

/// Whether conntrack netlink answers in the calling thread's namespace (`check`): the number
/// of CPUs that reported statistics.
pub fn probe() -> Result<usize, NatError> {
    let socket = open_socket()?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(NatError::from_io)?;
    set_timeout(&socket, Duration::from_secs(5))?;
    let mut cpus = 0;
    dump(
        &socket,
        1,
        ConntrackMessage::Other {
            message_type: IPCTNL_MSG_CT_GET_STATS_CPU,
            attributes: vec![],
        },
        |m| {
            if matches!(m, CtMessage::Stats { .. }) {
                cpus += 1;
            }
        },
    )?;
    Ok(cpus)
}

fn family(a: IpAddr) -> Family {
    match a {
        IpAddr::V4(_) => Family::Inet,
        IpAddr::V6(_) => Family::Inet6,
    }
}

fn set_timeout(s: &Socket, d: Duration) -> Result<(), NatError> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket fd and a timeval that lives across the call, with its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(NatError::from_io(std::io::Error::last_os_error()));
    }
    Ok(())
}
