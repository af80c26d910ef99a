//! The `/metrics` and `/healthz` endpoint (hyper). Slow, idle or malformed clients cannot
//! starve it: every connection has a deadline for its next request, a full connection table
//! evicts the connection that waited longest for one ([`connections`](super::connections)),
//! and each connection's buffer is bounded. With `--web.config.file` it speaks TLS and asks
//! for basic auth ([`web_config`](super::web_config)); `/healthz` needs no password, so
//! liveness probes need no secret.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::watch,
};
use tokio_rustls::TlsAcceptor;

use super::{
    auth::BasicAuth,
    connections::{Conn, Limits, Table},
    web_config::WebConfig,
};

/// Read buffer per connection: request heads larger than this get 431 (hyper's minimum is 8 KiB).
const MAX_BUF: usize = 16 * 1024;

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

fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, "Basic".parse().expect("valid"));
    r
}

/// One request: basic auth first where configured (not for `/healthz`), then the route.
async fn handle<S: Source>(
    source: &S,
    auth: Option<Arc<BasicAuth>>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if let Some(auth) = auth
        && req.uri().path() != "/healthz"
        && !auth.allows(req.headers().get(AUTHORIZATION)).await
    {
        return unauthorized();
    }
    route(source, req.method(), req.uri().path())
}

/// HTTP/1.1 over `io` (plain or TLS) until the client or an error ends it.
async fn http1<S: Source, I>(
    io: I,
    source: Arc<S>,
    web: watch::Receiver<Arc<WebConfig>>,
    slot: Arc<Conn>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let (source, slot) = (source.clone(), slot.clone());
        // The auth in force now: a reload applies to kept-alive connections too.
        let auth = web.borrow().auth.clone();
        async move {
            slot.serving();
            let resp = handle(source.as_ref(), auth, &req).await;
            slot.idle();
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        // The connection table's phase deadlines bound every wait for a request head; hyper's
        // own timer would also end kept-alive connections that are merely idle.
        .header_read_timeout(None)
        .max_buf_size(MAX_BUF)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Serves until `shutdown` resolves; then stops accepting and returns. Each connection uses
/// the TLS settings in `web` when it was accepted, and the auth in `web` at each request.
pub async fn serve<S: Source>(
    listener: TcpListener,
    source: Arc<S>,
    web: watch::Receiver<Arc<WebConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let table = Table::new(Limits::default());
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
        // Full: the connection that waited longest for a request makes room.
        let slot = table.admit();
        let (source, web) = (source.clone(), web.clone());
        let tls = web.borrow().tls.clone();
        // The handshake is part of the first request's deadline, like a slow request head.
        tokio::spawn(slot.clone().supervise(async move {
            match tls {
                None => http1(stream, source, web, slot).await,
                Some(config) => {
                    if let Ok(stream) = TlsAcceptor::from(config).accept(stream).await {
                        http1(stream, source, web, slot).await;
                    }
                }
            }
        }));
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
