//! Least privilege: `serve` runs as an unprivileged user holding only the capabilities it needs
//! (ambient, through `setpriv`, the way the systemd unit grants them), and without any one of
//! them it stops at once with one line that names it.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
};

use port_trace_tests::{
    SERIAL, TraceProcess, port_trace_bin, require_root,
    scrape::{free_port, get},
};

/// What `serve` needs for the cgroup hook set, the one this host can run (the fexit and kprobe
/// sets need the first two only). docs/deploy: `AmbientCapabilities=`.
const MINIMAL: [&str; 3] = ["bpf", "perfmon", "net_admin"];

/// `port-trace serve` as uid/gid 65534 (nobody) with exactly `caps`.
fn serve_with(caps: &[&str], addr: SocketAddr) -> Command {
    let list: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let list = list.join(",");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps=-all,{list}"),
        &format!("--ambient-caps=-all,{list}"),
    ])
    .arg(port_trace_bin())
    .args(["serve", "--listen", &addr.to_string()]);
    if let Ok(h) = std::env::var("PORT_TRACE_HOOKS")
        && !h.is_empty()
    {
        cmd.args(["--hooks", &h]);
    }
    cmd
}

fn addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))
}

#[test]
fn serve_runs_with_the_minimal_capabilities_as_nobody() {
    if !require_root("serve_runs_with_the_minimal_capabilities_as_nobody") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let at = addr();
    let daemon = TraceProcess::spawn_command(serve_with(&MINIMAL, at))
        .expect("serve starts with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN");
    assert!(daemon.banner.contains("hook set"), "{}", daemon.banner);
    // What it cannot do without the namespace capabilities is said, by name.
    assert!(
        daemon.preamble.contains("CAP_SYS_PTRACE") && daemon.preamble.contains("CAP_SYS_ADMIN"),
        "{}",
        daemon.preamble
    );
    let (status, body) = get(at, "/metrics").expect("the daemon answers");
    assert_eq!(status, 200);
    assert!(body.contains("port_trace_"), "{body}");
    daemon
        .stop_with(nix::sys::signal::Signal::SIGTERM)
        .expect("serve exits 0 on SIGTERM");
}

#[test]
fn each_missing_capability_is_named_in_one_line() {
    if !require_root("each_missing_capability_is_named_in_one_line") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for missing in MINIMAL {
        let held: Vec<&str> = MINIMAL.into_iter().filter(|c| *c != missing).collect();
        let err = match TraceProcess::spawn_command(serve_with(&held, addr())) {
            Ok(daemon) => {
                let _ = daemon.stop_with(nix::sys::signal::Signal::SIGKILL);
                panic!("serve started without CAP_{}", missing.to_uppercase());
            }
            Err(e) => e.to_string(),
        };
        // `spawn_command` says "port-trace exited (STATUS) before tracing: " + its stderr.
        let said = err.split_once("before tracing: ").map_or("", |s| s.1);
        let lines: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
        let name = format!("CAP_{}", missing.to_uppercase());
        assert_eq!(lines.len(), 1, "one line without {name}: {said}");
        assert!(lines[0].contains(&name), "the line names {name}: {said}");
        for h in &held {
            let h = format!("CAP_{}", h.to_uppercase());
            assert!(
                !lines[0].contains(&h),
                "and not {h}, which it holds: {said}"
            );
        }
        assert!(err.contains("exit status: 2"), "{err}");
    }
}
