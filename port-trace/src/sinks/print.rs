//! Printing events: aligned columns for a terminal, or one JSON object per line.

use std::io::{self, Write};

use chrono::{Local, TimeZone};

use crate::event::{Event, Family};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub const TABLE_HEADER: &str = "TIME         PID     COMM             OP       PROTO FAM  PORT  LOCAL                    DESTINATION                     RESULT         HOOK                     WORKLOAD                         CGROUP";

fn hms(ts_ns: u64) -> String {
    let secs = (ts_ns / 1_000_000_000) as i64;
    let nanos = (ts_ns % 1_000_000_000) as u32;
    match Local.timestamp_opt(secs, nanos).single() {
        Some(t) => t.format("%H:%M:%S%.3f").to_string(),
        None => ts_ns.to_string(),
    }
}

fn endpoint(addr: &std::net::IpAddr, port: u16) -> String {
    match addr {
        std::net::IpAddr::V4(a) => format!("{a}:{port}"),
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// A command name as it may be shown on a terminal: control characters (a newline that would
/// forge a row, an escape sequence) are written escaped. Process names are chosen by anyone.
pub fn printable(comm: &str) -> String {
    comm.chars()
        .flat_map(|c| {
            let escaped = c.is_control().then(|| c.escape_default());
            escaped
                .into_iter()
                .flatten()
                .chain((!c.is_control()).then_some(c))
        })
        .collect()
}

/// The workload's short name; `-` when the event carries none (an old recording). Cgroup
/// names are chosen by whoever made them, so they are escaped like command names.
fn workload_column(e: &Event) -> String {
    match &e.workload {
        Some(w) => printable(&w.label(e.cgroup.as_deref())),
        None => "-".into(),
    }
}

pub fn table_row(e: &Event) -> String {
    let dest = match (e.daddr, e.dport) {
        (Some(a), Some(p)) => endpoint(&a, p),
        _ => "-".into(),
    };
    let fam = match e.family {
        Family::Inet => "v4",
        Family::Inet6 => "v6",
    };
    let row = format!(
        "{:<12} {:<7} {:<16} {:<8} {:<5} {:<4} {:<5} {:<24} {:<31} {:<14} {:<24} {:<32} {}",
        hms(e.ts_ns),
        e.pid,
        printable(&e.comm),
        e.op,
        e.proto,
        fam,
        e.port,
        endpoint(&e.saddr, e.port),
        dest,
        e.result,
        e.hook.to_string(),
        workload_column(e),
        e.cgroup
            .as_deref()
            .map(printable)
            .unwrap_or_else(|| "-".into())
    );
    match &e.nat {
        Some(n) => format!("{row}{}", nat_note(n)),
        None => row,
    }
}

/// A NAT event's original source and its space's occupancy, after the last column.
fn nat_note(n: &crate::event::NatInfo) -> String {
    let from = match n.orig_saddr.zip(n.orig_sport) {
        Some((a, p)) => format!(" from {}", endpoint(&a, p)),
        None => String::new(),
    };
    let asked = match (n.orig_daddr, n.orig_dport) {
        (None, None) => String::new(),
        (a, p) => format!(
            " asked for {}",
            endpoint(
                &a.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
                p.unwrap_or(0)
            )
        ),
    };
    format!(
        "{from}{asked} ({}/{} NAT ports in use)",
        n.in_use,
        n.range.size()
    )
}

/// Writes events; a closed stdout (`| head`) ends the trace quietly.
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    header_done: bool,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            header_done: false,
        }
    }

    pub fn print(&mut self, e: &Event) -> io::Result<()> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, e)?;
                self.out.write_all(b"\n")
            }
            Format::Table => {
                if !self.header_done {
                    writeln!(self.out, "{TABLE_HEADER}")?;
                    self.header_done = true;
                }
                writeln!(self.out, "{}", table_row(e))
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Op, Outcome, Proto, test_event};
    use std::net::Ipv4Addr;

    fn event() -> Event {
        let dest = Some((Ipv4Addr::new(127, 0, 0, 2), 80));
        let mut e = test_event(Op::Connect, Proto::Tcp, 41000, dest, Outcome::Ok, 0);
        e.pid = 42;
        e.comm = "nc".into();
        e
    }

    #[test]
    fn json_is_one_object_per_line() {
        let mut p = Printer::new(Vec::new(), Format::Json);
        p.print(&event()).unwrap();
        p.print(&event()).unwrap();
        let s = String::from_utf8(p.out).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["port"], 41000);
        assert_eq!(v["daddr"], "127.0.0.2");
        assert_eq!(v["dport"], 80);
        assert_eq!(v["result"], "ok");
        assert!(v["latency_ns"].is_null());
    }

    #[test]
    fn json_destination_is_null_without_one() {
        let mut e = event();
        e.daddr = None;
        e.dport = None;
        let v = serde_json::to_value(&e).unwrap();
        assert!(v["daddr"].is_null() && v["dport"].is_null());
    }

    #[test]
    fn table_columns_line_up_with_header() {
        let mut p = Printer::new(Vec::new(), Format::Table);
        p.print(&event()).unwrap();
        let s = String::from_utf8(p.out).unwrap();
        let mut lines = s.lines();
        let header = lines.next().unwrap();
        let row = lines.next().unwrap();
        let col = |l: &str, name: &str| header.find(name).map(|i| &l[i..]).unwrap().to_string();
        assert!(col(row, "PID").starts_with("42 "));
        assert!(col(row, "OP").starts_with("connect "));
        assert!(col(row, "PORT").starts_with("41000"));
        assert!(col(row, "DESTINATION").starts_with("127.0.0.2:80 "));
        assert!(col(row, "RESULT").starts_with("ok "));
    }

    #[test]
    fn table_names_the_workload_and_cgroup() {
        let mut e = event();
        let row = table_row(&e);
        let header = TABLE_HEADER;
        let col = |l: &str, name: &str| header.find(name).map(|i| l[i..].to_string()).unwrap();
        assert!(
            col(&row, "WORKLOAD").starts_with("- "),
            "old recording: {row}"
        );
        e.cgroup = Some("/system.slice/nginx.service".into());
        e.workload = Some(crate::attribution::classify("/system.slice/nginx.service").into());
        let row = table_row(&e);
        assert!(col(&row, "WORKLOAD").starts_with("nginx.service "), "{row}");
        assert_eq!(col(&row, "CGROUP"), "/system.slice/nginx.service");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["cgroup"], "/system.slice/nginx.service");
        assert_eq!(v["workload"]["kind"], "unit");
        assert_eq!(v["workload"]["unit"], "nginx.service");
    }

    /// Issue row 6: a comm with a newline or an escape sequence cannot forge a row or reach
    /// the terminal raw.
    #[test]
    fn hostile_comm_is_escaped_in_the_table() {
        let mut e = event();
        e.comm = "evil\n12:00 x\x1b[31m".into();
        let row = table_row(&e);
        assert!(!row.contains('\n') && !row.contains('\x1b'), "{row:?}");
        assert!(row.contains("evil\\n12:00 x\\u{1b}[31m"), "{row:?}");
    }
}
