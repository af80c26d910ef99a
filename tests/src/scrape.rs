//! Talking to the daemon and to Prometheus over loopback: a free port, a minimal HTTP GET, a
//! series' value in a scrape, and a real Prometheus (Debian's package) with the repository's
//! alert rules.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A minimal HTTP/1.0 GET (no chunked replies to decode): (status, body), or None when the
/// server cannot be reached or answers nothing.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|b| b.1).unwrap_or("");
    Some((status, body.to_string()))
}

/// The value of the one series named exactly `series` (name and labels) in a scrape.
pub fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The repository's root (for deploy/ files).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Prometheus on loopback, scraping one target and evaluating rules every second; stopped and
/// its data removed on drop.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Starts it with `rules` (alert rules YAML) scraping `target`, and waits until it answers
    /// `/-/ready` (it answers 503 while its storage opens, slowly on a loaded machine).
    pub fn start(name: &str, target: SocketAddr, rules: &str) -> Self {
        Self::start_with(name, target, rules, "")
    }

    /// [`start`](Self::start) with more settings for the scrape job (`scheme`, `tls_config`,
    /// `basic_auth`...), as YAML lines indented for the job.
    pub fn start_with(name: &str, target: SocketAddr, rules: &str, job: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pt-{name}-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus directory");
        std::fs::write(dir.join("alerts.yml"), rules).expect("alert rules");
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\nscrape_configs:\n  - job_name: port-trace\n{job}    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus.yml");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus)");
        let p = Prometheus { child, dir, addr };
        for _ in 0..600 {
            if get(p.addr, "/-/ready").is_some_and(|(s, _)| s == 200) {
                return p;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus never became ready");
    }

    /// An instant query; panics on an error answer.
    pub fn query(&self, expr: &str) -> serde_json::Value {
        let q: String = expr
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={q}"))
            .unwrap_or_else(|| panic!("{expr}: prometheus did not answer"));
        assert_eq!(status, 200, "{expr}: {body}");
        serde_json::from_str(&body).expect("prometheus answers JSON")
    }
}
