//! Tests of the artefacts themselves, not of the code: the static binary runs here and is
//! static; the .deb installs with dpkg, its daemon's `check` passes, its unit passes
//! `systemd-analyze verify`, its man page renders, and `dpkg --purge` leaves nothing behind.
//! The other architecture's (aarch64 on an x86_64 machine) binary is checked to be a static
//! ELF for it and its offline commands run under qemu-user; its .deb is checked to be for that
//! architecture and to hold the same files as the installed one.
//! Each command is echoed with its output, so the run is its own transcript.

use std::{
    path::Path,
    process::{Command, Output},
};

use anyhow::{Context, Result, bail};

use super::{Artefacts, Built, VERSION, qemu_user};
use crate::{
    arch::Arch,
    setup,
    shell::{is_root, say, which_path},
};

const PACKAGE: &str = "port-trace";
const USER: &str = "port-trace";

/// Files the package must install (beside the ones dpkg lists, which must all go on purge).
const INSTALLED: &[&str] = &[
    "/usr/bin/port-trace",
    "/usr/lib/systemd/system/port-trace.service",
    "/etc/port-trace/port-trace.toml",
    "/usr/share/port-trace/alerts.yml",
    "/usr/share/port-trace/port-trace.json",
    "/usr/share/man/man1/port-trace.1.gz",
    "/usr/share/man/man1/port-trace-serve.1.gz",
    "/usr/share/bash-completion/completions/port-trace",
    "/usr/share/zsh/vendor-completions/_port-trace",
    "/usr/share/fish/vendor_completions.d/port-trace.fish",
];

pub fn all(built: &Artefacts) -> Result<()> {
    let host = built
        .built
        .iter()
        .find(|b| b.arch.is_host())
        .context("dist built nothing for this machine's architecture")?;
    for b in &built.built {
        elf(b.arch, &b.binary)?;
        if b.arch.is_host() {
            static_binary(&b.binary)?;
            deb(&b.deb)?;
        } else {
            offline_commands(b.arch, &b.binary)?;
            foreign_deb(b, &host.deb)?;
        }
    }
    say("dist: every artefact check passed");
    Ok(())
}

/// The ELF header and program headers (binutils' readelf): built for `arch`, and static (no
/// program interpreter, no shared library needed).
pub fn elf(arch: Arch, bin: &Path) -> Result<()> {
    let readelf = setup::install_missing("readelf", "binutils")?;
    let text = run(Command::new(readelf).args(["-h", "-l", "-d"]).arg(bin))?;
    let machine = match arch {
        Arch::X86_64 => "X86-64",
        Arch::Aarch64 => "AArch64",
    };
    let machine_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Machine:"))
        .unwrap_or("");
    if !machine_line.contains(machine) {
        bail!(
            "{} is not built for {arch}: {}",
            bin.display(),
            machine_line.trim()
        );
    }
    if text.contains("program interpreter") || text.contains("(NEEDED)") {
        bail!(
            "{} is not static: it names an interpreter or a shared library",
            bin.display()
        );
    }
    Ok(())
}

/// The commands that need no eBPF, run under qemu-user: `--help`, `--version`, `analyze` of a
/// small recording (which must find its sequential counter) and `plot` of it (an SVG).
pub fn offline_commands(arch: Arch, bin: &Path) -> Result<()> {
    let emulator = qemu_user::emulator(arch)?;
    say(&format!(
        "dist: running the {arch} binary under {}",
        emulator.display()
    ));
    let help = run(qemu_user::command(arch, bin)?.arg("--help"))?;
    if !help.contains("Usage: port-trace") {
        bail!("--help printed no usage: {help}");
    }
    let version = run(qemu_user::command(arch, bin)?.arg("--version"))?;
    for want in [VERSION, "commit ", "hook sets: fexit, kprobe, cgroup"] {
        if !version.contains(want) {
            bail!("--version does not say `{want}`: {version}");
        }
    }
    let dir = std::env::temp_dir().join(format!("port-trace-dist-{arch}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = analyze_and_plot(arch, bin, &dir);
    std::fs::remove_dir_all(&dir)?;
    result
}

fn analyze_and_plot(arch: Arch, bin: &Path, dir: &Path) -> Result<()> {
    let recording = dir.join("recording.json");
    std::fs::write(&recording, tiny_recording())?;
    let analysis = run(qemu_user::command(arch, bin)?
        .arg("analyze")
        .arg(&recording)
        .args(["--format", "json"]))?;
    if !analysis.contains("\"sequential\"") {
        bail!("analyze did not find the recording's sequential counter: {analysis}");
    }
    let svg = dir.join("ports.svg");
    run(qemu_user::command(arch, bin)?
        .arg("plot")
        .arg(&recording)
        .arg("--out")
        .arg(&svg))?;
    let drawn = std::fs::read_to_string(&svg)
        .with_context(|| format!("plot wrote no {}", svg.display()))?;
    if !drawn.contains("<svg") {
        bail!("plot wrote no SVG");
    }
    say(&format!(
        "dist: {arch} plot wrote an SVG of {} bytes",
        drawn.len()
    ));
    Ok(())
}

/// A .deb that cannot be installed here: its control file names its architecture, and it
/// holds the same paths as `host_deb`, which was installed and checked.
fn foreign_deb(b: &Built, host_deb: &Path) -> Result<()> {
    let arch = run(Command::new("dpkg-deb")
        .args(["--field"])
        .arg(&b.deb)
        .arg("Architecture"))?;
    if arch.trim() != b.arch.debian() {
        bail!("{} says Architecture: {}", b.deb.display(), arch.trim());
    }
    let paths = |deb: &Path| -> Result<Vec<String>> {
        let listing = run(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
        let mut paths: Vec<String> = listing
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5).map(str::to_string))
            .collect();
        paths.sort();
        Ok(paths)
    };
    let (ours, host) = (paths(&b.deb)?, paths(host_deb)?);
    if ours != host {
        bail!(
            "the {} .deb holds other files than the installed one: {ours:?} vs {host:?}",
            b.arch
        );
    }
    say(&format!(
        "dist: the {} .deb holds the same {} paths as the installed one",
        b.arch,
        ours.len()
    ));
    Ok(())
}

/// The musl binary: static, says its version, and runs `check` and an offline `analyze`.
pub fn static_binary(bin: &Path) -> Result<()> {
    let ldd = echo(Command::new("ldd").arg(bin))?;
    let text = both(&ldd);
    if !(text.contains("not a dynamic executable") || text.contains("statically linked")) {
        bail!("{} is not static: ldd says {}", bin.display(), text.trim());
    }
    let version = run(Command::new(bin).arg("--version"))?;
    for want in [VERSION, "commit ", "hook sets: fexit, kprobe, cgroup"] {
        if !version.contains(want) {
            bail!("--version does not say `{want}`: {version}");
        }
    }
    run(Command::new(bin).arg("check"))?;
    let recording =
        std::env::temp_dir().join(format!("port-trace-dist-{}.json", std::process::id()));
    std::fs::write(&recording, tiny_recording())?;
    let analysed = run(Command::new(bin)
        .arg("analyze")
        .arg(&recording)
        .args(["--format", "json"]));
    std::fs::remove_file(&recording)?;
    let analysis = analysed?;
    if !analysis.contains("\"sequential\"") {
        bail!("analyze did not find the recording's sequential counter: {analysis}");
    }
    Ok(())
}

/// 40 connects to one destination with ports counting up by one: a sequential stream.
fn tiny_recording() -> String {
    (0..40)
        .map(|i| {
            format!(
                r#"{{"ts_ns":{ts},"op":"connect","proto":"tcp","family":"ipv4","port":{port},"saddr":"10.0.0.2","daddr":"10.0.0.1","dport":443,"result":"ok","pid":1,"tid":1,"comm":"curl","uid":0,"cgroup_id":1,"netns":9,"hook":"fexit/inet_hash_connect","latency_ns":null}}"#,
                ts = 1_700_000_000_000_000_000u64 + i * 1_000_000,
                port = 40_000 + i
            ) + "\n"
        })
        .collect()
}

/// dpkg -i, then the installed files, user, `check`, unit and man page; always dpkg --purge,
/// then nothing of the package may be left.
pub fn deb(deb: &Path) -> Result<()> {
    if !is_root() || which_path("dpkg").is_err() {
        bail!("the .deb test installs the package: it needs root and dpkg");
    }
    if installed() {
        bail!("{PACKAGE} is already installed here; the .deb test would replace and purge it");
    }
    // Purged even when installing or a check failed, so a failed run leaves nothing behind.
    let checked = run(Command::new("dpkg").arg("-i").arg(deb))
        .and_then(|_| run(Command::new("dpkg").args(["-L", PACKAGE])))
        .and_then(|listed| installed_checks().map(|()| listed));
    let purged = run(Command::new("dpkg").args(["--purge", PACKAGE]));
    let listed = checked?;
    purged?;
    nothing_left(&listed)
}

fn installed_checks() -> Result<()> {
    for f in INSTALLED {
        if !Path::new(f).is_file() {
            bail!("the package did not install {f}");
        }
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}\n", PACKAGE]))?;
    if !conffiles.contains("/etc/port-trace/port-trace.toml") {
        bail!("/etc/port-trace/port-trace.toml is not a conffile");
    }
    run(Command::new("getent").args(["passwd", USER]))?;
    // The package enables nothing: the operator does.
    if Path::new("/etc/systemd/system/multi-user.target.wants/port-trace.service").exists() {
        bail!("installing the package enabled port-trace.service");
    }
    run(Command::new("/usr/bin/port-trace").arg("check"))?;
    match which_path("systemd-analyze") {
        Ok(sa) => {
            run(Command::new(sa).args(["verify", "/usr/lib/systemd/system/port-trace.service"]))?;
        }
        Err(_) => say("dist: systemd-analyze is not installed; the unit is not verified"),
    }
    let page = run(Command::new("man")
        .args(["-l", "/usr/share/man/man1/port-trace-serve.1.gz"])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80"))?;
    if !page.contains("refresh-interval") {
        bail!("man port-trace-serve does not render its options");
    }
    run(Command::new("bash").args([
        "-c",
        ". /usr/share/bash-completion/completions/port-trace && complete -p port-trace",
    ]))?;
    Ok(())
}

/// After the purge: no file dpkg listed, no config directory, no user or group, no package.
fn nothing_left(listed: &str) -> Result<()> {
    // Directories such as /usr/bin are shared; the package's own files must be gone.
    let left: Vec<&str> = listed
        .lines()
        .filter(|p| {
            let p = Path::new(p);
            p.exists() && !p.is_dir()
        })
        .chain(
            ["/etc/port-trace", "/usr/share/port-trace"]
                .into_iter()
                .filter(|d| Path::new(d).exists()),
        )
        .collect();
    if !left.is_empty() {
        bail!("dpkg --purge left {}", left.join(", "));
    }
    for db in ["passwd", "group"] {
        if echo(Command::new("getent").args([db, USER]))?
            .status
            .success()
        {
            bail!("dpkg --purge left the {USER} entry in {db}");
        }
    }
    if installed() {
        bail!("dpkg still knows {PACKAGE} after the purge");
    }
    say("dist: purged; no file, directory, user, group or unit left");
    Ok(())
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", PACKAGE])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout != b"not-installed")
}

/// Runs `cmd`, printing it and what it printed (shortened), and returns its output.
fn echo(cmd: &mut Command) -> Result<Output> {
    let shown = show(cmd);
    let out = cmd.output().with_context(|| format!("run {shown}"))?;
    println!("$ {shown}");
    let text = both(&out);
    let lines: Vec<&str> = text.lines().collect();
    for l in lines.iter().take(12) {
        println!("  {l}");
    }
    if lines.len() > 12 {
        println!("  ... ({} more lines)", lines.len() - 12);
    }
    if !out.status.success() {
        println!("  [exit {}]", out.status.code().unwrap_or(-1));
    }
    Ok(out)
}

/// [`echo`], then the stdout of a command that must exit 0.
fn run(cmd: &mut Command) -> Result<String> {
    let out = echo(cmd)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            show(cmd),
            out.status,
            both(&out).lines().last().unwrap_or("").trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn show(cmd: &Command) -> String {
    format!("{cmd:?}").replace('"', "")
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
