//! The packaged systemd unit: deploy/systemd/port-trace.service with the paths of the package
//! (the binary in /usr/bin, the config in /etc/port-trace) and the package's system user in
//! place of DynamicUser. Every other line, all the hardening, is the repository's unit as is.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::shell::workspace_root;

const SOURCE: &str = "deploy/systemd/port-trace.service";

/// Each (line in the repository's unit, line in the package's). Each must occur exactly once,
/// so a change to the repository's unit cannot silently leave the package's stale.
const EDITS: &[(&str, &str)] = &[
    (
        "# Install: see deploy/README.md.",
        "# Installed by the port-trace package, not enabled: systemctl enable --now port-trace",
    ),
    (
        "Documentation=file:///usr/local/share/doc/port-trace/metrics.md",
        "Documentation=man:port-trace-serve(1) file:///usr/share/doc/port-trace/metrics.md",
    ),
    (
        "ExecStart=/usr/local/bin/port-trace serve --listen 127.0.0.1:9864",
        // The listen address (same default) and every other setting come from the config.
        "ExecStart=/usr/bin/port-trace serve --config /etc/port-trace/port-trace.toml",
    ),
    (
        "# Not root: a user of its own (systemd creates it at start) holding exactly the capabilities",
        "# Not root: the system user port-trace (the package creates it) holding exactly the capabilities",
    ),
    ("DynamicUser=yes", "User=port-trace\nGroup=port-trace"),
];

/// Writes `staging/port-trace.service`.
pub fn write(staging: &Path) -> Result<()> {
    let text = std::fs::read_to_string(workspace_root().join(SOURCE))
        .with_context(|| format!("read {SOURCE}"))?;
    let unit = packaged(&text)?;
    std::fs::create_dir_all(staging)?;
    std::fs::write(staging.join("port-trace.service"), unit)?;
    Ok(())
}

fn packaged(text: &str) -> Result<String> {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for (from, to) in EDITS {
        let at: Vec<usize> = (0..lines.len()).filter(|&i| lines[i] == *from).collect();
        if at.len() != 1 {
            bail!(
                "{SOURCE} has {} lines `{from}` (the package edits exactly one); update xtask/src/dist/unit.rs",
                at.len()
            );
        }
        lines[at[0]] = (*to).to_string();
    }
    Ok(lines.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_unit_takes_every_edit() {
        let text = std::fs::read_to_string(workspace_root().join(SOURCE)).unwrap();
        let unit = packaged(&text).unwrap();
        assert!(unit.contains("\nExecStart=/usr/bin/port-trace serve --config "));
        assert!(unit.contains("\nUser=port-trace\nGroup=port-trace\n"));
        assert!(!unit.contains("DynamicUser") && !unit.contains("/usr/local"));
        // The hardening is the repository's.
        assert!(unit.contains("\nAmbientCapabilities=CAP_BPF CAP_PERFMON"));
        assert!(unit.contains("\nProtectSystem=strict\n"));
    }

    #[test]
    fn a_missing_line_is_one_sentence() {
        let err = packaged("[Service]\n").unwrap_err().to_string();
        assert!(err.contains("has 0 lines") && !err.contains('\n'), "{err}");
    }
}
