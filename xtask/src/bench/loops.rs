//! The C loops: compiled from `xtask/bench/loops/` with `gcc -static` (the same binaries run on
//! this host and in the VM's busybox initramfs), and one timed run of a loop in a namespace.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::created;
use crate::netns::Netns;
use crate::shell::{step, workspace_root};

/// One loop: its binary (also its `comm`, which is how `trace` tells the loops' events apart),
/// its source file, the table's label, and the op each iteration makes the kernel report.
pub struct Loop {
    pub name: &'static str,
    source: &'static str,
    pub label: &'static str,
    /// For the secondary tables.
    pub short: &'static str,
    /// `Some(op)`: one port chosen per iteration; `None`: none expected at all.
    pub op: Option<&'static str>,
}

pub const LOOPS: [Loop; 4] = [
    Loop {
        name: "pt-connect",
        source: "connect.c",
        label: "TCP connect+accept+close (C)",
        short: "TCP connect+accept+close",
        op: Some("connect"),
    },
    Loop {
        name: "pt-udp-sendto",
        source: "udp_sendto.c",
        label: "`sendto()` of 1 byte from an already-bound unconnected UDP socket (no port chosen)",
        short: "UDP sendto, bound socket",
        op: None,
    },
    Loop {
        name: "pt-getppid",
        source: "getppid.c",
        label: "`getppid()` bare syscall (no socket)",
        short: "getppid()",
        op: None,
    },
    Loop {
        name: "pt-udp-autobind",
        source: "udp_autobind.c",
        label: "UDP autobind: `socket()+sendto()+close()` (a port chosen per iteration)",
        short: "UDP autobind",
        op: Some("autobind"),
    },
];

/// The floor column's program (`floor.c`): not a loop, built with them.
pub const FLOOR: &str = "pt-floor";

pub fn by_name(name: &str) -> Option<&'static Loop> {
    LOOPS.iter().find(|l| l.name == name)
}

/// Compiles every loop into `out`, statically linked; returns `out`.
pub fn compile(out: &Path) -> Result<PathBuf> {
    let src = workspace_root().join("xtask/bench/loops");
    created(out)?;
    for l in &LOOPS {
        step(
            &format!("gcc {}", l.source),
            Command::new("gcc")
                .args(["-O2", "-Wall", "-Wextra", "-Werror", "-static", "-o"])
                .arg(out.join(l.name))
                .arg(src.join("main.c"))
                .arg(src.join(l.source)),
        )?;
    }
    step(
        "gcc floor.c",
        Command::new("gcc")
            .args(["-O2", "-Wall", "-Wextra", "-Werror", "-static", "-o"])
            .arg(out.join(FLOOR))
            .arg(src.join("floor.c")),
    )?;
    Ok(out.to_path_buf())
}

/// What one run of a loop did, in its own words.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Count {
    pub iterations: u64,
    pub seconds: f64,
    /// Seconds the loop was runnable while another task had its CPU (None: unknown).
    pub waited: Option<f64>,
}

/// Runs loop `l` from `dir` in `ns` for `seconds`, pinned to `cpu` (-1: not pinned). The loop
/// ends itself: it stops after `seconds` and an alarm kills a step that never returns.
pub fn run(dir: &Path, l: &Loop, ns: &Netns, seconds: f64, cpu: i32) -> Result<Count> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(dir.join(l.name))
        .arg(seconds.to_string())
        .arg(cpu.to_string())
        .output()
        .with_context(|| format!("running {}", l.name))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            l.name,
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_count(&text).with_context(|| format!("{} printed {text:?}", l.name))
}

/// Reads `iterations=N seconds=S waited=W` (W is -1 when the kernel keeps no schedstat).
fn parse_count(text: &str) -> Option<Count> {
    let field = |key: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    };
    Some(Count {
        iterations: field("iterations")?.parse().ok()?,
        seconds: field("seconds")?.parse().ok()?,
        waited: field("waited")
            .and_then(|w| w.parse::<f64>().ok())
            .filter(|w| *w >= 0.0),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_loops_line() {
        let c = super::parse_count("iterations=4096 seconds=2.000150 waited=0.012\n").unwrap();
        assert_eq!(
            (c.iterations, c.seconds, c.waited),
            (4096, 2.000150, Some(0.012))
        );
        let c = super::parse_count("iterations=1 seconds=1 waited=-1\n").unwrap();
        assert_eq!(c.waited, None);
        assert!(super::parse_count("iterations=4096\n").is_none());
    }

    #[test]
    fn every_loop_has_a_source_and_a_distinct_comm() {
        let src = crate::shell::workspace_root().join("xtask/bench/loops");
        for l in &super::LOOPS {
            assert!(src.join(l.source).exists(), "{}", l.source);
            // comm is 15 bytes; trace tells the loops apart by it.
            assert!(l.name.len() <= 15, "{}", l.name);
        }
    }
}
