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

/// An instant query's answer holds at least one series or value.
pub fn has_data(v: &serde_json::Value) -> bool {
    match v["data"]["result"].as_array() {
        Some(a) => !a.is_empty(),
        None => !v["data"]["result"].is_null(),
    }
}

/// Every `expr` in the dashboard and every alert expression, with Grafana's variables
/// replaced.
pub fn expressions() -> Vec<(String, String)> {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/port-trace.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(e) = m.get("expr").and_then(|e| e.as_str())
                    && !e.is_empty()
                {
                    out.push(("dashboard".into(), e.to_string()));
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dash, &mut out);
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let mut alert = String::new();
    let mut lines = rules.lines().peekable();
    while let Some(l) = lines.next() {
        let t = l.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            alert = name.trim().to_string();
        } else if let Some(e) = t.strip_prefix("expr:") {
            let mut e = e.trim().to_string();
            if matches!(e.as_str(), "|" | ">" | "|-" | ">-") {
                let indent = l.len() - t.len();
                e.clear();
                while let Some(n) = lines.peek() {
                    if n.trim().is_empty() || n.len() - n.trim_start().len() <= indent {
                        break;
                    }
                    e.push_str(n.trim());
                    e.push(' ');
                    lines.next();
                }
            }
            out.push((format!("alert {alert}"), e.trim().to_string()));
        }
    }
    out.into_iter()
        .map(|(src, e)| {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "5m")
                .replace("${netns}", ".*")
                .replace("$netns", ".*");
            (src, e)
        })
        .collect()
}

/// The metric names an expression reads (`up` and `port_trace_*`).
pub fn metric_names(e: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    while i < e.len() {
        let word_start = i == 0
            || !e[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let rest = &e[i..];
        let take = if word_start && rest.starts_with("port_trace_") {
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
        } else if word_start && rest.starts_with("up{") {
            2
        } else {
            0
        };
        if take > 0 {
            if !names.iter().any(|n| n == &rest[..take]) {
                names.push(rest[..take].to_string());
            }
            i += take;
        } else {
            i += rest.chars().next().map(char::len_utf8).unwrap_or(1);
        }
    }
    names
}

/// The dashboard and alert expressions `keep` selects that Prometheus answers with no data:
/// a dashboard query must return data as written; for an alert, every metric it reads must
/// have data (whether its threshold is crossed is the alert's business). Each must evaluate.
pub fn expressions_without_data(prom: &Prometheus, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut empty = Vec::new();
    for (src, e) in expressions().into_iter().filter(|(_, e)| keep(e)) {
        let v = prom.query(&e);
        assert_eq!(v["status"], "success", "{src}: {e}: {v}");
        if src == "dashboard" {
            if !has_data(&v) {
                empty.push(format!("{src}: {e}"));
            }
            continue;
        }
        for name in metric_names(&e) {
            if !has_data(&prom.query(&name)) {
                empty.push(format!("{src}: {name}"));
            }
        }
    }
    empty
}
