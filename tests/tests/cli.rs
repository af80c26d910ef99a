//! The command line's promises: clear errors, `check`, filters, and counted drops.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
};

use port_trace_tests::{Netns, SERIAL, TraceProcess, port_trace_bin, require_root};
use socket2::{Domain, SockAddr, Socket, Type};

#[test]
fn bad_flags_are_refused_with_usage() {
    let out = Command::new(port_trace_bin())
        .args(["trace", "--proto", "sctp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'sctp'"), "{err}");
    let out = Command::new(port_trace_bin())
        .args(["trace", "--ring-kib", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}

#[test]
fn not_root_is_one_clear_sentence() {
    if !require_root("not_root_is_one_clear_sentence") {
        return;
    }
    // Drop to nobody for this one run.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(port_trace_bin())
        .args(["trace", "--duration", "1s"])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("port-trace: ") && err.contains("root"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "no backtrace: {err}");
}

#[test]
fn check_reports_hook_set_and_coverage() {
    if !require_root("check_reports_hook_set_and_coverage") {
        return;
    }
    let out = Command::new(port_trace_bin())
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("would use: cgroup"), "{text}");
    // Without syscall tracepoints the cgroup set cannot see a failed autobind on send, and
    // says so; every other path is seen.
    let unseen: Vec<&str> = text.lines().filter(|l| l.contains("NOT SEEN")).collect();
    assert_eq!(unseen.len(), 1, "{text}");
    assert!(
        unseen[0].contains("udp autobind failure EAGAIN on send"),
        "{text}"
    );
    assert!(text.contains("1 path(s) above are not seen"), "{text}");
}

fn bind_udp(n: usize) {
    for _ in 0..n {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        s.bind(&SockAddr::from(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))))
            .unwrap();
    }
}

#[test]
fn proto_filter_keeps_only_that_protocol() {
    if !require_root("proto_filter_keeps_only_that_protocol") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new().unwrap();
    let tracer =
        TraceProcess::start(&["--netns", &ns.name, "--proto", "tcp"]).expect("start port-trace");
    ns.run("pt-filter", || {
        bind_udp(3);
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SockAddr::from(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))))
            .unwrap();
    })
    .unwrap();
    let (events, _) = tracer.stop().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["proto"], "tcp");
}

/// A ring buffer that nobody drains overflows; every event is either delivered or counted.
#[test]
fn full_ring_buffer_drops_are_counted() {
    if !require_root("full_ring_buffer_drops_are_counted") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new().unwrap();
    let tracer = TraceProcess::start(&[
        "--netns",
        &ns.inode.to_string(),
        "--ring-kib",
        "4",
        "--wakeup-kib",
        "1024",
        "--drain-interval",
        "1h",
    ])
    .expect("start port-trace");
    const N: usize = 300;
    ns.run("pt-flood", || bind_udp(N)).unwrap();
    let (events, stderr) = tracer.stop().unwrap();
    let lost: usize = stderr
        .split(" shown, ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lost count in: {stderr}"));
    assert!(lost > 0, "a 4 KiB ring cannot hold {N} events: {stderr}");
    assert_eq!(events.len() + lost, N, "{stderr}");
}

/// Runs port-trace with `args` to completion: (exit code, stderr).
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(port_trace_bin()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A zero period was a panic ("period must be non-zero", exit 101), after attaching.
#[test]
fn zero_periods_are_refused_not_a_panic() {
    for args in [
        &["trace", "--drain-interval", "0s"][..],
        &["serve", "--refresh-interval", "0s"][..],
        &["serve", "--top-destinations", "1000000000"][..],
    ] {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("must be between"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// `record` over an existing file that then fails to start must leave the file as it was.
#[test]
fn a_refused_record_keeps_the_existing_file() {
    if !require_root("a_refused_record_keeps_the_existing_file") {
        return;
    }
    let p = std::env::temp_dir().join(format!("pt-keep-{}.jsonl", std::process::id()));
    std::fs::write(&p, "precious\n").unwrap();
    let (code, err) = run(&[
        "record",
        p.to_str().unwrap(),
        "--hooks",
        "cgroup",
        "--cgroup",
        "/nonexistent-port-trace-cgroup",
        "--duration",
        "1s",
    ]);
    let kept = std::fs::read_to_string(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(kept, "precious\n", "{err}");
}

/// A directory that is not a cgroup was "bpf_link_create failed: Bad file descriptor".
#[test]
fn a_non_cgroup_directory_is_named_as_such() {
    if !require_root("a_non_cgroup_directory_is_named_as_such") {
        return;
    }
    let (code, err) = run(&[
        "trace",
        "--hooks",
        "cgroup",
        "--cgroup",
        "/tmp",
        "--duration",
        "1s",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/tmp is not a cgroup v2 directory"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// `listen = 127.0.0.1:0` is served on the port the kernel picked, and says which.
#[test]
fn serve_names_the_port_it_bound() {
    if !require_root("serve_names_the_port_it_bound") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let daemon = TraceProcess::spawn(&["serve", "--listen", "127.0.0.1:0"]).unwrap();
    let url = daemon
        .banner
        .split("serving http://")
        .nth(1)
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("{}", daemon.banner))
        .to_string();
    let addr: SocketAddr = url.parse().unwrap();
    assert_ne!(addr.port(), 0, "{}", daemon.banner);
    let (status, _) = port_trace_tests::scrape::get(addr, "/metrics").expect("it serves there");
    assert_eq!(status, 200);
    daemon.stop_with(nix::sys::signal::Signal::SIGTERM).unwrap();
}

/// Runs port-trace with `args`, killed if it has not exited within `limit`: (exit code,
/// stderr), or None when it had to be killed. The limit only keeps a hang from hanging CI.
fn run_within(args: &[&str], limit: std::time::Duration) -> Option<(Option<i32>, String)> {
    use std::io::Read;
    let mut child = Command::new(port_trace_bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Some((status.code(), err));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Issue 10: `analyze /dev/zero` grew past 4 GB. It now stops at the first line with one
/// sentence and a non-zero exit, and so does a binary file.
#[test]
fn analyze_refuses_endless_and_binary_input() {
    let limit = std::time::Duration::from_secs(60);
    let (code, err) =
        run_within(&["analyze", "/dev/zero"], limit).expect("analyze /dev/zero finishes");
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "port-trace: /dev/zero: line 1 is longer than 65536 bytes; not a port-trace recording"
    );
    let bin = std::env::temp_dir().join(format!("pt-cli-binary-{}", std::process::id()));
    std::fs::write(&bin, b"\x7fELF\x02\x01\x01\0\0\0\0\n\0\x03\n").unwrap();
    let path = bin.to_str().unwrap();
    let done = run_within(&["analyze", path], limit);
    std::fs::remove_file(&bin).unwrap();
    let (code, err) = done.expect("analyze of a binary file finishes");
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("line 1 holds binary data (a NUL byte); not a port-trace recording"),
        "{err}"
    );
}
