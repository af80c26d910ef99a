//! Counting `trace --format json` as it streams: events of the loops' namespace per (comm, op).
//!
//! Read from a pipe on the harness's CPU rather than written to a file: a file's writeback
//! would run kernel workers on the loops' CPU and bill them to the trace column.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    thread::JoinHandle,
};

/// Events per (comm, op).
pub type Counts = HashMap<(String, String), u64>;

/// Counts `out` to its end on a thread of its own; the thread returns the counts.
pub fn count_in_background(
    out: impl Read + Send + 'static,
    netns: u64,
) -> JoinHandle<std::io::Result<Counts>> {
    std::thread::spawn(move || {
        let mut counts = Counts::new();
        let mut reader = BufReader::with_capacity(1 << 20, out);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            if let Some(key) = key_of(&line, netns) {
                *counts.entry(key).or_default() += 1;
            }
            line.clear();
        }
        Ok(counts)
    })
}

/// (comm, op) of one JSON event line when its `netns` is `netns`. A plain field scan, not a
/// JSON parse: the harness must keep up with the tracer (a debug build parsing 100k lines a
/// second would not), and port-trace writes compact JSON whose string fields end at the first
/// unescaped quote; the loops' comms and the ops have no escapes.
fn key_of(line: &str, netns: u64) -> Option<(String, String)> {
    let number: u64 = field(line, "\"netns\":")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    if number != netns {
        return None;
    }
    let text = |key: &str| -> Option<String> {
        let rest = field(line, key)?.strip_prefix('"')?;
        Some(rest[..rest.find('"')?].to_string())
    };
    Some((text("\"comm\":")?, text("\"op\":")?))
}

/// What follows `key` in `line`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.find(key).map(|i| &line[i + key.len()..])
}

#[cfg(test)]
mod tests {
    const LINE: &str = r#"{"ts_ns":1796201023432674834,"op":"connect","proto":"tcp","family":"ipv4","port":32822,"saddr":"127.0.0.1","daddr":"127.0.0.1","dport":5000,"result":"ok","pid":19026,"tid":19026,"comm":"pt-connect","uid":0,"cgroup_id":1,"netns":4026532178,"hook":"sock_ops/tcp_connect_cb","latency_ns":null}"#;

    #[test]
    fn keys_events_of_the_namespace_by_comm_and_op() {
        assert_eq!(
            super::key_of(LINE, 4026532178),
            Some(("pt-connect".into(), "connect".into()))
        );
        assert_eq!(super::key_of(LINE, 4026531840), None);
    }

    #[test]
    fn counts_a_stream_to_its_end() {
        let text = format!("{LINE}\n{LINE}\n{}\n", LINE.replace("4026532178", "1"));
        let counts = super::count_in_background(std::io::Cursor::new(text), 4026532178)
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(counts[&("pt-connect".into(), "connect".into())], 2);
        assert_eq!(counts.len(), 1);
    }
}
