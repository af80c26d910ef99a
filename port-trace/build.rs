use std::process::Command;

use aya_build::{Package, Toolchain};

/// Builds port-trace-ebpf for bpfel-unknown-none with the nightly toolchain; the object is
/// embedded in the binary with `include_bytes_aligned!`. Also records the git commit for
/// `--version`.
fn main() -> anyhow::Result<()> {
    git_commit();
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../port-trace-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "port-trace-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

/// `PORT_TRACE_GIT_COMMIT` for `--version`: taken from the environment when set (a build from
/// a source tarball has no .git), else from git, else "unknown".
fn git_commit() {
    println!("cargo:rerun-if-env-changed=PORT_TRACE_GIT_COMMIT");
    let commit = std::env::var("PORT_TRACE_GIT_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Rerun when HEAD moves: HEAD itself (a checkout) and the branch it points at (a commit).
    // --git-path resolves both for linked worktrees too.
    for file in ["HEAD", "logs/HEAD"] {
        if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", file]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rustc-env=PORT_TRACE_GIT_COMMIT={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}
