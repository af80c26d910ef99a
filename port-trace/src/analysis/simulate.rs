//! Seeded simulators of port-selection algorithms (tests only).
//!
//! RFC 6056 section 3.3 algorithms 1-5, Linux `__inet_hash_connect` (5.18+
//! and pre-5.12), Linux `inet_csk_get_port` for bind(0) and
//! `udp_lib_get_port` for UDP. A fixed random set of ports is "occupied"
//! (held by listeners or bind()), which every algorithm skips.

use super::{PortRange, Sample, StreamKey};
use crate::analysis::pattern::{CounterScope, Pattern};
use crate::event::{Family, Op, Proto};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};

/// A port-selection algorithm to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RFC 6056 3.3.1: random port, then linear probe by 1.
    Rfc1SimpleRandom,
    /// RFC 6056 3.3.2: random port, a fresh random port after each collision.
    Rfc2RandomRetry,
    /// RFC 6056 3.3.3: `F(dest)` offset + one global counter, +1 per try.
    Rfc3SimpleHash,
    /// RFC 6056 3.3.4: `F(dest)` offset + `table[G(dest)]`, +1 per try.
    Rfc4DoubleHash,
    /// RFC 6056 3.3.5: global counter += `random % 500 + 1` per try.
    Rfc5RandomIncrements,
    /// Linux >= 5.18 connect(): 2^16-entry perturbation table, step 2,
    /// `+= max(i, rand(0..8)*2) + 2`, secret re-salted every 10 s.
    LinuxConnect,
    /// Linux 4.6..5.11 connect(): one static `hint`, `+= i + 2`.
    LinuxConnectPre512,
    /// Linux bind(0): random odd start, probe by 2.
    LinuxBind,
    /// Linux UDP bind(0)/autobind: random first port, odd stride per chain.
    LinuxUdp,
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::Rfc1SimpleRandom,
        Algorithm::Rfc2RandomRetry,
        Algorithm::Rfc3SimpleHash,
        Algorithm::Rfc4DoubleHash,
        Algorithm::Rfc5RandomIncrements,
        Algorithm::LinuxConnect,
        Algorithm::LinuxConnectPre512,
        Algorithm::LinuxBind,
        Algorithm::LinuxUdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rfc1SimpleRandom => "rfc6056-alg1",
            Algorithm::Rfc2RandomRetry => "rfc6056-alg2",
            Algorithm::Rfc3SimpleHash => "rfc6056-alg3",
            Algorithm::Rfc4DoubleHash => "rfc6056-alg4",
            Algorithm::Rfc5RandomIncrements => "rfc6056-alg5",
            Algorithm::LinuxConnect => "linux-connect",
            Algorithm::LinuxConnectPre512 => "linux-connect<5.12",
            Algorithm::LinuxBind => "linux-bind",
            Algorithm::LinuxUdp => "linux-udp",
        }
    }

    /// The verdict the classifier should reach with several destinations: pattern and, for
    /// a counter, its scope.
    pub fn expected(self) -> (Pattern, Option<CounterScope>) {
        match self {
            Algorithm::Rfc1SimpleRandom
            | Algorithm::Rfc2RandomRetry
            | Algorithm::LinuxBind
            | Algorithm::LinuxUdp => (Pattern::Random, None),
            Algorithm::Rfc3SimpleHash
            | Algorithm::Rfc5RandomIncrements
            | Algorithm::LinuxConnectPre512 => (Pattern::Sequential, Some(CounterScope::Global)),
            Algorithm::Rfc4DoubleHash | Algorithm::LinuxConnect => {
                (Pattern::Sequential, Some(CounterScope::PerDestination))
            }
        }
    }

    /// Whether the algorithm serves connect() (has destinations).
    pub fn is_connect(self) -> bool {
        !matches!(self, Algorithm::LinuxBind | Algorithm::LinuxUdp)
    }
}

/// What the simulated machine does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Workload {
    pub range: PortRange,
    /// Destinations connect() picks from, uniformly at random per event.
    pub destinations: usize,
    /// Number of port choices.
    pub events: usize,
    /// Mean time between port choices (exponential).
    pub mean_interval_ns: u64,
    /// Share of ports held by other sockets (skipped by every algorithm).
    pub occupied_fraction: f64,
    /// Additional share of the ports of `low`'s parity held (e.g. by another
    /// tenant's connections): Linux connect() then falls back to the other
    /// parity, and a stream's ports split between both.
    pub low_parity_occupied: f64,
}

impl Default for Workload {
    /// 4 destinations, 200 events, one every 200 ms on average (about 40 s,
    /// so Linux re-salts about 4 times), 1 % of ports occupied.
    fn default() -> Self {
        Workload {
            range: super::DEFAULT_RANGE,
            destinations: 4,
            events: 200,
            mean_interval_ns: 200_000_000,
            occupied_fraction: 0.01,
            low_parity_occupied: 0.0,
        }
    }
}

/// RFC 6056 algorithm 4's table length (the RFC leaves it open).
const RFC4_TABLE: usize = 1024;
/// Linux >= 5.18 `INET_TABLE_PERTURB_SIZE`.
const LINUX_TABLE: usize = 1 << 16;
/// Linux re-salts the port-offset secret every 10 s (5.18+).
const RESALT_NS: u64 = 10_000_000_000;
/// RFC 6056 algorithm 5's `N`.
const RFC5_N: u64 = 500;
/// UDP hash table size used for the stride (`udptable->mask + 1`).
const UDP_HTABLE: u32 = 128;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A keyed hash standing in for siphash/md5 of the connection tuple.
fn keyed_hash(secret: u64, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(splitmix(secret), |h, &p| splitmix(h ^ splitmix(p)))
}

struct Sim {
    rng: SmallRng,
    low: u32,
    size: u32,
    occupied: Vec<bool>,
}

impl Sim {
    fn free(&self, off: u32) -> bool {
        !self.occupied[off as usize]
    }
}

/// Runs `alg` on `workload` with `seed`; samples come in time order.
pub fn simulate(alg: Algorithm, workload: &Workload, seed: u64) -> Vec<Sample> {
    let ring = super::stats::Ring::new(workload.range);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5EED_0F90);
    let occupied: Vec<bool> = (0..ring.size)
        .map(|off| {
            rng.random_bool(workload.occupied_fraction)
                || (workload.low_parity_occupied > 0.0
                    && off % 2 == 0
                    && rng.random_bool(workload.low_parity_occupied))
        })
        .collect();
    let mut sim = Sim {
        rng,
        low: u32::from(ring.low),
        size: ring.size,
        occupied,
    };
    let saddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    let dests: Vec<(IpAddr, u16)> = (0..workload.destinations.max(1))
        .map(|i| {
            (
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1 + i as u8)),
                [443, 80, 8080, 22][i % 4],
            )
        })
        .collect();

    let secret = sim.rng.random::<u64>();
    let secret2 = sim.rng.random::<u64>();
    let mut counter: u64 = sim.rng.random::<u32>().into();
    let mut table: Vec<u32> = match alg {
        Algorithm::Rfc4DoubleHash => (0..RFC4_TABLE).map(|_| sim.rng.random()).collect(),
        Algorithm::LinuxConnect => (0..LINUX_TABLE).map(|_| sim.rng.random()).collect(),
        _ => Vec::new(),
    };
    let mut held: VecDeque<u32> = VecDeque::new();

    let mut ts: u64 = 1_000_000_000;
    let mut out = Vec::with_capacity(workload.events);
    for _ in 0..workload.events {
        let u: f64 = sim.rng.random_range(f64::EPSILON..1.0);
        ts += (-u.ln() * workload.mean_interval_ns as f64) as u64;
        let d = dests[sim.rng.random_range(0..dests.len())];
        let dw = hash_ip(&d) ^ (u64::from(d.1) << 32);
        let off = match alg {
            Algorithm::Rfc1SimpleRandom => {
                let mut off = sim.rng.random_range(0..sim.size);
                for _ in 0..sim.size {
                    if sim.free(off) {
                        break;
                    }
                    off = (off + 1) % sim.size;
                }
                off
            }
            Algorithm::Rfc2RandomRetry => {
                let mut off = sim.rng.random_range(0..sim.size);
                for _ in 0..sim.size {
                    if sim.free(off) {
                        break;
                    }
                    off = sim.rng.random_range(0..sim.size);
                }
                off
            }
            Algorithm::Rfc3SimpleHash => {
                let offset = keyed_hash(secret, &[dw]);
                let mut off = 0;
                for _ in 0..sim.size {
                    off = (counter.wrapping_add(offset) % u64::from(sim.size)) as u32;
                    counter = counter.wrapping_add(1);
                    if sim.free(off) {
                        break;
                    }
                }
                off
            }
            Algorithm::Rfc4DoubleHash => {
                let offset = keyed_hash(secret, &[dw]);
                let index = (keyed_hash(secret2, &[dw]) % RFC4_TABLE as u64) as usize;
                let mut off = 0;
                for _ in 0..sim.size {
                    off =
                        (offset.wrapping_add(u64::from(table[index])) % u64::from(sim.size)) as u32;
                    table[index] = table[index].wrapping_add(1);
                    if sim.free(off) {
                        break;
                    }
                }
                off
            }
            Algorithm::Rfc5RandomIncrements => {
                let mut off = 0;
                for _ in 0..sim.size {
                    counter = counter.wrapping_add(sim.rng.random_range(0..RFC5_N) + 1);
                    off = (counter % u64::from(sim.size)) as u32;
                    if sim.free(off) {
                        break;
                    }
                }
                off
            }
            Algorithm::LinuxConnect => {
                let h = keyed_hash(secret, &[dw, ts / RESALT_NS]);
                let index = (h as usize) & (LINUX_TABLE - 1);
                let base = u64::from(table[index]) + (h >> 32);
                let (off, i) = linux_scan(&sim, base);
                let bump = i.max(sim.rng.random_range(0..8u32) * 2);
                table[index] = table[index].wrapping_add(bump + 2);
                off
            }
            Algorithm::LinuxConnectPre512 => {
                let h = keyed_hash(secret, &[dw]) as u32;
                let base = u64::from((counter as u32).wrapping_add(h));
                let (off, i) = linux_scan(&sim, base);
                counter = u64::from((counter as u32).wrapping_add(i + 2));
                off
            }
            Algorithm::LinuxBind => {
                let remaining = linux_remaining(sim.size);
                let start = sim.rng.random_range(0..remaining) | 1;
                let mut found = None;
                for parity_start in [start, start - 1] {
                    let mut i = 0;
                    while i < remaining {
                        let off = (parity_start + i) % remaining;
                        if sim.free(off) && !held.contains(&off) {
                            found = Some(off);
                            break;
                        }
                        i += 2;
                    }
                    if found.is_some() {
                        break;
                    }
                }
                let off = found.expect("range exhausted");
                held.push_back(off);
                if held.len() > 64 {
                    held.pop_front();
                }
                off
            }
            Algorithm::LinuxUdp => {
                let r = sim.rng.random::<u32>();
                let start = sim.low + ((u64::from(r) * u64::from(sim.size)) >> 32) as u32;
                let stride = (r | 1).wrapping_mul(UDP_HTABLE) & 0xffff;
                let high = sim.low + sim.size - 1;
                let mut found = None;
                'chains: for first in start..start + UDP_HTABLE {
                    let mut snum = first;
                    loop {
                        if (sim.low..=high).contains(&snum)
                            && sim.free(snum - sim.low)
                            && !held.contains(&(snum - sim.low))
                        {
                            found = Some(snum - sim.low);
                            break 'chains;
                        }
                        snum = (snum + stride) & 0xffff;
                        if snum == first {
                            break;
                        }
                    }
                }
                let off = found.expect("range exhausted");
                held.push_back(off);
                if held.len() > 64 {
                    held.pop_front();
                }
                off
            }
        };
        let key = if alg.is_connect() {
            StreamKey::connect(1, Proto::Tcp, Family::Inet, Some(saddr), d.0, d.1)
        } else if alg == Algorithm::LinuxUdp {
            StreamKey::local(Op::Autobind, 1, Proto::Udp, Family::Inet)
        } else {
            StreamKey::local(Op::Bind, 1, Proto::Tcp, Family::Inet)
        };
        out.push(Sample {
            ts_ns: ts,
            port: (sim.low + off) as u16,
            key,
        });
    }
    out
}

fn hash_ip(d: &(IpAddr, u16)) -> u64 {
    match d.0 {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let a = u128::from(a);
            (a as u64) ^ ((a >> 64) as u64)
        }
    }
}

/// `remaining` in `__inet_hash_connect`/`inet_csk_find_open_port`: the range
/// size rounded down to even.
fn linux_remaining(size: u32) -> u32 {
    if size > 1 { size & !1 } else { size }
}

/// The scan of `__inet_hash_connect`: start at `base % remaining` rounded
/// down to `low`'s parity, step 2, then the other parity. Returns the offset
/// and `i`, the distance scanned.
fn linux_scan(sim: &Sim, base: u64) -> (u32, u32) {
    let remaining = linux_remaining(sim.size);
    let first = ((base % u64::from(remaining)) as u32) & !1;
    for offset in [first, first + 1] {
        let mut i = 0;
        while i < remaining {
            let off = (offset + i) % remaining;
            if sim.free(off) {
                return (off, i);
            }
            i += 2;
        }
    }
    panic!("range exhausted");
}
