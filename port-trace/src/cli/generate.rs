//! `port-trace generate man|completions DIR`: man pages and shell completions from this very
//! command line, so they cannot drift from it. Hidden: `cargo xtask dist` runs it to package
//! them; nobody needs it at run time.

use std::{fs, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(value_enum)]
    pub what: What,
    /// Directory to write into (created when missing).
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    /// port-trace.1 and port-trace-SUBCOMMAND.1, one per subcommand.
    Man,
    /// port-trace.bash, _port-trace (zsh) and port-trace.fish.
    Completions,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let written = match args.what {
        What::Man => man(&args.dir),
        What::Completions => completions(&args.dir),
    }
    .with_context(|| format!("write into {}", args.dir.display()))?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Every man page, hidden subcommands (this one) left out.
pub fn man(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), dir)?;
    let mut pages = vec![dir.join("port-trace.1")];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push(dir.join(format!("port-trace-{}.1", sub.get_name())));
    }
    Ok(pages)
}

pub fn completions(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let mut cmd = Cli::command();
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| clap_complete::generate_to(shell, &mut cmd, "port-trace", dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_page_per_visible_subcommand_and_three_completions() {
        let dir = std::env::temp_dir().join(format!("port-trace-generate-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pages = man(&dir).unwrap();
        // trace, check, record, analyze, serve, plot; not generate.
        assert_eq!(pages.len(), 7);
        for p in &pages {
            let text = fs::read_to_string(p).unwrap();
            assert!(text.starts_with(".ie"), "{} is not roff", p.display());
        }
        assert!(!dir.join("port-trace-generate.1").exists());
        let serve = fs::read_to_string(dir.join("port-trace-serve.1")).unwrap();
        assert!(serve.contains("refresh\\-interval"));
        let shells = completions(&dir).unwrap();
        assert_eq!(shells.len(), 3);
        let bash = fs::read_to_string(dir.join("port-trace.bash")).unwrap();
        assert!(bash.contains("analyze"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn version_lists_every_hook_set() {
        use crate::hook_set::HookSet;
        let names: Vec<String> = HookSet::value_variants()
            .iter()
            .map(ToString::to_string)
            .collect();
        let line = super::super::LONG_VERSION.lines().last().unwrap();
        assert_eq!(line, format!("hook sets: {}", names.join(", ")));
    }
}
