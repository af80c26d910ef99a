//! Attribution against the kernel: real cgroups under the cgroup v2 hierarchy the tracer
//! attaches to, named the way systemd, docker and the kubelet name theirs; a real process moved
//! into each (its pid written to `cgroup.procs`) picks ports; every event's `cgroup` must be
//! the cgroup /proc/PID/cgroup said the process was in, and its `workload` the identity that
//! cgroup's name stands for. Most cgroups are made after tracing started.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use port_trace_tests::{
    Netns, SERIAL, TraceProcess, analyze, analyze_json, port_trace_bin, require_root,
    scrape::{get, value},
};
use serde_json::{Value, json};

/// Set in the workload process: the test binary re-run as the workload.
const CHILD_ENV: &str = "PT_ATTR_CHILD";
/// What precedes the workload's ground truth (libtest may print on the same line).
const RESULT: &str = "PT_ATTR_RESULT ";

const DOCKER_ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
const CRI_ID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const FS_ID: &str = "0badc0de0badc0de0badc0de0badc0de0badc0de0badc0de0badc0de0badc0de";
const POD_UID: &str = "6a1c8e2f-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
const FS_POD_UID: &str = "0f9e8d7c-6b5a-4c3d-9e2f-1a0b9c8d7e6f";

/// Not a test on its own: the workload, when the tests below run this binary with
/// [`CHILD_ENV`] set. It waits for "go" (it has been moved into its cgroup by then), picks
/// three ports, prints them with the cgroup it was in, and waits for a second line to exit.
#[test]
fn workload_process() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let cgroup = own_cgroup("self");
    // bind(0)+listen (a TCP bind event), a connect to it, a UDP bind(0).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ports = [
        listener.local_addr().unwrap().port(),
        stream.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    ];
    let line = json!({"pid": std::process::id(), "cgroup": cgroup, "ports": ports});
    println!("{RESULT}{line}");
    // Stay (holding the namespace and the sockets) until told to go.
    let mut exit = String::new();
    std::io::stdin().read_line(&mut exit).unwrap();
}

/// The cgroup v2 path of process `pid` ("self" for this one), from /proc: what the kernel
/// says, relative to the hierarchy's root.
fn own_cgroup(pid: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_string()
}

/// Cgroups made by the test under one parent, removed (deepest first) on drop.
struct Cgroups {
    root: PathBuf,
    made: Vec<PathBuf>,
}

impl Cgroups {
    fn new() -> Self {
        let root = port_trace::kernel::probe::cgroup2_mount().expect("a cgroup v2 mount");
        Self {
            root,
            made: Vec::new(),
        }
    }

    /// Makes `rel` (and its parents) under the parent of this test run; returns its path
    /// relative to the hierarchy's root.
    fn make(&mut self, rel: &str) -> String {
        let rel = format!("pt-attr-{}.slice/{rel}", std::process::id());
        let mut dir = self.root.clone();
        for part in rel.split('/') {
            dir.push(part);
            if !dir.exists() {
                fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                self.made.push(dir.clone());
            }
        }
        format!("/{rel}")
    }

    fn procs(&self, rel: &str) -> PathBuf {
        self.root
            .join(rel.trim_start_matches('/'))
            .join("cgroup.procs")
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// One workload process's ground truth.
struct Ran {
    pid: u64,
    cgroup: String,
    ports: Vec<u64>,
    workload: Value,
}

/// A workload process that has picked its ports and waits to be told to exit.
struct Running {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    ran: Ran,
}

impl Running {
    /// Tells it to exit and waits for it.
    fn finish(mut self) -> Ran {
        writeln!(self.child.stdin.as_mut().unwrap(), "exit").unwrap();
        // Read to the end: a reader that stopped early would break the workload's pipe.
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).unwrap();
        assert!(self.child.wait().unwrap().success(), "{rest}");
        self.ran
    }
}

/// Starts the workload in `ns`, moves it into cgroup `rel` before it picks its ports, and
/// returns once it has: what it did and where it was.
fn start_in(cg: &Cgroups, rel: &str, ns: &Netns, workload: Value) -> Running {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&exe)
        .args([
            "workload_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // `ip netns exec` execs the program: the pid is the workload's.
    let pid = child.id();
    fs::write(cg.procs(rel), pid.to_string()).unwrap();
    assert_eq!(own_cgroup(&pid.to_string()), rel, "the kernel moved it");
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // Bounded by the workload's own output: it prints its result line, then waits.
    let line = loop {
        let mut l = String::new();
        assert!(
            out.read_line(&mut l).unwrap() > 0,
            "the workload's result line"
        );
        if let Some((_, r)) = l.split_once(RESULT) {
            break r.trim().to_string();
        }
    };
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["pid"].as_u64(), Some(pid as u64));
    let ran = Ran {
        pid: pid as u64,
        cgroup: v["cgroup"].as_str().unwrap().to_string(),
        ports: v["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect(),
        workload,
    };
    Running { child, out, ran }
}

/// [`start_in`], then let it exit.
fn run_in(cg: &Cgroups, rel: &str, ns: &Netns, workload: Value) -> Ran {
    start_in(cg, rel, ns, workload).finish()
}

/// The recording's events (not its namespace lines).
fn events(file: &Path) -> Vec<Value> {
    fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("meta").is_none())
        .collect()
}

#[test]
fn every_event_names_the_cgroup_its_process_was_in() {
    if !require_root("every_event_names_the_cgroup_its_process_was_in") {
        return;
    }
    attributed(&[]);
}

/// The same without `CAP_DAC_READ_SEARCH` (the packaged unit's and the DaemonSet's case): ids
/// are resolved by walking the hierarchy, and cgroups made while tracing are still found.
#[test]
fn every_event_names_its_cgroup_when_resolved_by_walking() {
    if !require_root("every_event_names_its_cgroup_when_resolved_by_walking") {
        return;
    }
    attributed(&[
        "setpriv",
        "--bounding-set",
        "-dac_read_search",
        "--inh-caps",
        "-dac_read_search",
    ]);
}

/// Records while workloads run in cgroups of every kind, the tracer started under `wrap`
/// (a command prefix), and checks each event against where its process was.
fn attributed(wrap: &[&str]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cg = Cgroups::new();
    let ns = Netns::new().expect("create network namespace");
    let dir = std::env::temp_dir().join(format!("pt-attr-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("attribution.jsonl");

    // Made before tracing starts.
    let unit = cg.make("pt-demo.slice/pt-web.service");
    let inode = ns.inode.to_string();
    let hooks = std::env::var("PORT_TRACE_HOOKS").unwrap_or_default();
    let mut args = vec!["record", file.to_str().unwrap(), "--netns", &inode];
    if !hooks.is_empty() {
        args.extend_from_slice(&["--hooks", &hooks]);
    }
    let mut cmd = match wrap.split_first() {
        Some((prog, rest)) => {
            let mut c = Command::new(prog);
            c.args(rest).arg(port_trace_bin());
            c
        }
        None => Command::new(port_trace_bin()),
    };
    cmd.args(&args);
    let tracer = TraceProcess::spawn_command(cmd).expect("start port-trace record");
    // The tracer says how it resolves: by handle as root, by walking without the capability.
    assert_eq!(
        tracer.banner.contains("resolved by walking"),
        !wrap.is_empty(),
        "{}",
        tracer.banner
    );

    // Made while tracing: the resolver has never seen them.
    let docker = cg.make(&format!("system.slice/docker-{DOCKER_ID}.scope"));
    let uid_ = POD_UID.replace('-', "_");
    let pod = cg.make(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{CRI_ID}.scope"
    ));
    let fs_pod = cg.make(&format!("kubepods/besteffort/pod{FS_POD_UID}/{FS_ID}"));

    let ran = vec![
        run_in(
            &cg,
            &unit,
            &ns,
            json!({"kind": "unit", "unit": "pt-web.service", "user_unit": null}),
        ),
        run_in(
            &cg,
            &docker,
            &ns,
            json!({"kind": "container", "runtime": "docker", "id": DOCKER_ID}),
        ),
        run_in(
            &cg,
            &pod,
            &ns,
            json!({"kind": "pod", "uid": POD_UID, "qos": "burstable",
                   "container": {"runtime": "containerd", "id": CRI_ID}}),
        ),
        run_in(
            &cg,
            &fs_pod,
            &ns,
            json!({"kind": "pod", "uid": FS_POD_UID, "qos": "besteffort",
                   "container": {"runtime": null, "id": FS_ID}}),
        ),
    ];
    let (_, stderr) = tracer.stop().expect("stop port-trace");
    assert!(stderr.contains(" 0 lost"), "no events lost: {stderr}");

    let events = events(&file);
    let mut seen = 0;
    for r in &ran {
        assert_eq!(r.cgroup, cg_rel(&r.cgroup), "{}", r.cgroup);
        let mine: Vec<&Value> = events
            .iter()
            .filter(|e| e["pid"].as_u64() == Some(r.pid))
            .collect();
        let mut ports: Vec<u64> = mine.iter().filter_map(|e| e["port"].as_u64()).collect();
        ports.sort_unstable();
        let mut want = r.ports.clone();
        want.sort_unstable();
        assert_eq!(ports, want, "every port of pid {} reported once", r.pid);
        for e in &mine {
            assert_eq!(e["cgroup"], r.cgroup.as_str(), "cgroup of {e}");
            assert_eq!(e["workload"], r.workload, "workload of {e}");
        }
        eprintln!(
            "  pid {} in {}: {} events, workload {}",
            r.pid,
            r.cgroup,
            mine.len(),
            r.workload
        );
        seen += mine.len();
    }
    assert_eq!(
        seen,
        events.len(),
        "no event from elsewhere in the namespace"
    );

    // analyze: one row per workload, with its three allocations.
    let summary = analyze_json(&file);
    let rows = summary["workloads"].as_array().unwrap();
    assert_eq!(rows.len(), ran.len(), "{rows:#?}");
    for r in &ran {
        let row = rows
            .iter()
            .find(|w| w["workload"] == r.workload)
            .unwrap_or_else(|| panic!("no analyze row for {}", r.workload));
        assert_eq!(row["allocations"].as_u64(), Some(3), "{row}");
        assert_eq!(row["cgroup"], r.cgroup.as_str());
    }
    eprintln!("{}", analyze(&file, "table"));
    drop(ns);
    let _ = fs::remove_dir_all(&dir);
}

/// The path as the tracer reports it: relative to the hierarchy's root, starting with '/'.
fn cg_rel(p: &str) -> String {
    format!("/{}", p.trim_start_matches('/'))
}

/// `serve`: the workload's allocations appear under its name, and its namespace is named after
/// it while it holds it.
#[test]
fn serve_names_workloads_and_namespace_owners() {
    if !require_root("serve_names_workloads_and_namespace_owners") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cg = Cgroups::new();
    let ns = Netns::new().expect("create network namespace");
    let (daemon, addr) = TraceProcess::serve(&[]).expect("start port-trace serve");
    let unit = cg.make("pt-demo.slice/pt-api.service");
    let running = start_in(
        &cg,
        &unit,
        &ns,
        json!({"kind": "unit", "unit": "pt-api.service", "user_unit": null}),
    );
    let inode = ns.inode;
    let rate = "port_trace_workload_allocation_rate{kind=\"unit\",workload=\"pt-api.service\"}";
    let owner = format!(
        "port_trace_netns_workload_info{{kind=\"unit\",netns=\"{inode}\",workload=\"pt-api.service\"}}"
    );
    // Waits for a state (the daemon refreshes on a timer); the bound only keeps a broken
    // daemon from hanging CI.
    let mut body = String::new();
    for _ in 0..300 {
        body = get(addr, "/metrics").expect("the daemon answers").1;
        if value(&body, rate).is_some() && value(&body, &owner).is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let shown: Vec<&str> = body.lines().filter(|l| l.contains("workload")).collect();
    eprintln!("{}", shown.join("\n"));
    // Three ports in the last minute, as a per-second rate over the minute.
    assert_eq!(value(&body, rate), Some(3.0 / 60.0), "{rate}");
    assert_eq!(value(&body, &owner), Some(1.0), "{owner}");
    let ran = running.finish();
    assert_eq!(ran.ports.len(), 3);
    let (_, stderr) = daemon
        .stop_with(nix::sys::signal::Signal::SIGTERM)
        .expect("serve exits 0");
    assert!(stderr.contains("stopped"), "{stderr}");
}
