//! Issue 11 row 2: idle and slowloris clients cannot starve a scraper. The real HTTP server runs
//! in this process on 127.0.0.1:0 with a fixed metrics text, so this needs no root.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use port_trace::exporter::{
    http::{self, Source},
    web_config::WebConfig,
};

const SLOWLORIS: usize = 200;
const IDLE: usize = 64;
const SCRAPES: usize = 100;

struct Fixed;
impl Source for Fixed {
    fn metrics(&self) -> String {
        "port_trace_build_info 1\n".into()
    }
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The server on a runtime of its own; stops when the returned sender is dropped.
fn start_server() -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    thread::JoinHandle<()>,
) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let (_web_tx, web) = tokio::sync::watch::channel(Arc::new(WebConfig::default()));
            http::serve(listener, Arc::new(Fixed), web, async {
                let _ = stop_rx.await;
            })
            .await;
        });
    });
    (addr_rx.recv().unwrap(), stop_tx, server)
}

/// A request that never ends: a request line, then one header byte at a time.
fn slow_byte(i: usize) -> u8 {
    const HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\n";
    const MORE: &[u8] = b"X-a: b\r\n";
    if i < HEAD.len() {
        HEAD[i]
    } else {
        MORE[(i - HEAD.len()) % MORE.len()]
    }
}

/// Holds `SLOWLORIS` connections that send one byte a second and `IDLE` that send nothing; a
/// connection the server closes is opened again, so the pressure never lets up. Runs until
/// `stop` (and at most 60 s).
fn attack(addr: SocketAddr, stop: Arc<AtomicBool>, ready: std::sync::mpsc::Sender<()>) {
    let connect = || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_nonblocking(true).ok()?;
        Some(s)
    };
    let mut slow: Vec<(Option<TcpStream>, usize)> =
        (0..SLOWLORIS).map(|_| (connect(), 0)).collect();
    let mut idle: Vec<Option<TcpStream>> = (0..IDLE).map(|_| connect()).collect();
    let _ = ready.send(());
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
        for (s, sent) in &mut slow {
            let alive = s
                .as_mut()
                .is_some_and(|s| s.write(&[slow_byte(*sent)]).is_ok_and(|n| n == 1));
            if alive {
                *sent += 1;
            } else {
                *s = connect();
                *sent = 0;
            }
        }
        for s in &mut idle {
            let mut buf = [0u8; 64];
            let closed = match s.as_mut().map(|s| s.read(&mut buf)) {
                None | Some(Ok(_)) => true,
                Some(Err(e)) => e.kind() != ErrorKind::WouldBlock,
            };
            if closed {
                *s = connect();
            }
        }
        // About one byte a second per slow connection.
        for _ in 0..10 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One well-behaved scrape: 200 with the metrics, all within a second.
fn scrape(addr: SocketAddr) -> Result<(), String> {
    let limit = Duration::from_secs(1);
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    let reply = String::from_utf8_lossy(&reply);
    if !reply.starts_with("HTTP/1.1 200") || !reply.contains("port_trace_build_info 1") {
        return Err(format!("reply {:?}", reply.lines().next().unwrap_or("")));
    }
    if started.elapsed() > limit {
        return Err(format!("took {:?}", started.elapsed()));
    }
    Ok(())
}

#[test]
fn slowloris_and_idle_clients_cannot_starve_a_scraper() {
    let (addr, stop_server, server) = start_server();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let attacker = {
        let stop = stop.clone();
        thread::spawn(move || attack(addr, stop, ready_tx))
    };
    ready_rx.recv().unwrap();
    // Let the server take in every hostile connection before the first scrape.
    thread::sleep(Duration::from_millis(500));
    let mut failures = Vec::new();
    for i in 0..SCRAPES {
        let started = Instant::now();
        if let Err(why) = scrape(addr) {
            failures.push(format!("scrape {i}: {why}"));
        }
        thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    drop(stop_server);
    server.join().unwrap();
    let answered = SCRAPES - failures.len();
    eprintln!("{answered} of {SCRAPES} scrapes answered with 200 within 1 s");
    assert!(
        answered * 100 >= SCRAPES * 99,
        "{answered} of {SCRAPES} scrapes answered: {failures:#?}"
    );
}

/// A scraper's kept-alive connection is not cut at the first request's (3 s) deadline: only an
/// idle minute, or eviction by a newer connection when the table is full, ends it.
#[test]
fn a_kept_alive_connection_outlives_the_first_request_deadline() {
    let (addr, stop_server, server) = start_server();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ask = |s: &mut TcpStream| {
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&mut s).starts_with("HTTP/1.1 200"));
    thread::sleep(Duration::from_secs(4));
    let again = ask(&mut s);
    assert!(again.starts_with("HTTP/1.1 200"), "{again:?}");
    drop(stop_server);
    server.join().unwrap();
}
