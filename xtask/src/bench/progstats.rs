//! What each BPF program of `trace` costs per run, from the kernel's own accounting: with
//! `kernel.bpf_stats_enabled=1` every program's `run_time_ns` and `run_cnt` grow, and
//! `/proc/PID/fdinfo` shows them for each program fd the tracer holds.
//!
//! A pass of its own after the rounds (the accounting reads the clock twice per run, which
//! would tax the rounds' figures): one `trace` per hook set, every loop once, the programs'
//! counters read before and after each loop. The sysctl's old value is restored on drop.

use std::{collections::HashMap, fs, process::Command};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::netns::Netns;

use super::{
    Env,
    loops::{self, LOOPS},
    tracers::{Column, Config, Tracer},
};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// One program's runs during one loop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgCost {
    pub hooks: String,
    #[serde(rename = "loop")]
    pub loop_name: String,
    /// The program's name (bpftool), else `id N`.
    pub prog: String,
    pub prog_type: String,
    /// The loop's iterations while the program was counted.
    pub iterations: u64,
    pub runs: u64,
    pub run_time_ns: u64,
}

pub fn measure(env: &Env, hooks: &[String], seconds: f64) -> Result<Vec<ProgCost>> {
    let _stats = StatsEnabled::on()?;
    let ns = Netns::create("bench", "stats")?;
    let mut costs = Vec::new();
    for h in hooks {
        let cfg = Config {
            column: Column::Trace,
            hooks: Some(h.clone()),
        };
        let tracer = Tracer::start(&cfg, env, ns.inode)
            .with_context(|| format!("starting {}", cfg.describe()))?;
        let pid = tracer.pid().context("trace has a pid")?;
        let names = prog_names();
        for l in &LOOPS {
            let before = prog_counters(pid)?;
            let count = loops::run(&env.loops, l, &ns, seconds, env.loop_cpu)?;
            let after = prog_counters(pid)?;
            for (id, a) in &after {
                let b = before.get(id).copied().unwrap_or_default();
                let (prog, prog_type) = names
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| (format!("id {id}"), type_name(a.prog_type).to_string()));
                costs.push(ProgCost {
                    hooks: h.clone(),
                    loop_name: l.name.to_string(),
                    prog,
                    prog_type,
                    iterations: count.iterations,
                    runs: a.run_cnt.saturating_sub(b.run_cnt),
                    run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
                });
            }
        }
        tracer.stop()?;
    }
    Ok(costs)
}

/// `kernel.bpf_stats_enabled=1` while alive, then the value it had.
struct StatsEnabled {
    old: String,
}

impl StatsEnabled {
    fn on() -> Result<Self> {
        let old = fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?;
        fs::write(SYSCTL, "1").with_context(|| format!("writing {SYSCTL}"))?;
        Ok(Self {
            old: old.trim().to_string(),
        })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = fs::write(SYSCTL, &self.old);
    }
}

/// One program's fdinfo figures.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    prog_type: u32,
    run_time_ns: u64,
    run_cnt: u64,
}

/// Every BPF program `pid` holds an fd of, by program id.
fn prog_counters(pid: u32) -> Result<HashMap<u32, Counters>> {
    let mut progs = HashMap::new();
    let dir = format!("/proc/{pid}/fd");
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let entry = entry?;
        let is_prog =
            fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        // An fd closed since read_dir is no program of the tracer's any more.
        if let Ok(text) = fs::read_to_string(&info)
            && let Some((id, c)) = parse_fdinfo(&text)
        {
            progs.insert(id, c);
        }
    }
    Ok(progs)
}

/// `prog_type:`, `prog_id:`, `run_time_ns:` and `run_cnt:` lines (the last two only while
/// stats are enabled).
fn parse_fdinfo(text: &str) -> Option<(u32, Counters)> {
    let field = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((
        field("prog_id")? as u32,
        Counters {
            prog_type: field("prog_type")? as u32,
            run_time_ns: field("run_time_ns")?,
            run_cnt: field("run_cnt")?,
        },
    ))
}

/// Program id -> (name, type) from `bpftool prog show --json`; empty without bpftool.
fn prog_names() -> HashMap<u32, (String, String)> {
    let Ok(out) = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
    else {
        return HashMap::new();
    };
    let Ok(serde_json::Value::Array(progs)) = serde_json::from_slice(&out.stdout) else {
        return HashMap::new();
    };
    progs
        .iter()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()? as u32,
                (
                    p["name"].as_str()?.to_string(),
                    p["type"].as_str().unwrap_or("").to_string(),
                ),
            ))
        })
        .collect()
}

/// The `bpf_prog_type` numbers port-trace's hook sets use (uapi/linux/bpf.h).
fn type_name(t: u32) -> &'static str {
    match t {
        2 => "kprobe",
        5 => "tracepoint",
        9 => "cgroup_sock",
        13 => "sock_ops",
        18 => "cgroup_sock_addr",
        26 => "tracing",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_program_fdinfo() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t18\n\
                    prog_jited:\t1\nprog_tag:\t11ecc483cc4856f3\nmemlock:\t4096\nprog_id:\t7682\n\
                    run_time_ns:\t56478565\nrun_cnt:\t46432\nrecursion_misses:\t0\n";
        let (id, c) = super::parse_fdinfo(text).unwrap();
        assert_eq!(
            (id, c.prog_type, c.run_time_ns, c.run_cnt),
            (7682, 18, 56478565, 46432)
        );
        // An fd whose fdinfo has no run counters gives no figures rather than zeroes.
        assert!(super::parse_fdinfo("prog_type:\t18\nprog_id:\t7682\n").is_none());
    }
}
