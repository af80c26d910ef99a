//! `cargo xtask vm-check`: boot stock kernels and run `port-trace check` and a short trace in
//! the guest, to see the binary built here work against another kernel's struct layout.

use anyhow::{Result, bail};

use super::{boot_kernel, cache_dir, initramfs, kernel::Kernel, qemu, with_libraries};
use crate::{build::build, setup};

/// What the guest runs: check, then a short trace while busybox makes a TCP connect (refused,
/// but the kernel still picks a port) and a UDP send; the trace must show both.
const BODY: &str = r#"
mkdir -p /sys/fs/cgroup /tmp
mount -t cgroup2 none /sys/fs/cgroup
ip link set lo up
/port-trace check || true
/port-trace trace HOOKS --format json --duration 60s > /tmp/ev.json 2> /tmp/tr.err &
for i in $(seq 1 240); do grep -q '^tracing:' /tmp/tr.err && break; sleep 0.5; done
cat /tmp/tr.err
nc -l -p 5000 > /dev/null &
sleep 1
echo hi | nc -w 1 127.0.0.1 5000 || true
nslookup example.invalid 127.0.0.1 > /dev/null 2>&1 || true
kill -INT $(pidof port-trace)
wait $(pidof port-trace) 2>/dev/null
sleep 1
cat /tmp/tr.err
cat /tmp/ev.json
grep -q '"op":"connect"' /tmp/ev.json
grep -q '"op":"bind"' /tmp/ev.json || grep -q '"op":"autobind"' /tmp/ev.json
"#;

/// How long one kernel may take to boot, check and trace under TCG.
const TIMEOUT_SECS: u64 = 600;

pub fn command(kernels: &[Kernel], hooks: Option<&str>) -> Result<()> {
    setup::setup(false)?;
    let bin = build(false)?;
    let cache = cache_dir()?;
    let qemu = qemu::fetch_qemu(&cache)?;
    let files = with_libraries(&[(bin, "/port-trace".into())])?;
    let hooks_arg = hooks.map(|h| format!("--hooks {h}")).unwrap_or_default();
    let body = BODY.replace("HOOKS", &hooks_arg);
    let initramfs = initramfs::build_initramfs(&cache, &files, &initramfs::init_script(&body))?;
    let mut failed = Vec::new();
    for &kernel in kernels {
        let console = boot_kernel(&qemu, &cache, &initramfs, kernel, TIMEOUT_SECS)?;
        if let Err(e) = initramfs::parse_result(&console) {
            failed.push(format!("{kernel}: {e}"));
        }
    }
    if !failed.is_empty() {
        bail!("vm-check failed: {}", failed.join("; "));
    }
    println!("vm-check: {} kernel(s) ok", kernels.len());
    Ok(())
}
