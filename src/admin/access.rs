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
//! (`--http-token`), for an endpoint opened beyond loopback.

use std::net::IpAddr;

use hyper::header::{AUTHORIZATION, HOST};
use hyper::http::request::Parts;
use hyper::StatusCode;

use crate::config::Config;

/// Why a request is refused, as the status and text it gets.
pub type Refusal = (StatusCode, &'static str);

/// Whether `parts` may read `path`.
pub fn check(config: &Config, parts: &Parts) -> Result<(), Refusal> {
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
