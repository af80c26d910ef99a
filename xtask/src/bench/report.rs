//! The markdown the bench prints: the side-by-side ratio table, how to read it, then rates,
//! events seen against generated, and what each BPF program costs.

use std::{collections::BTreeMap, fmt::Write as _, process::Command, time::Duration};

use super::{
    Platform,
    loops::LOOPS,
    progstats::ProgCost,
    rounds::{CONTENDED, STOLEN},
    stats::{self, Cell, Row},
    tracers::Column,
};
use crate::shell::workspace_root;

pub fn render(platforms: &[Platform], took: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## port-trace cost (`cargo xtask bench`)\n");
    let _ = writeln!(
        out,
        "Measured {}, port-trace built from {} (release).",
        now_utc(),
        commit()
    );
    for p in platforms {
        let _ = writeln!(out, "- {}", describe(p));
        if let Some(load) = &p.host_load {
            let _ = writeln!(out, "  - the host meanwhile: {load}");
        }
        if let Some(others) = others_seen(p) {
            let _ = writeln!(out, "  - {others}");
        }
    }
    let rows: Vec<(&Platform, Vec<Row>)> = platforms
        .iter()
        .filter(|p| p.error.is_none())
        .map(|p| (p, stats::rows(p)))
        .collect();

    let _ = writeln!(
        out,
        "\n| loop | hook set | {} |\n{}",
        Column::ALL.map(Column::heading).join(" | "),
        separator()
    );
    for (p, rows) in &rows {
        for r in rows {
            let cells: Vec<String> = r.cells.iter().map(|c| ratio_cell(c, p.fastest)).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                r.lp.label,
                row_label(p, &r.hooks),
                cells.join(" | ")
            );
        }
    }
    out.push_str(HOW_TO_READ);

    let _ = writeln!(
        out,
        "\n### Rates: median iterations/s (per-round ratios: lowest–highest, median, fastest round's)\n\n| loop | hook set | {} |\n{}",
        Column::ALL.map(Column::heading).join(" | "),
        separator()
    );
    for (p, rows) in &rows {
        for r in rows {
            let cells: Vec<String> = Column::ALL
                .iter()
                .zip(&r.cells)
                .map(|(&column, c)| rate_cell(c, column))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                r.lp.short,
                row_label(p, &r.hooks),
                cells.join(" | ")
            );
        }
    }

    out.push_str(
        "\n### Events seen / port choices made (sum over rounds), events lost\n\n\
         | loop | hook set | `trace` seen / made | `serve` seen / made |\n|---|---|---|---|\n",
    );
    for (p, rows) in &rows {
        for r in rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                r.lp.short,
                row_label(p, &r.hooks),
                seen_cell(&r.cells[Column::Trace.index()]),
                seen_cell(&r.cells[Column::Serve.index()])
            );
        }
        for h in distinct_hooks(rows) {
            let first = rows.iter().find(|r| r.hooks == h).map(|r| &r.cells);
            let lost = |i: usize| {
                first
                    .and_then(|c| c[i].lost)
                    .map_or("–".to_string(), |n| n.to_string())
            };
            let _ = writeln!(
                out,
                "| *lost to a full ring buffer* | {} | {} | {} |",
                row_label(p, &h),
                lost(Column::Trace.index()),
                lost(Column::Serve.index())
            );
        }
    }
    out.push_str(SEEN_NOTE);

    for p in platforms.iter().filter(|p| !p.progs.is_empty()) {
        render_progs(&mut out, p);
    }
    for p in platforms.iter().filter(|p| p.error.is_some()) {
        let _ = writeln!(
            out,
            "\n**{}: no figures**: {}",
            p.name,
            p.error.as_deref().unwrap_or("")
        );
    }
    let secs = took.as_secs();
    let _ = writeln!(out, "\nbench took {}m {:02}s", secs / 60, secs % 60);
    out
}

const HOW_TO_READ: &str = "
How to read it: each figure is the loop's iterations per second with that tracer attached,
divided by the same loop's rate with no tracer in the same round; the median over rounds.
1.000 costs nothing; 0.800 means each iteration takes 1/0.8 = 1.25x as long. The loop is pinned
to CPU 1 and the harness and tracer to CPU 0, so the ratio is what the traced program pays on
its own CPU (BPF programs, the syscall-tracepoint slow path every syscall takes while any
syscall tracepoint is attached), not the tracer's userspace work. `sendto()` and `getppid()`
make no port choice: their cost is pure tax on untraced work. The bpftrace peer does one map
update per `sock:inet_sock_set_state` event, for scale. VM rows ran under qemu TCG (no KVM):
compare their ratios, not their rates; they show the fastest round's rate over the fastest
no-tracer round's, since the guest cannot see what slows qemu on the host, and that only ever
slows a run (the rates table has their medians too). † marks a figure whose per-round ratios spread wider
than ±10% of it (the rates table shows the spread): other load on the machine moved it. A loop
run is disturbed when another process held BPF programs meanwhile (another tracer, whose
syscall tracepoints tax every column, no tracer included), or when other tasks (schedstat) or
the hypervisor (steal) had the loop's CPU over 10% of the time; a round with a disturbed run
is left out where an undisturbed round exists, and ‡ marks a figure that has none.
";

const SEEN_NOTE: &str = "
`trace` counts its JSON events from the loops' namespace by the loop's comm; `serve` counts the
increase of `port_trace_assignments_total` for the loop's op (every op for the loops that make
no port choice), which is host-wide, so other processes' port choices add to it. Losses are per
tracer run (all four loops), from trace's exit line and serve's `port_trace_events_lost_total`.
";

/// "cgroup (host)", "fexit (VM, TCG)".
fn row_label(p: &Platform, hooks: &str) -> String {
    if p.name == "host" {
        format!("{hooks} (host)")
    } else {
        format!("{hooks} (VM, TCG)")
    }
}

fn describe(p: &Platform) -> String {
    format!(
        "{}: kernel {}, {}; {} rounds x {} s per loop",
        p.name, p.kernel, p.cpu, p.rounds, p.seconds
    )
}

/// "disturbed loop runs: 12 of 80 (other BPF tracers: port-trace; CPU contention: 3)".
fn others_seen(p: &Platform) -> Option<String> {
    let samples: Vec<_> = p.runs.iter().flat_map(|r| &r.samples).collect();
    let disturbed: Vec<_> = samples.iter().filter(|s| !s.disturbed.is_empty()).collect();
    if disturbed.is_empty() {
        return None;
    }
    let mut tracers: Vec<&str> = Vec::new();
    let (mut contended, mut stolen) = (0, 0);
    for s in &disturbed {
        for why in &s.disturbed {
            match why.as_str() {
                CONTENDED => contended += 1,
                STOLEN => stolen += 1,
                // "comm (pid)": the comm is enough to say who.
                other => {
                    let comm = other.rsplit_once(" (").map_or(other, |(c, _)| c);
                    if !tracers.contains(&comm) {
                        tracers.push(comm);
                    }
                }
            }
        }
    }
    let mut why = Vec::new();
    if !tracers.is_empty() {
        why.push(format!("other BPF tracers: {}", tracers.join(", ")));
    }
    if contended > 0 {
        why.push(format!("{CONTENDED}: {contended}"));
    }
    if stolen > 0 {
        why.push(format!("{STOLEN}: {stolen}"));
    }
    Some(format!(
        "disturbed loop runs: {} of {} ({})",
        disturbed.len(),
        samples.len(),
        why.join("; ")
    ))
}

/// The median ratio, or the fastest rounds' for a platform that cannot see its disturbances.
fn ratio_cell(c: &Cell, fastest: bool) -> String {
    let ratio = if fastest { c.fastest } else { c.ratio };
    match (ratio, &c.missing) {
        (Some(r), _) => {
            let marks = match (noisy(c), c.disturbed()) {
                (true, true) => " † ‡",
                (true, false) => " †",
                (false, true) => " ‡",
                (false, false) => "",
            };
            format!("{r:.3}{marks}")
        }
        (None, Some(why)) => format!("– ({})", short_reason(why)),
        (None, None) => "–".into(),
    }
}

/// The per-round ratios spread wider than ±10% of their median: the machine's load moved more
/// than the tracer's cost.
fn noisy(c: &Cell) -> bool {
    match (c.ratio, c.spread) {
        (Some(r), Some((lo, hi))) => hi - lo > 0.2 * r,
        _ => false,
    }
}

/// The header separator of the tables with a loop, a hook set and one cell per column.
fn separator() -> String {
    "|---".repeat(2 + Column::ALL.len()) + "|"
}

fn rate_cell(c: &Cell, column: Column) -> String {
    let Some(rate) = c.rate else {
        return "–".into();
    };
    if column == Column::None {
        // Its ratios are 1 by definition.
        return rate_text(rate);
    }
    let mut notes = Vec::new();
    if let Some((lo, hi)) = c.spread.filter(|(lo, hi)| hi > lo) {
        notes.push(format!("{lo:.2}–{hi:.2}"));
    }
    if let (Some(median), Some(fastest)) = (c.ratio, c.fastest) {
        notes.push(format!("median {median:.3}, fastest {fastest:.3}"));
    }
    if c.clean_rounds < c.rounds {
        notes.push(format!(
            "{} of {} rounds undisturbed",
            c.clean_rounds, c.rounds
        ));
    }
    if notes.is_empty() {
        rate_text(rate)
    } else {
        format!("{} ({})", rate_text(rate), notes.join("; "))
    }
}

fn seen_cell(c: &Cell) -> String {
    match c.seen {
        Some(seen) => format!("{seen} / {}", c.generated),
        None => "–".into(),
    }
}

/// A reason short enough for a table cell.
fn short_reason(why: &str) -> String {
    let one_line = why.replace(['\n', '|'], " ");
    if one_line.chars().count() > 120 {
        format!("{}…", one_line.chars().take(120).collect::<String>())
    } else {
        one_line
    }
}

/// "41.2k/s", "10.1M/s", "512/s".
fn rate_text(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k/s", r / 1e3)
    } else {
        format!("{r:.0}/s")
    }
}

fn distinct_hooks(rows: &[Row]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in rows {
        if !v.contains(&r.hooks) {
            v.push(r.hooks.clone());
        }
    }
    v
}

/// One table per hook set: each program that ran, its runs per loop iteration and mean ns per
/// run under each loop, and the BPF time per iteration the loop paid in all.
fn render_progs(out: &mut String, p: &Platform) {
    let mut by_hooks: BTreeMap<&str, Vec<&ProgCost>> = BTreeMap::new();
    for c in &p.progs {
        by_hooks.entry(c.hooks.as_str()).or_default().push(c);
    }
    for (hooks, costs) in by_hooks {
        let _ = writeln!(
            out,
            "\n### BPF programs of `trace`, {}: runs per iteration x ns per run\n\n\
             One extra `trace` run with `kernel.bpf_stats_enabled=1` (restored after), figures \
             from `/proc/PID/fdinfo`. A count of runs instead of a rate: fewer than one per \
             hundred iterations (the loop's setup, other processes).\n\n| program | type | {} |\n|---|---|{}",
            row_label(p, hooks),
            LOOPS.map(|l| l.short).join(" | "),
            "---|".repeat(LOOPS.len())
        );
        for (prog, prog_type) in by_time(&costs) {
            let cells: Vec<String> = LOOPS
                .iter()
                .map(|l| {
                    costs
                        .iter()
                        .find(|c| c.prog == prog && c.loop_name == l.name)
                        .map_or("–".into(), |c| prog_cell(c))
                })
                .collect();
            let _ = writeln!(out, "| `{prog}` | {prog_type} | {} |", cells.join(" | "));
        }
        let totals: Vec<String> = LOOPS
            .iter()
            .map(|l| {
                let mine = costs.iter().filter(|c| c.loop_name == l.name);
                let ns: u64 = mine.clone().map(|c| c.run_time_ns).sum();
                let iterations = mine.map(|c| c.iterations).max().unwrap_or(0);
                if iterations == 0 {
                    "–".into()
                } else {
                    format!("{:.0} ns", ns as f64 / iterations as f64)
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "| **BPF time per iteration** | | {} |",
            totals.join(" | ")
        );
    }
}

/// The programs that ran, most total run time first.
fn by_time(costs: &[&ProgCost]) -> Vec<(String, String)> {
    let mut total: BTreeMap<(String, String), u64> = BTreeMap::new();
    for c in costs.iter().filter(|c| c.runs > 0) {
        *total
            .entry((c.prog.clone(), c.prog_type.clone()))
            .or_default() += c.run_time_ns;
    }
    let mut progs: Vec<_> = total.into_iter().collect();
    progs.sort_by_key(|(_, ns)| std::cmp::Reverse(*ns));
    progs.into_iter().map(|(p, _)| p).collect()
}

/// "1.00 x 541 ns": runs per iteration, mean ns per run; a program that ran less than once
/// per hundred iterations (the loop's setup, another process) shows its run count.
fn prog_cell(c: &ProgCost) -> String {
    if c.runs == 0 || c.iterations == 0 {
        return "–".into();
    }
    let per_iteration = c.runs as f64 / c.iterations as f64;
    let ns = c.run_time_ns as f64 / c.runs as f64;
    if per_iteration < 0.01 {
        let runs = if c.runs == 1 { "run" } else { "runs" };
        format!("{} {runs} x {ns:.0} ns", c.runs)
    } else {
        format!("{per_iteration:.2} x {ns:.0} ns")
    }
}

/// The worktree's commit, "-dirty" when it has changes.
fn commit() -> String {
    Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "an unknown commit".into())
}

/// "2025-01-31 14:05 UTC", from date(1).
fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// "AMD EPYC, 2 CPUs".
pub fn cpu_model(cpus: usize) -> String {
    format!("{}, {cpus} CPUs", cpu_name())
}

/// /proc/cpuinfo's first model name.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_read_at_a_glance() {
        assert_eq!(super::rate_text(10_121_984.0), "10.12M/s");
        assert_eq!(super::rate_text(28_440.0), "28.4k/s");
        assert_eq!(super::rate_text(512.4), "512/s");
    }
}
