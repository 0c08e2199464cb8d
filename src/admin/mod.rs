//! The HTTP endpoint: Prometheus metrics, health and readiness probes, a
//! JSON admin API and a status page.
//!
//! It reads what the data path already counts ([`crate::stats`]) and asks
//! each upstream router for its channel table only when a page is
//! requested: nothing here costs anything per frame. Served with hyper
//! (HTTP/1.1 only; the peers are Prometheus, kubelet, curl and a browser).

mod access;
mod api;
mod metrics;
mod operate;
mod ready;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::client::Context;
use crate::config::Config;
use crate::listener;
pub use ready::Readiness;

/// Connections served at once; more wait in the kernel's backlog. The
/// endpoint is for a few scrapers and browsers, not for load.
const MAX_CONNECTIONS: usize = 256;
/// A connection must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed (after its current request) once this old, so
/// keep-alive browsers and slow readers cannot hold the slots for good.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// How long the last request of an expired connection may take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// A frame from the broker this recent proves it is up (routers publish
/// their last read on a 250 ms tick).
const RECENT_BROKER_FRAME: Duration = Duration::from_secs(2);
/// Answer to a connection beyond `MAX_CONNECTIONS`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
connection: close\r\ncontent-length: 27\r\n\r\ntoo many HTTP connections\r\n";

const STATUS_PAGE: &str = include_str!("status.html");

/// What the handlers share.
pub struct Admin {
    pub ctx: Arc<Context>,
    /// Cancelled when warren starts draining: not ready any more.
    pub draining: CancellationToken,
    pub readiness: Readiness,
    /// The endpoint is bound to a loopback address: reachable from this
    /// machine only (see `access`).
    pub loopback: bool,
}

/// Binds the endpoint, with SO_REUSEPORT like the AMQP listeners so a
/// rolling restart's new warren can start while the old one drains.
pub async fn bind(config: &Config) -> std::io::Result<Option<TcpListener>> {
    if config.http_port == 0 {
        return Ok(None);
    }
    listener::bind_tcp(&config.http_address, config.http_port, config.reuse_port)
        .await
        .map(Some)
}

/// Serves HTTP until the process exits.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CLOSE_GRACE, stream.write_all(BUSY)).await;
            });
            continue;
        };
        tokio::spawn(serve_connection(stream, peer, admin.clone(), slot));
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    admin: Arc<Admin>,
    _slot: OwnedSemaphorePermit,
) {
    let service = hyper::service::service_fn(move |request| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(route(&admin, request, peer).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let served = match tokio::time::timeout(CONNECTION_LIFETIME, connection.as_mut()).await {
        Ok(served) => served,
        Err(_) => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(CLOSE_GRACE, connection).await {
                Ok(served) => served,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

async fn route(
    admin: &Admin,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    // The body is never read: actions take their arguments in the query.
    let (request, _body) = request.into_parts();
    if let Err((status, why)) = access::check(&admin.ctx.config(), &request, admin.loopback) {
        return text(status, why);
    }
    let path = request.uri.path();
    let action = operate::ACTIONS.contains(&path);
    let allowed = if action { "POST" } else { "GET, HEAD" };
    let method_fits = if action {
        request.method == Method::POST
    } else {
        request.method == Method::GET || request.method == Method::HEAD
    };
    if !method_fits {
        let mut refused = text(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("this endpoint takes {allowed}\n"),
        );
        refused
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allowed));
        return refused;
    }
    if action {
        let (status, answer) = operate::run(admin, path, request.uri.query(), peer);
        return text(status, &answer);
    }
    match request.uri.path() {
        "/" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            STATUS_PAGE.into(),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match admin.readiness().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => respond(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            metrics::render(admin).await.into(),
        ),
        "/api/overview" => json(&api::overview(admin).await),
        "/api/pools" => json(&api::pools(admin)),
        "/api/upstreams" => json(&api::upstreams(admin).await),
        "/api/clients" => json(&api::clients(admin)),
        "/api/nodes" => json(&api::nodes(admin)),
        "/api/routes" => json(&api::routes(admin)),
        "/api/quotas" => json(&api::quotas(admin)),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

impl Admin {
    /// Ready unless draining, and only if a broker node answers: an
    /// upstream connection that heard from the broker moments ago proves
    /// it; otherwise (idle connections, or none) the node is probed, so a
    /// broker lost without a FIN is noticed in seconds, not heartbeats.
    pub async fn readiness(&self) -> Result<(), String> {
        if self.draining.is_cancelled() {
            return Err("warren is draining".into());
        }
        let heard_lately = self
            .ctx
            .stats
            .upstreams()
            .iter()
            .any(|u| u.quiet_for() < RECENT_BROKER_FRAME);
        if heard_lately {
            return Ok(());
        }
        self.readiness
            .probe(self.ctx.pools.settings().nodes.clone())
            .await
    }
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(StatusCode::OK, "application/json", body.into()),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the answer: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
