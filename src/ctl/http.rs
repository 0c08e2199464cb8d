//! The few HTTP requests `warren ctl` makes, over one plain HTTP/1.1
//! connection each (hyper's client half; no pooling, no TLS: the endpoint
//! serves neither).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use url::Url;

/// An answer is a status line and a page of text; anything longer is not
/// from warren.
const MAX_BODY: usize = 16 << 20;

pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends `method path` (no body) to the endpoint at `base`, with the
/// admin API token if there is one.
pub async fn request(
    base: &Url,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> Result<Response, String> {
    let host = base.host_str().ok_or("no host")?;
    let port = base.port_or_known_default().ok_or("no port")?;
    let stream = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("cannot start HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let authority = match base.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority);
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("cannot read the answer: {e}"))?
        .to_bytes();
    driver.abort();
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
