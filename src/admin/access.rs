//! Who may read the HTTP endpoint.
//!
//! The endpoint listens on loopback by default, but a browser on the same
//! machine is a way in for any web page: a page on another site can make its
//! own host name resolve to 127.0.0.1 (DNS rebinding) and then read the
//! answers as its own. Such requests name that site in `Host`, so only IP
//! addresses, `localhost` and the names given in `--http-hosts` are served.
//! The probes (`/healthz`, `/readyz`) say nothing worth stealing and are
//! answered whatever the `Host`, for load balancers that send their own.
//!
//! The admin API (`/api/`) can also require a bearer token
//! (`--http-token`), for an endpoint opened beyond loopback. Its operator
//! actions (POSTs) need one there; and since a web page can make a
//! browser POST anywhere (a form needs no permission), a POST that a
//! browser marks as coming from another origin is refused.

use std::net::IpAddr;

use hyper::header::{AUTHORIZATION, HOST, ORIGIN};
use hyper::http::request::Parts;
use hyper::{Method, StatusCode};

use crate::config::Config;

/// Why a request is refused, as the status and text it gets.
pub type Refusal = (StatusCode, &'static str);

/// Whether `parts` may read `path`, on an endpoint bound to loopback only
/// (`loopback`) or not.
pub fn check(config: &Config, parts: &Parts, loopback: bool) -> Result<(), Refusal> {
    let path = parts.uri.path();
    if matches!(path, "/healthz" | "/readyz") {
        return Ok(());
    }
    let host = parts.headers.get(HOST).map(|v| v.as_bytes());
    if !host_allowed(host, &config.http_hosts) {
        return Err((
            StatusCode::MISDIRECTED_REQUEST,
            "this host name is not served here (see --http-hosts)\n",
        ));
    }
    if parts.method == Method::POST {
        check_action(config, parts, loopback)?;
    }
    if let (Some(token), true) = (&config.http_token, path.starts_with("/api/")) {
        let authorization = parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes());
        if !token.admits(authorization) {
            return Err((
                StatusCode::UNAUTHORIZED,
                "the admin API needs the token given to warren (Authorization: Bearer ...)\n",
            ));
        }
    }
    Ok(())
}

/// What a POST needs beyond a GET: not sent by a page of another origin,
/// and a token when the endpoint is reachable beyond this machine. Where
/// it is bound decides that, not the configuration, which a reload may
/// change while the socket stays where it was.
fn check_action(config: &Config, parts: &Parts, loopback: bool) -> Result<(), Refusal> {
    let origin = parts.headers.get(ORIGIN).map(|v| v.as_bytes());
    let host = parts.headers.get(HOST).map(|v| v.as_bytes());
    let fetched_by_another_site = parts
        .headers
        .get("sec-fetch-site")
        .is_some_and(|site| !matches!(site.as_bytes(), b"same-origin" | b"none"));
    if !same_origin(origin, host) || fetched_by_another_site {
        return Err((
            StatusCode::FORBIDDEN,
            "operator actions are not taken from another site's page\n",
        ));
    }
    if config.http_token.is_none() && !loopback {
        return Err((
            StatusCode::FORBIDDEN,
            "operator actions on an endpoint beyond loopback need --http-token\n",
        ));
    }
    Ok(())
}

/// No `Origin` (not a browser), or the page came from this endpoint.
fn same_origin(origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
    match (origin, host) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin.strip_prefix(b"http://") == Some(host),
        (Some(_), None) => false,
    }
}

/// A `Host` value naming an IP address, localhost or one of `names`; a
/// request without one (HTTP/1.0) came from no browser.
fn host_allowed(host: Option<&[u8]>, names: &[String]) -> bool {
    let Some(host) = host else { return true };
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((v6, rest)) if rest.is_empty() || rest.starts_with(':') => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    let name = name.to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok() || name == "localhost" || names.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(host: &str) -> bool {
        host_allowed(Some(host.as_bytes()), &["warren.internal".to_string()])
    }

    #[test]
    fn ip_addresses_localhost_and_configured_names_are_served() {
        for host in [
            "127.0.0.1:15673",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:15673",
            "[::1]",
            "localhost:15673",
            "LOCALHOST",
            "warren.internal:15673",
        ] {
            assert!(allowed(host), "{host}");
        }
        assert!(host_allowed(None, &[]));
    }

    #[test]
    fn actions_come_from_no_page_or_a_page_of_this_endpoint() {
        let host = Some(&b"127.0.0.1:15673"[..]);
        assert!(same_origin(None, host));
        assert!(same_origin(Some(b"http://127.0.0.1:15673"), host));
        for origin in [
            &b"http://evil.example"[..],
            b"null",
            b"http://127.0.0.1:15674",
            b"https://127.0.0.1:15673",
            b"http://127.0.0.1:15673.evil.example",
        ] {
            assert!(!same_origin(Some(origin), host), "{origin:?}");
        }
        assert!(!same_origin(Some(b"http://127.0.0.1:15673"), None));
    }

    #[test]
    fn other_names_are_refused() {
        for host in [
            "evil.example:15673",
            "evil.example",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[::1]evil",
            "[not-an-ip]:1",
            "",
        ] {
            assert!(!allowed(host), "{host}");
        }
        assert!(!host_allowed(Some(b"\xff"), &[]));
    }
}
