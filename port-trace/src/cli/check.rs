//! `port-trace check`: what this kernel supports and what port-trace can see here.

use std::process::ExitCode;

use clap::Args;

use crate::{
    hook_set::{self, HookSet},
    kernel::{
        privilege,
        probe::{Fact, KernelSupport},
    },
    tracer::load::{LoadError, LoadOptions, start_first},
};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check a specific hook set instead of the automatic choice.
    #[arg(long, value_enum)]
    pub hooks: Option<HookSet>,
}

fn mark(ok: bool) -> &'static str {
    if ok { "yes" } else { "no " }
}

fn line(name: &str, f: &Fact) {
    println!("  {:<22} {}  {}", name, mark(f.ok), f.note);
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let k = KernelSupport::probe(true);
    println!("kernel {}", k.release);
    line("privileges", &k.privileged);
    let net_admin = &privilege::CGROUP;
    line(
        "CAP_NET_ADMIN",
        &Fact {
            ok: k.caps.meets(net_admin),
            note: format!("the cgroup hook set needs it {}", net_admin.why),
        },
    );
    let lacking = k.caps.lacking(&privilege::OTHER_NAMESPACES);
    line(
        "other namespaces",
        &Fact {
            ok: lacking.is_empty(),
            note: if lacking.is_empty() {
                "their port ranges and socket tables can be read".to_string()
            } else {
                format!("not read: missing {}", privilege::describe(&lacking))
            },
        },
    );
    line("BTF", &k.btf);
    if let Some(l) = &k.layout {
        let ok = l.problems.is_empty();
        let note = if ok {
            "all struct offsets resolved".to_string()
        } else {
            l.problems.join("; ")
        };
        line("kernel layout", &Fact { ok, note });
    }
    line("ring buffer", &k.ringbuf);
    line("kprobes", &k.kprobes);
    line("fentry/fexit", &k.fentry);
    let path_fact = |p: &Option<std::path::PathBuf>, missing: &str| Fact {
        ok: p.is_some(),
        note: p
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| missing.to_string()),
    };
    line("cgroup v2", &path_fact(&k.cgroup2, "not mounted"));
    line("tracefs", &path_fact(&k.tracefs, "not mounted"));
    line("sock_ops", &k.sock_ops);
    line("sock_ops caller", &k.sock_ops_task);
    line("cgroup_sock", &k.cgroup_sock);
    line("cgroup_sock_addr", &k.cgroup_sock_addr);
    line("raw_tracepoint", &k.raw_tracepoint);
    line(
        "conntrack netlink",
        &match crate::nat::watch::probe() {
            Ok(cpus) => Fact {
                ok: true,
                note: format!("NAT-chosen ports can be watched ({cpus} CPUs report statistics)"),
            },
            Err(e) => Fact {
                ok: false,
                note: format!("NAT-chosen ports not seen: {}", crate::errors::chain(&e)),
            },
        },
    );
    if !k.missing_tracepoints.is_empty() {
        println!(
            "  missing tracepoints: {}",
            k.missing_tracepoints.join(", ")
        );
    }

    println!("hook sets (in order of preference):");
    for h in HookSet::ALL {
        match h.availability(&k) {
            Ok(()) => println!("  {h:<8} usable"),
            Err(why) => println!("  {h:<8} unusable: {why}"),
        }
    }
    match hook_set::choose(&k, args.hooks).map(|sets| first_that_attaches(&k, &sets)) {
        Ok(Ok(h)) => {
            println!("would use: {h}");
            let rows = h.coverage(&k);
            let mut blind = 0;
            for r in &rows {
                if r.seen {
                    println!("  seen      {:<58} {}", r.path, r.hooks);
                } else {
                    blind += 1;
                    println!(
                        "  NOT SEEN  {:<58} {}",
                        r.path,
                        r.why_not.as_deref().unwrap_or("")
                    );
                }
            }
            if blind == 0 {
                println!("tracing can work: every path is seen");
            } else {
                println!("tracing can work, but {blind} path(s) above are not seen");
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(e)) => {
            println!("tracing cannot work here: {}", crate::errors::chain(&e));
            Ok(ExitCode::from(1))
        }
        Err(_) => {
            println!("tracing cannot work on this kernel: no usable hook set");
            Ok(ExitCode::from(1))
        }
    }
}

/// The set `trace` would end up with: the same start as `trace` (load, attach, fall back),
/// detached at once, so that a set whose programs this kernel refuses is never foretold. The
/// features above only say which sets are worth trying.
fn first_that_attaches(k: &KernelSupport, sets: &[HookSet]) -> Result<HookSet, LoadError> {
    let opts = LoadOptions {
        ring_bytes: 64 * 1024,
        wakeup_bytes: 16 * 1024,
        cgroup: None,
        udp_send_hooks: false,
    };
    let (tracer, skipped) = start_first(k, sets, &opts)?;
    for why in skipped {
        println!("  tried    {why}");
    }
    Ok(tracer.hook_set)
}
