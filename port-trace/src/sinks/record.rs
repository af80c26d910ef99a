//! Recordings: the JSON lines of `trace --format json`, optionally followed by one
//! `{"meta": "netns", ...}` line per namespace with its range and socket table at the end of the
//! recording (written by `record`), so `analyze` can work offline.
//!
//! Read one line at a time with a bounded buffer: an event line may be at most [`MAX_LINE`]
//! bytes, a namespace line (it starts with `{"meta":` and carries a whole socket table) at most
//! [`MAX_META_LINE`]. Anything longer, a NUL byte or text that is not UTF-8 is not a recording,
//! and the error names the line.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Read},
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
};

use indicatif::ProgressBarIter;
use serde::{Deserialize, Serialize};

use crate::{
    event::{Event, Op, Outcome},
    netns::{NetnsState, UsableRange},
    sinks::progress,
};

/// Longest event line read (a real one is about 300 bytes).
pub const MAX_LINE: usize = 64 * 1024;
/// Longest namespace line read: its socket table, about 160 bytes a socket (1.6 million).
pub const MAX_META_LINE: usize = 256 * 1024 * 1024;
/// How a namespace line starts, as `record` writes it.
const META_PREFIX: &[u8] = b"{\"meta\":";

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} line {line}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: line {line} is longer than {limit} bytes; not a port-trace recording", path.display())]
    LineTooLong {
        path: PathBuf,
        line: usize,
        limit: usize,
    },
    #[error("{}: line {line} holds binary data (a NUL byte); not a port-trace recording", path.display())]
    Binary { path: PathBuf, line: usize },
    #[error("{}: line {line} is not UTF-8 text; not a port-trace recording", path.display())]
    NotText { path: PathBuf, line: usize },
    #[error(
        "{} is a pipe or socket: analyze reads a recording twice (its namespace lines come last), so save it to a file or give --range",
        path.display()
    )]
    NotRereadable { path: PathBuf },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "meta", rename_all = "snake_case")]
pub enum Meta {
    Netns(NetnsState),
}

#[derive(Debug, Default)]
pub struct Recording {
    pub events: Vec<Event>,
    pub namespaces: Vec<NetnsState>,
}

pub fn meta_line(state: &NetnsState) -> String {
    serde_json::to_string(&Meta::Netns(state.clone())).unwrap_or_default()
}

/// Whether a line is a namespace snapshot: it has a top-level `meta` key. (A line that merely
/// contains the word, e.g. an event whose comm is `meta`, is an event.)
fn is_meta(line: &str) -> Result<bool, serde_json::Error> {
    #[derive(Deserialize)]
    struct Kind {
        meta: Option<serde::de::IgnoredAny>,
    }
    if !may_be_meta(line.as_bytes()) {
        return Ok(false);
    }
    Ok(serde_json::from_str::<Kind>(line)?.meta.is_some())
}

/// Only a line that spells `"meta"` or escapes a character can have a top-level `meta` key:
/// the others need no parse to tell.
fn may_be_meta(line: &[u8]) -> bool {
    memchr::memmem::find(line, b"\"meta\"").is_some() || memchr::memchr(b'\\', line).is_some()
}

/// One line of a recording.
#[derive(Debug)]
pub enum Line {
    Event(Event),
    Netns(Box<NetnsState>),
}

/// The lines of a recording, one at a time, through one reused buffer.
pub struct Lines<R> {
    reader: R,
    path: PathBuf,
    buf: Vec<u8>,
    line: usize,
}

/// `bytes` of line `line` as text, or why they are not a recording's.
fn text<'a>(path: &Path, bytes: &'a [u8], line: usize) -> Result<&'a str, RecordingError> {
    if bytes.contains(&0) {
        return Err(RecordingError::Binary {
            path: path.to_path_buf(),
            line,
        });
    }
    std::str::from_utf8(bytes).map_err(|_| RecordingError::NotText {
        path: path.to_path_buf(),
        line,
    })
}

/// Opens a recording for [`Lines`].
pub fn open(path: &Path) -> Result<Lines<BufReader<ProgressBarIter<fs::File>>>, RecordingError> {
    let file = fs::File::open(path).map_err(|source| RecordingError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file = progress::reading(file, &format!("reading {}", path.display()));
    Ok(Lines::new(BufReader::with_capacity(256 * 1024, file), path))
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R, path: &Path) -> Self {
        Lines {
            reader,
            path: path.to_path_buf(),
            buf: Vec::new(),
            line: 0,
        }
    }

    /// The number of the line read last (1-based).
    pub fn line(&self) -> usize {
        self.line
    }

    fn io(&self, source: std::io::Error) -> RecordingError {
        RecordingError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads up to `limit` more bytes of the current line into the buffer; true when the line
    /// ended (newline or end of file) within them.
    fn read_more(&mut self, limit: usize) -> Result<bool, RecordingError> {
        let before = self.buf.len();
        let n = (&mut self.reader)
            .take(limit as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| self.io(e))?;
        Ok(self.buf.ends_with(b"\n") || n <= limit || self.buf.len() == before)
    }

    /// Reads the next line; where it lies in the buffer, trimmed (blank lines are empty), or
    /// None at the end.
    fn next_line(&mut self) -> Result<Option<std::ops::Range<usize>>, RecordingError> {
        self.buf.clear();
        if !self.read_more(MAX_LINE)? {
            let limit = if self.buf.starts_with(META_PREFIX) {
                MAX_META_LINE
            } else {
                MAX_LINE
            };
            let ended = limit > MAX_LINE && self.read_more(limit - self.buf.len())?;
            if !ended {
                return Err(RecordingError::LineTooLong {
                    path: self.path.clone(),
                    line: self.line + 1,
                    limit,
                });
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        self.line += 1;
        let start = self.buf.len() - self.buf.trim_ascii_start().len();
        let end = start + self.buf[start..].trim_ascii_end().len();
        Ok(Some(start..end))
    }
}

/// Parses line `line` (trimmed `bytes`, not blank) of the recording at `path`.
fn parse_line(path: &Path, bytes: &[u8], line: usize) -> Result<Line, RecordingError> {
    let text = text(path, bytes, line)?;
    // Most lines are events: try that first. A line with a top-level `meta` key never has
    // every field of an event.
    let parsed = match serde_json::from_str::<Event>(text) {
        Ok(e) => Ok(Line::Event(e)),
        Err(err) => match is_meta(text) {
            Ok(true) => serde_json::from_str(text).map(|Meta::Netns(ns)| Line::Netns(Box::new(ns))),
            _ => Err(err),
        },
    };
    parsed.map_err(|source| RecordingError::Parse {
        path: path.to_path_buf(),
        line,
        source,
    })
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<Line, RecordingError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            return match self.next_line() {
                Ok(Some(r)) if r.is_empty() => continue,
                Ok(Some(r)) => Some(parse_line(&self.path, &self.buf[r], self.line)),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            };
        }
    }
}

/// Lines per chunk handed to a parsing thread. Fewer lines mean more thread wake-ups (with
/// 128, 7% slower); more make glibc's free() of the chunk's buffers consolidate every small
/// free block of the arena first (`malloc_consolidate`, 4% of `analyze`'s time with 2,048).
const CHUNK_LINES: usize = 512;

/// Raw lines for a parsing thread: where they start, their bytes, and the reading error that
/// ended them, if any.
struct Chunk {
    first_line: usize,
    /// Each line (trimmed) followed by a newline.
    bytes: Vec<u8>,
    lines: usize,
    error: Option<RecordingError>,
}

/// The lines of a recording, parsed on threads of their own: JSON is most of `analyze`'s
/// work. One thread reads lines (and checks their length), `workers` threads parse chunks of
/// [`CHUNK_LINES`] lines in turn, and the lines come out in order. About two chunks per
/// worker wait at most; the threads stop after the first error or when this is dropped.
pub struct Parsed {
    from_workers: Vec<std::sync::mpsc::Receiver<Vec<Result<Line, RecordingError>>>>,
    next: usize,
    batch: std::vec::IntoIter<Result<Line, RecordingError>>,
    failed: bool,
}

impl Parsed {
    pub fn spawn<R: BufRead + Send + 'static>(mut lines: Lines<R>, workers: usize) -> Self {
        use std::sync::mpsc::sync_channel;
        let workers = workers.max(1);
        let (mut to_workers, mut from_workers) = (Vec::new(), Vec::new());
        for _ in 0..workers {
            let (tx_raw, rx_raw) = sync_channel::<Chunk>(1);
            let (tx, rx) = sync_channel(1);
            let path = lines.path.clone();
            std::thread::spawn(move || {
                for chunk in rx_raw {
                    if tx.send(parse_chunk(&path, chunk)).is_err() {
                        return;
                    }
                }
            });
            to_workers.push(tx_raw);
            from_workers.push(rx);
        }
        std::thread::spawn(move || {
            for i in 0.. {
                let chunk = read_chunk(&mut lines);
                let last = chunk.error.is_some() || chunk.lines == 0;
                if to_workers[i % workers].send(chunk).is_err() || last {
                    return;
                }
            }
        });
        Parsed {
            from_workers,
            next: 0,
            batch: Vec::new().into_iter(),
            failed: false,
        }
    }
}

/// Up to [`CHUNK_LINES`] lines; fewer at the end or at a reading error.
fn read_chunk<R: BufRead>(lines: &mut Lines<R>) -> Chunk {
    let mut chunk = Chunk {
        first_line: lines.line + 1,
        bytes: Vec::with_capacity(CHUNK_LINES * 320),
        lines: 0,
        error: None,
    };
    while chunk.lines < CHUNK_LINES {
        match lines.next_line() {
            Ok(Some(r)) => {
                chunk.bytes.extend_from_slice(&lines.buf[r]);
                chunk.bytes.push(b'\n');
                chunk.lines += 1;
            }
            Ok(None) => break,
            Err(e) => {
                chunk.error = Some(e);
                break;
            }
        }
    }
    chunk
}

fn parse_chunk(path: &Path, chunk: Chunk) -> Vec<Result<Line, RecordingError>> {
    let mut out = Vec::with_capacity(chunk.lines + 1);
    // Each line ends with a newline. memchr: splitting with a closure costs more instructions
    // per byte than the JSON parse's own scan of the line.
    let mut start = 0;
    for (i, end) in memchr::memchr_iter(b'\n', &chunk.bytes)
        .take(chunk.lines)
        .enumerate()
    {
        let bytes = &chunk.bytes[start..end];
        start = end + 1;
        if bytes.is_empty() {
            continue;
        }
        let parsed = parse_line(path, bytes, chunk.first_line + i);
        let failed = parsed.is_err();
        out.push(parsed);
        if failed {
            return out;
        }
    }
    out.extend(chunk.error.map(Err));
    out
}

impl Iterator for Parsed {
    type Item = Result<Line, RecordingError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(line) = self.batch.next() {
                self.failed |= line.is_err();
                return Some(line);
            }
            if self.failed {
                return None;
            }
            let n = self.from_workers.len();
            let batch = self.from_workers[self.next % n].recv().ok()?;
            self.next += 1;
            self.batch = batch.into_iter();
        }
    }
}

/// Reads a whole recording into memory (for `plot`, which draws every event).
pub fn read(path: &Path) -> Result<Recording, RecordingError> {
    let mut rec = Recording::default();
    for line in open(path)? {
        match line? {
            Line::Event(e) => rec.events.push(e),
            Line::Netns(ns) => rec.namespaces.push(*ns),
        }
    }
    Ok(rec)
}

/// What `analyze` needs before it can classify the first event, read in a first pass: each
/// namespace's range (its line comes last) and the namespace of the first successful connect()
/// (whose range every connect() stream is classified on).
#[derive(Debug, Default, PartialEq)]
pub struct Scan {
    pub ranges: HashMap<u32, UsableRange>,
    pub first_connect_netns: Option<u32>,
}

/// The first pass over a recording (see [`Scan`]): events are parsed only until the first
/// successful connect(), namespace lines without their socket tables, and the other lines are
/// only measured (the line limits hold here too). Refuses a pipe or a socket, which cannot be
/// read twice.
pub fn scan(path: &Path) -> Result<Scan, RecordingError> {
    let io = |source| RecordingError::Io {
        path: path.to_path_buf(),
        source,
    };
    let kind = fs::metadata(path).map_err(io)?.file_type();
    if kind.is_fifo() || kind.is_socket() {
        return Err(RecordingError::NotRereadable {
            path: path.to_path_buf(),
        });
    }
    let file = fs::File::open(path).map_err(io)?;
    let what = format!("scanning {} for its namespaces", path.display());
    let mut reader = BufReader::with_capacity(1 << 20, progress::reading(file, &what));
    let too_long = |line: usize, len: usize, start: &[u8]| {
        let limit = if start.starts_with(META_PREFIX) {
            MAX_META_LINE
        } else {
            MAX_LINE
        };
        (len > limit).then(|| RecordingError::LineTooLong {
            path: path.to_path_buf(),
            line,
            limit,
        })
    };
    let meta = memchr::memmem::Finder::new(b"\"meta\"");
    let mut out = Scan::default();
    // A line begun in an earlier block.
    let mut partial: Vec<u8> = Vec::new();
    let mut line = 0;
    loop {
        let block = reader.fill_buf().map_err(io)?;
        let n = block.len();
        if n == 0 {
            break;
        }
        // Where a line of this block may have a top-level `meta` key (see `may_be_meta`):
        // searched once over the block, not line by line.
        let mut marks: Vec<usize> = meta
            .find_iter(block)
            .chain(memchr::memchr_iter(b'\\', block))
            .collect();
        marks.sort_unstable();
        let (mut start, mut mark) = (0, 0);
        for nl in memchr::memchr_iter(b'\n', block) {
            line += 1;
            let piece = &block[start..nl];
            if partial.is_empty() {
                if let Some(e) = too_long(line, piece.len(), piece) {
                    return Err(e);
                }
                while mark < marks.len() && marks[mark] < start {
                    mark += 1;
                }
                if (mark < marks.len() && marks[mark] < nl) || out.first_connect_netns.is_none() {
                    out.look(piece.trim_ascii());
                }
            } else {
                partial.extend_from_slice(piece);
                if let Some(e) = too_long(line, partial.len(), &partial) {
                    return Err(e);
                }
                out.look(partial.trim_ascii());
                partial.clear();
            }
            start = nl + 1;
        }
        partial.extend_from_slice(&block[start..]);
        if let Some(e) = too_long(line + 1, partial.len(), &partial) {
            return Err(e);
        }
        reader.consume(n);
    }
    out.look(partial.trim_ascii());
    Ok(out)
}

impl Scan {
    /// Takes what the first pass needs from one line. Lines that do not parse are skipped:
    /// the second pass names them, in order.
    fn look(&mut self, line: &[u8]) {
        #[derive(Deserialize)]
        struct RangeOnly {
            netns: u32,
            range: Option<UsableRange>,
        }
        #[derive(Deserialize)]
        struct Connect {
            op: Op,
            netns: u32,
            result: Outcome,
        }
        if line.is_empty() || (self.first_connect_netns.is_some() && !may_be_meta(line)) {
            return;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return;
        };
        if is_meta(text).unwrap_or(false) {
            if let Ok(RangeOnly {
                netns,
                range: Some(r),
            }) = serde_json::from_str(text)
            {
                self.ranges.insert(netns, r);
            }
        } else if self.first_connect_netns.is_none()
            && let Ok(e) = serde_json::from_str::<Connect>(text)
            && e.op == Op::Connect
            && e.result == Outcome::Ok
        {
            self.first_connect_netns = Some(e.netns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::UsableRange;

    /// Recordings made before sockets carried their TIME_WAIT expiry and snapshots their time
    /// and TCP sysctls still read.
    #[test]
    fn old_meta_lines_still_read() {
        let dir = std::env::temp_dir().join(format!("pt-rec-old-{}", std::process::id()));
        let meta = r#"{"meta":"netns","netns":9,"range":{"low":40000,"high":40003,"reserved":[],"usable":4},"sockets":[{"proto":"tcp","family":"v4","state":"time_wait","local_addr":"127.0.0.1","local_port":40000,"remote_addr":"127.0.0.1","remote_port":5000}],"note":null}"#;
        fs::write(&dir, format!("{meta}\n")).unwrap();
        let rec = read(&dir);
        fs::remove_file(&dir).unwrap();
        let rec = rec.unwrap();
        let ns = &rec.namespaces[0];
        assert_eq!((ns.tcp, ns.taken_ns), (None, None));
        assert_eq!(ns.sockets.as_ref().unwrap()[0].time_wait_ms, None);
    }

    #[test]
    fn events_and_meta_round_trip() {
        let dir = std::env::temp_dir().join(format!("pt-rec-{}", std::process::id()));
        let ev = r#"{"ts_ns":1,"op":"bind","proto":"udp","family":"ipv4","port":40000,"saddr":"0.0.0.0","daddr":null,"dport":null,"result":"ok","pid":1,"tid":1,"comm":"x","uid":0,"cgroup_id":1,"netns":9,"hook":"cgroup/post_bind4"}"#;
        let ns = NetnsState {
            netns: 9,
            range: Some(UsableRange::new(40000, 40003, vec![])),
            sockets: Some(vec![]),
            note: None,
            ..Default::default()
        };
        fs::write(&dir, format!("{ev}\n\n{}\n", meta_line(&ns))).unwrap();
        let rec = read(&dir).unwrap();
        fs::remove_file(&dir).unwrap();
        assert_eq!(rec.events.len(), 1);
        assert_eq!(rec.events[0].port, 40000);
        assert_eq!(rec.namespaces, vec![ns]);
    }

    #[test]
    fn bad_line_names_its_number() {
        let p = std::env::temp_dir().join(format!("pt-rec-bad-{}", std::process::id()));
        fs::write(&p, "{\"ts_ns\": 1}\n").unwrap();
        let err = crate::errors::chain(&read(&p).unwrap_err());
        fs::remove_file(&p).unwrap();
        assert!(err.contains("line 1"), "{err}");
    }

    fn write(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("pt-rec-{name}-{}", std::process::id()));
        fs::write(&p, bytes).unwrap();
        p
    }

    const EV: &str = r#"{"ts_ns":1,"op":"bind","proto":"udp","family":"ipv4","port":40000,"saddr":"0.0.0.0","daddr":null,"dport":null,"result":"ok","pid":1,"tid":1,"comm":"x","uid":0,"cgroup_id":1,"netns":9,"hook":"cgroup/post_bind4"}"#;

    /// Every way of reading a recording: in one thread, on parsing threads, and the first pass.
    fn every_reader(p: &Path) -> Vec<String> {
        let one = read(p).map(|_| ()).map_err(|e| crate::errors::chain(&e));
        let parsed: Result<Vec<Line>, _> = Parsed::spawn(open(p).unwrap(), 3).collect();
        let parsed = parsed.map(|_| ()).map_err(|e| crate::errors::chain(&e));
        let scan = scan(p).map(|_| ()).map_err(|e| crate::errors::chain(&e));
        [one, parsed, scan]
            .into_iter()
            .map(|r| r.err().unwrap_or_default())
            .collect()
    }

    /// Issue 10: `analyze /dev/zero` grew past 4 GB. A line past the limit is refused with its
    /// number, by every reader, before it is read whole.
    #[test]
    fn a_line_too_long_is_refused_with_its_number() {
        let mut bytes = format!("{EV}\n").into_bytes();
        bytes.extend(std::iter::repeat_n(b'x', MAX_LINE + 1));
        bytes.push(b'\n');
        let p = write("long", &bytes);
        let errs = every_reader(&p);
        fs::remove_file(&p).unwrap();
        for err in errs {
            assert!(
                err.ends_with("line 2 is longer than 65536 bytes; not a port-trace recording"),
                "{err}"
            );
        }
        // Exactly the limit is fine (and then not JSON).
        let mut bytes = vec![b' '; MAX_LINE - EV.len()];
        bytes.extend(EV.as_bytes());
        let p = write("limit", &bytes);
        let rec = read(&p);
        fs::remove_file(&p).unwrap();
        assert_eq!(rec.unwrap().events.len(), 1);
    }

    #[test]
    fn dev_zero_is_refused_at_once() {
        for err in every_reader(Path::new("/dev/zero")) {
            assert_eq!(
                err,
                "/dev/zero: line 1 is longer than 65536 bytes; not a port-trace recording"
            );
        }
    }

    #[test]
    fn binary_and_non_text_lines_are_named() {
        let p = write("nul", format!("{EV}\n\0\0\0\n").as_bytes());
        let err = crate::errors::chain(&read(&p).unwrap_err());
        fs::remove_file(&p).unwrap();
        assert!(
            err.ends_with("line 2 holds binary data (a NUL byte); not a port-trace recording"),
            "{err}"
        );
        let p = write("latin1", b"{\"comm\": \"caf\xe9\"}\n");
        let err = crate::errors::chain(&read(&p).unwrap_err());
        fs::remove_file(&p).unwrap();
        assert!(
            err.ends_with("line 1 is not UTF-8 text; not a port-trace recording"),
            "{err}"
        );
    }

    /// A namespace line carries its whole socket table: it may be far longer than an event.
    #[test]
    fn a_long_namespace_line_reads() {
        // Longer than the first pass's 1 MiB blocks too.
        let sockets: Vec<crate::netns::SocketRecord> = (0..8000)
            .map(|i| crate::netns::SocketRecord {
                proto: crate::event::Proto::Tcp,
                family: crate::netns::sockets::Family::V4,
                state: crate::netns::sockets::SockState::TimeWait,
                local_addr: "127.0.0.1".parse().unwrap(),
                local_port: 40000 + i,
                remote_addr: "127.0.0.2".parse().unwrap(),
                remote_port: 5000,
                time_wait_ms: Some(1000),
            })
            .collect();
        let ns = NetnsState {
            netns: 9,
            range: Some(UsableRange::new(40000, 49999, vec![])),
            sockets: Some(sockets),
            ..Default::default()
        };
        let line = meta_line(&ns);
        assert!(line.len() > 1 << 20);
        let p = write("bigmeta", format!("{EV}\n{line}\n").as_bytes());
        let rec = read(&p);
        let sc = scan(&p);
        fs::remove_file(&p).unwrap();
        assert_eq!(rec.unwrap().namespaces, vec![ns]);
        assert_eq!(sc.unwrap().ranges[&9].usable, 10000);
    }

    /// The parsing threads hand lines back in order, and stop at the first bad one.
    #[test]
    fn parsed_lines_keep_their_order() {
        let mut text = String::new();
        for i in 0..10_000 {
            text += &EV.replace("\"ts_ns\":1", &format!("\"ts_ns\":{i}"));
            text += "\n";
            if i == 7000 {
                text += "\n";
            }
        }
        text += "{\"ts_ns\": 1}\n";
        text += EV;
        let p = write("order", text.as_bytes());
        let lines: Vec<_> = Parsed::spawn(open(&p).unwrap(), 4).collect();
        fs::remove_file(&p).unwrap();
        assert_eq!(lines.len(), 10_001);
        for (i, l) in lines[..10_000].iter().enumerate() {
            match l {
                Ok(Line::Event(e)) => assert_eq!(e.ts_ns, i as u64),
                other => panic!("{other:?}"),
            }
        }
        let err = crate::errors::chain(lines[10_000].as_ref().unwrap_err());
        assert!(err.contains("line 10002:"), "{err}");
    }

    #[test]
    fn the_first_pass_finds_ranges_and_the_first_connect() {
        let connect = EV
            .replace("\"op\":\"bind\"", "\"op\":\"connect\"")
            .replace("\"netns\":9", "\"netns\":8");
        let ns = NetnsState {
            netns: 8,
            range: Some(UsableRange::new(40000, 40999, vec![])),
            ..Default::default()
        };
        let p = write(
            "scan",
            format!("{EV}\n{connect}\n{}\n", meta_line(&ns)).as_bytes(),
        );
        let sc = scan(&p);
        fs::remove_file(&p).unwrap();
        let sc = sc.unwrap();
        assert_eq!(sc.first_connect_netns, Some(8));
        assert_eq!(sc.ranges[&8], UsableRange::new(40000, 40999, vec![]));
        let fifo = std::env::temp_dir().join(format!("pt-rec-fifo-{}", std::process::id()));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = crate::errors::chain(&scan(&fifo).unwrap_err());
        fs::remove_file(&fifo).unwrap();
        assert!(err.contains("is a pipe or socket"), "{err}");
    }

    /// Issue row 4: a process named `meta` does not make its events unreadable.
    #[test]
    fn an_event_from_a_process_named_meta_is_an_event() {
        let p = std::env::temp_dir().join(format!("pt-rec-meta-{}", std::process::id()));
        let ev = r#"{"ts_ns":1,"op":"bind","proto":"udp","family":"ipv4","port":40000,"saddr":"0.0.0.0","daddr":null,"dport":null,"result":"ok","pid":1,"tid":1,"comm":"meta","uid":0,"cgroup_id":1,"netns":9,"hook":"cgroup/post_bind4"}"#;
        fs::write(&p, format!("{ev}\n")).unwrap();
        let rec = read(&p);
        fs::remove_file(&p).unwrap();
        let rec = rec.unwrap();
        assert_eq!(rec.events.len(), 1);
        assert_eq!(rec.events[0].comm, "meta");
        assert!(rec.namespaces.is_empty());
    }
}
