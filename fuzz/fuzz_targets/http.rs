//! The HTTP request path of `serve`: raw bytes from a client into a hyper HTTP/1 connection
//! (over an in-memory stream, with a fake daemon behind `route`), and `route` on its own with
//! any method and path. Whatever arrives, the connection must end once the client has closed,
//! and whatever it answers must be HTTP.

#![no_main]

use std::{convert::Infallible, sync::OnceLock, time::Duration};

use hyper::{Method, Request, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use libfuzzer_sys::fuzz_target;
use port_trace::exporter::http::{Source, route};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    runtime::Runtime,
};

/// The daemon's side, without a tracer.
struct Fake;

impl Source for Fake {
    fn metrics(&self) -> String {
        "# TYPE port_trace_events_lost_total counter\nport_trace_events_lost_total 0\n".into()
    }
    fn health(&self) -> Result<(), String> {
        Err("no events drained for 30s".into())
    }
}

/// One runtime for every input; its clock is paused, so timers (hyper's header deadline) fire
/// as soon as nothing else can run instead of in real seconds.
fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a tokio runtime")
    })
}

/// Longer than any deadline the server sets: a connection still open then is stuck.
const STUCK: Duration = Duration::from_secs(120);

async fn exchange(data: &[u8]) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let service = service_fn(|req: Request<Incoming>| {
        let resp = route(&Fake, req.method(), req.uri().path());
        async move { Ok::<_, Infallible>(resp) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .keep_alive(true)
        .serve_connection(TokioIo::new(server), service);
    let (mut rx, mut tx) = tokio::io::split(client);
    let send = async {
        // The server may close before reading everything (a bad request): not an error.
        let _ = tx.write_all(data).await;
        let _ = tx.shutdown().await;
    };
    let mut answer = Vec::new();
    let receive = rx.read_to_end(&mut answer);
    let all = async { tokio::join!(conn, send, receive) };
    if tokio::time::timeout(STUCK, all).await.is_err() {
        panic!("the connection was still open {STUCK:?} after its client closed");
    }
    answer
}

fuzz_target!(|data: &[u8]| {
    let answer = runtime().block_on(exchange(data));
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1."),
        "not an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );

    // `route` with whatever method and path the first line names.
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.splitn(3, |&b| b == b' ');
    let (Some(method), Some(path)) = (words.next(), words.next()) else {
        return;
    };
    if let Ok(method) = Method::from_bytes(method) {
        let _ = route(&Fake, &method, &String::from_utf8_lossy(path));
    }
});
