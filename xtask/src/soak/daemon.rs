//! The `port-trace serve` under soak: started with a config file of its own, told to reload
//! (SIGHUP) with a changed file, stopped with SIGTERM.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, bail};

pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    config: PathBuf,
    reloads: u64,
    /// Its stderr, line by line (read by a thread of its own, so the pipe never fills).
    pub log: mpsc::Receiver<String>,
}

/// The config for reload number `n`: two shapes in turn, so that each reload changes something.
fn config_text(n: u64) -> String {
    let (top, refresh) = if n.is_multiple_of(2) {
        (10, "2s")
    } else {
        (20, "3s")
    };
    // A window that fills within the first samples: RSS then settles, and growth after
    // that is what the bounds judge.
    format!(
        "listen = \"127.0.0.1:0\"\ntop_destinations = {top}\nrefresh_interval = \"{refresh}\"\nwindow_events = 20000\n"
    )
}

impl Daemon {
    /// Starts `bin serve` and waits for its `serving http://ADDR/metrics` line.
    pub fn start(bin: &Path, dir: &Path) -> Result<Self> {
        let config = dir.join("soak.toml");
        fs::write(&config, config_text(0))?;
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {} serve", bin.display()))?;
        let stderr = child.stderr.take().context("serve's stderr")?;
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let addr = loop {
            let line = match log.recv_timeout(Duration::from_secs(60)) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    bail!("serve did not say where it serves within 60 s");
                }
            };
            eprintln!("serve: {line}");
            if let Some(addr) = serving_addr(&line) {
                break addr;
            }
        };
        Ok(Daemon {
            child,
            addr,
            config,
            reloads: 0,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running? (None: yes; otherwise how it ended.)
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(status.to_string()),
            Err(e) => Some(e.to_string()),
        }
    }

    /// Writes the next config and sends SIGHUP.
    pub fn reload(&mut self) -> Result<()> {
        self.reloads += 1;
        fs::write(&self.config, config_text(self.reloads))?;
        signal(self.pid(), libc::SIGHUP)
    }

    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    /// SIGTERM, then up to 10 s for a clean exit (status 0).
    pub fn stop(mut self) -> Result<()> {
        signal(self.pid(), libc::SIGTERM)?;
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("serve exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        bail!("serve did not exit within 10 s of SIGTERM")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // On an error path: never leave a tracer attached behind.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    // SAFETY: kill has no memory preconditions; pid is our own child's.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
        bail!("kill {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The address in `... serving http://127.0.0.1:PORT/metrics`.
fn serving_addr(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("serving http://")?;
    rest.strip_suffix("/metrics")?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_serving_line() {
        let l = "tracing: hook set cgroup (10 programs); serving http://127.0.0.1:40123/metrics";
        assert_eq!(
            super::serving_addr(l),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(super::serving_addr("port-trace: falling back"), None);
    }

    #[test]
    fn each_reload_changes_the_config() {
        assert_ne!(super::config_text(0), super::config_text(1));
        assert_eq!(super::config_text(0), super::config_text(2));
    }
}
