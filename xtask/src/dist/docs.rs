//! Man pages and shell completions, written by the built binary itself (`port-trace generate`,
//! hidden) from its clap command line, so they match it exactly and xtask need not compile
//! port-trace (and its eBPF object) a second time.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::shell::step;

/// `staging/man/*.1.gz` and `staging/completions/{port-trace.bash,_port-trace,port-trace.fish}`.
pub fn generate(binary: &Path, staging: &Path) -> Result<()> {
    let man = staging.join("man");
    for (what, dir) in [("man", &man), ("completions", &staging.join("completions"))] {
        step(
            &format!("generating {what}"),
            Command::new(binary).args(["generate", what]).arg(dir),
        )?;
    }
    let pages: Vec<_> = std::fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    if !pages.iter().any(|p| p.ends_with("port-trace.1")) {
        bail!("port-trace generate man wrote no port-trace.1");
    }
    // Debian compresses man pages; -n leaves out the time stamp so the .deb is reproducible.
    step(
        "compressing the man pages",
        Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages),
    )
}
