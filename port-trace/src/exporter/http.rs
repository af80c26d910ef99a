//! The `/metrics` and `/healthz` endpoint (hyper). Slow or malformed clients cannot stall it:
//! headers must arrive within a few seconds, each connection has a deadline, and the number of
//! connections is bounded.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

pub const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// What the server asks the daemon for on each request.
pub trait Source: Send + Sync + 'static {
    /// The Prometheus text exposition.
    fn metrics(&self) -> String;
    /// `Ok(())` when healthy, otherwise the reason.
    fn health(&self) -> Result<(), String>;
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("valid"),
    );
    r
}

pub fn route<S: Source>(source: &S, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let known = matches!(path, "/metrics" | "/healthz");
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, "GET, HEAD".parse().expect("valid"));
        return r;
    }
    match path {
        "/metrics" => {
            let mut r = text(StatusCode::OK, source.metrics());
            r.headers_mut().insert(
                CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8"
                    .parse()
                    .expect("valid"),
            );
            r
        }
        _ => match source.health() {
            Ok(()) => text(StatusCode::OK, "ok\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
    }
}

/// Serves until `shutdown` resolves; then stops accepting and returns.
pub async fn serve<S: Source>(
    listener: TcpListener,
    source: Arc<S>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of fds and the like: back off instead of spinning.
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
        };
        // Over the limit: close at once rather than queue without bound.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = route(source.as_ref(), req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(Result<(), String>);
    impl Source for Fake {
        fn metrics(&self) -> String {
            "m 1\n".into()
        }
        fn health(&self) -> Result<(), String> {
            self.0.clone()
        }
    }

    #[test]
    fn routes() {
        let ok = Fake(Ok(()));
        assert_eq!(
            route(&ok, &Method::GET, "/metrics").status(),
            StatusCode::OK
        );
        assert_eq!(
            route(&ok, &Method::GET, "/healthz").status(),
            StatusCode::OK
        );
        assert_eq!(
            route(&ok, &Method::GET, "/").status(),
            StatusCode::NOT_FOUND
        );
        let r = route(&ok, &Method::POST, "/metrics");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");
        let sick = Fake(Err("no events drained for 30s".into()));
        assert_eq!(
            route(&sick, &Method::GET, "/healthz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
