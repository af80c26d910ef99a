//! `cargo xtask run [-- ARGS]`: build and run `port-trace ARGS` (default: `trace`).

use std::process::{Command, ExitCode};

use anyhow::{Context, Result};

use crate::{build::build, setup};

pub fn command(release: bool, args: Vec<String>) -> Result<ExitCode> {
    setup::setup(false)?;
    let bin = build(release)?;
    let args = if args.is_empty() {
        vec!["trace".to_string()]
    } else {
        args
    };
    forward_interrupts_to_child();
    let status = Command::new(&bin)
        .args(&args)
        .status()
        .with_context(|| format!("run {}", bin.display()))?;
    Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
}

extern "C" fn ignore(_: libc::c_int) {}

/// Ctrl-C reaches the whole foreground group: let port-trace handle it (drain, print its
/// summary, exit 0) instead of xtask dying first. A handler, unlike SIG_IGN, is reset by exec,
/// so the child still gets the default behaviour until it installs its own.
fn forward_interrupts_to_child() {
    // SAFETY: installs a handler that does nothing and touches no shared state, so it is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, ignore as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, ignore as *const () as libc::sighandler_t);
    }
}
