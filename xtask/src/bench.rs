//! `cargo xtask bench`: what tracing costs a loopback connect() workload (tests/benches).

use std::process::{Command, ExitCode};

use anyhow::{Context, Result};

use crate::{build::build, setup, shell::cargo};

pub fn command() -> Result<ExitCode> {
    setup::setup(true)?;
    let bin = build(true)?;
    let status = Command::new(cargo())
        .args(["bench", "-p", "port-trace-tests", "--bench", "overhead"])
        .env("PORT_TRACE_BIN", &bin)
        .status()
        .context("run cargo bench")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
