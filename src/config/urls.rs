//! Upstream URLs: parsed into the node they name, and shown with their
//! password hidden wherever a URL (or text that may hold one) is printed.

use super::{err, ConfigError, UpstreamAddr};

/// A URL with its password replaced, for logs, errors and
/// `--check-config`; works on URLs too broken to parse. Everything up to the
/// last `@` counts as user information, since a password may hold `/`, `?`
/// or `#` unescaped.
pub fn redact_url(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:redacted@{host}")
        }
        _ => raw.to_string(),
    }
}

/// `text` with every URL in it redacted (see [`redact_url`]): for error
/// messages that may quote a configuration value.
pub fn redact_text(text: &str) -> String {
    text.split_inclusive(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '`' | ','))
        .map(|word| {
            let end = word.len()
                - word.chars().last().map_or(0, |c| {
                    if c.is_whitespace() || matches!(c, '\'' | '"' | '`' | ',') {
                        c.len_utf8()
                    } else {
                        0
                    }
                });
            let (token, separator) = word.split_at(end);
            format!("{}{separator}", redact_url(token))
        })
        .collect()
}

/// Parses `amqp[s]://[user:pass@]host[:port][/vhost]`. Only scheme, host
/// and port are used; credentials and vhost belong to each client.
pub fn parse_upstream_url(raw: &str) -> Result<UpstreamAddr, ConfigError> {
    let shown = redact_url(raw);
    let url =
        url::Url::parse(raw).map_err(|e| err(format!("invalid upstream URL '{shown}': {e}")))?;
    let (tls, default_port) = match url.scheme() {
        "amqp" => (false, 5672),
        "amqps" => (true, 5671),
        other => {
            return Err(err(format!(
                "invalid upstream URL '{shown}': scheme '{other}' is not amqp:// or amqps://"
            )))
        }
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| err(format!("invalid upstream URL '{shown}': no host")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(UpstreamAddr {
        host,
        port: url.port().unwrap_or(default_port),
        tls,
    })
}
