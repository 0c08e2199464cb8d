//! Settings from the command line, the environment and a configuration file
//! (TOML, or amqproxy's INI), merged with precedence CLI > environment >
//! file > default, then validated into a [`Config`].
//!
//! Errors are one line that names the offending option or file line.

mod cli;
mod file;
mod name_template;
mod options;
mod quotas;
mod routes;
mod urls;

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use subtle::ConstantTimeEq;

use zeroize::Zeroizing;

pub use cli::Cli;
pub use name_template::{NameTemplate, NameValues};
pub use options::Options;
pub use quotas::{Quota, Scope};
pub use routes::{ConsumerMode, Pattern, Route, DEFAULT_ROUTE};
pub use urls::{parse_upstream_url, redact_text, redact_url};

/// A broker node upstream connections may go to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamAddr {
    pub host: String,
    pub port: u16,
    /// amqps://: TLS, with the certificate checked against `host`.
    pub tls: bool,
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where plain AMQP clients connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// An address or host name, with `port` (and `tls_port`).
    Tcp(String),
    Unix(PathBuf),
}

/// The TLS listener's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub port: u16,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate signed by one of these.
    pub client_ca: Option<PathBuf>,
}

/// How amqps:// brokers are trusted, and who warren is to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// Certificate chain and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub insecure: bool,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The default route's broker nodes: for clients no route takes.
    pub upstreams: Vec<UpstreamAddr>,
    /// `[[route]]`s, in file order: the first that serves a client wins.
    pub routes: Vec<Route>,
    /// The default route's, and that of routes that do not say.
    pub consumer_mode: ConsumerMode,
    /// `[[quota]]`s, in file order: the first of each scope that covers a
    /// client applies.
    pub quotas: Vec<Quota>,
    /// The tables as the file gave them, for `--check-config` and reloads.
    tables: file::Tables,
    pub listen: Listen,
    /// 0: no plain TCP listener.
    pub port: u16,
    pub tls: Option<ListenerTls>,
    pub socket_mode: u32,
    pub reuse_port: bool,
    /// 0: no HTTP endpoint.
    pub http_port: u16,
    pub http_address: String,
    /// Host names (lower case) the HTTP endpoint answers to besides IP
    /// addresses and localhost.
    pub http_hosts: Vec<String>,
    /// What the admin API asks for in `Authorization: Bearer`, if anything.
    pub http_token: Option<AdminToken>,
    pub upstream_tls: UpstreamTls,
    pub upstream_connection_name: NameTemplate,
    pub idle_connection_timeout: Duration,
    /// 0: no limit.
    pub max_clients: usize,
    /// Handshakes in progress; 0: no limit.
    pub max_pending_handshakes: usize,
    /// Handshakes in progress from one non-loopback address; 0: no limit.
    pub max_pending_handshakes_per_source: usize,
    /// Load balancers whose connections start with a PROXY header.
    pub proxy_protocol_from: Vec<IpNet>,
    /// Per pool; 0: no limit.
    pub max_upstream_connections: usize,
    /// For all clients' partly received publishes together.
    pub max_held_publish_bytes: u64,
    pub max_held_delivery_bytes: u64,
    pub max_upstream_channels: u16,
    /// Plugin exchange types the broker knows, besides the built-in ones.
    pub exchange_types: Vec<String>,
    /// Channels each client is sure of on a shared upstream connection.
    pub guaranteed_channels: u16,
    pub channel_max: u16,
    pub heartbeat: u16,
    /// Keep clean upstream channels for the next client.
    pub channel_reuse: bool,
    pub max_kept_channels: u16,
    pub prewarm_channels: u16,
    /// Limit on a client's handshake, from accept to Connection.Open.
    pub client_handshake_timeout: Duration,
    /// Limit on TCP connect plus AMQP handshake with one broker node.
    pub upstream_connect_timeout: Duration,
    pub node_ban: Duration,
    /// How long publishers are held through a lost upstream connection;
    /// `None`: not at all (see `crate::replay`).
    pub hold: Option<Duration>,
    /// For all clients' unconfirmed publishes together.
    pub hold_buffer_bytes: u64,
    /// `None`: upstream connections take new clients for as long as they live.
    pub upstream_max_lifetime: Option<Duration>,
    /// `None` waits for clients without limit.
    pub term_timeout: Option<Duration>,
    pub term_client_close_timeout: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Every setting with its effective value, for `--check-config` and for
    /// telling what a reload changed.
    pub effective: Options,
}

/// The admin API's bearer token: compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Zeroizing<String>);

impl AdminToken {
    /// Whether an `Authorization` header value presents this token.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else {
            return false;
        };
        presented.ct_eq(self.0.as_bytes()).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The token from `--http-token` or the file `--http-token-file` names.
fn admin_token(
    token: Option<String>,
    file: Option<String>,
) -> Result<Option<AdminToken>, ConfigError> {
    let token = match (given(token), given(file)) {
        (Some(_), Some(_)) => return Err(err("give --http-token or --http-token-file, not both")),
        (Some(token), None) => Zeroizing::new(token),
        (None, Some(path)) => Zeroizing::new(
            std::fs::read_to_string(&path)
                .map_err(|e| err(format!("cannot read --http-token-file {path}: {e}")))?
                .trim()
                .to_string(),
        ),
        (None, None) => return Ok(None),
    };
    // A token travels in an HTTP header: visible ASCII only, and long
    // enough not to be guessed.
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err(
            "invalid admin API token: it must be at least 16 visible ASCII characters (no spaces)",
        ));
    }
    Ok(Some(AdminToken(token)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Plugin exchange types as given: names a Exchange.Declare can carry.
fn exchange_types(types: Vec<String>) -> Result<Vec<String>, ConfigError> {
    match types.iter().find(|t| t.is_empty() || t.len() > 255) {
        Some(bad) => Err(err(format!(
            "invalid --exchange-types entry '{}': must be 1 to 255 bytes",
            bad.chars().take(64).collect::<String>()
        ))),
        None => Ok(types),
    }
}

/// `--proxy-protocol-from`: networks, a single address meaning just it.
fn networks(given: Vec<String>) -> Result<Vec<IpNet>, ConfigError> {
    given
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    err(format!(
                        "invalid --proxy-protocol-from entry '{}': expected a network such as 10.0.0.0/8 or an IP address",
                        text.chars().take(64).collect::<String>()
                    ))
                })
        })
        .collect()
}

impl Config {
    /// The configuration the command line, environment and file give now;
    /// also what SIGHUP re-reads.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let from_file = match cli.file() {
            Some(path) => file::read(path)?,
            None => file::FileSettings::default(),
        };
        let options = cli.options().or(from_file.options).or(Options::defaults());
        Self::from_options(options, from_file.tables)
    }

    fn from_options(options: Options, tables: file::Tables) -> Result<Self, ConfigError> {
        let mut o = options.clone();
        let (upstreams, upstream_tls) = default_route(&mut o)?;
        let (log_level, log_format) = logging(&mut o)?;
        let (listen, tls, socket_mode) = listeners(&mut o)?;
        let seconds = |value: Option<u64>| Duration::from_secs(value.unwrap_or_default());
        let (routes, consumer_mode) = checked_routes(&mut o, &tables, &upstream_tls)?;
        Ok(Config {
            routes,
            consumer_mode,
            quotas: quotas::check(&tables.quota)?,
            tables,
            upstreams,
            listen,
            port: o.port.unwrap_or_default(),
            tls,
            socket_mode,
            reuse_port: o.reuse_port.unwrap_or_default(),
            http_port: o.http_port.unwrap_or_default(),
            http_address: o.http_address.unwrap_or_default(),
            http_hosts: o
                .http_hosts
                .unwrap_or_default()
                .iter()
                .map(|host| host.trim().to_ascii_lowercase())
                .filter(|host| !host.is_empty())
                .collect(),
            http_token: admin_token(o.http_token, o.http_token_file)?,
            upstream_tls,
            upstream_connection_name: NameTemplate::parse(
                &o.upstream_connection_name.unwrap_or_default(),
            )?,
            idle_connection_timeout: seconds(o.idle_connection_timeout),
            max_clients: o.max_clients.unwrap_or_default() as usize,
            max_pending_handshakes: o.max_pending_handshakes.unwrap_or_default() as usize,
            max_pending_handshakes_per_source: o
                .max_pending_handshakes_per_source
                .unwrap_or_default() as usize,
            proxy_protocol_from: networks(o.proxy_protocol_from.unwrap_or_default())?,
            max_upstream_connections: o.max_upstream_connections.unwrap_or_default() as usize,
            max_held_publish_bytes: held_bytes("max-held-publish-mib", o.max_held_publish_mib)?,
            max_held_delivery_bytes: held_bytes("max-held-delivery-mib", o.max_held_delivery_mib)?,
            max_upstream_channels: at_least_one("max-upstream-channels", o.max_upstream_channels)?,
            exchange_types: exchange_types(o.exchange_types.unwrap_or_default())?,
            guaranteed_channels: at_least_one("guaranteed-channels", o.guaranteed_channels)?,
            channel_max: at_least_one("channel-max", o.channel_max)?,
            heartbeat: o.heartbeat.unwrap_or_default(),
            channel_reuse: o.channel_reuse.unwrap_or_default(),
            max_kept_channels: o.max_kept_channels.unwrap_or_default(),
            prewarm_channels: o.prewarm_channels.unwrap_or_default(),
            client_handshake_timeout: at_least_a_second(
                "client-handshake-timeout",
                o.client_handshake_timeout,
            )?,
            upstream_connect_timeout: at_least_a_second(
                "upstream-connect-timeout",
                o.upstream_connect_timeout,
            )?,
            node_ban: at_least_a_second("node-ban-seconds", o.node_ban_seconds)?,
            hold: Some(seconds(o.hold_seconds)).filter(|hold| !hold.is_zero()),
            hold_buffer_bytes: hold_buffer_bytes(o.hold_buffer_mib)?,
            upstream_max_lifetime: o
                .upstream_max_lifetime
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
            term_timeout: o
                .term_timeout
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            term_client_close_timeout: seconds(o.term_client_close_timeout),
            log_level,
            log_format,
            effective: options,
        })
    }

    /// The effective configuration as TOML, passwords in URLs hidden.
    pub fn to_toml(&self) -> String {
        let mut shown = self.effective.clone();
        shown.upstream = shown
            .upstream
            .map(|urls| urls.iter().map(|u| redact_url(u)).collect());
        shown.http_token = shown.http_token.map(|_| "redacted".into());
        #[derive(serde::Serialize)]
        struct Shown {
            #[serde(flatten)]
            options: Options,
            #[serde(flatten)]
            tables: file::Tables,
        }
        let shown = Shown {
            options: shown,
            tables: file::Tables {
                route: routes::redacted(&self.tables.route),
                quota: self.tables.quota.clone(),
            },
        };
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// The settings that differ from `other`, by file key.
    pub fn changed_from(&self, other: &Config) -> Vec<&'static str> {
        let ours = toml::Table::try_from(&self.effective).unwrap_or_default();
        let theirs = toml::Table::try_from(&other.effective).unwrap_or_default();
        let mut changed: Vec<&'static str> = options::KEYS
            .iter()
            .copied()
            .filter(|key| ours.get(*key) != theirs.get(*key))
            .collect();
        if self.tables.route != other.tables.route {
            changed.push("route");
        }
        if self.tables.quota != other.tables.quota {
            changed.push("quota");
        }
        changed
    }
}

/// The top-level `upstream` and its TLS settings (the default route's,
/// and those of routes without their own).
fn default_route(o: &mut Options) -> Result<(Vec<UpstreamAddr>, UpstreamTls), ConfigError> {
    let upstream_urls = o.upstream.take().filter(|urls| !urls.is_empty()).ok_or_else(|| {
        err("missing upstream: give UPSTREAM_URL, set AMQP_URL, or set upstream in the config file")
    })?;
    let upstreams = upstream_urls
        .iter()
        .map(|url| parse_upstream_url(url))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = UpstreamTls {
        ca: given(o.upstream_ca.take()).map(PathBuf::from),
        client_cert: cert_and_key(o.upstream_cert.take(), o.upstream_key.take(), "upstream")?,
        insecure: o.upstream_insecure.unwrap_or_default(),
    };
    Ok((upstreams, tls))
}

/// The `[[route]]`s and the top-level `--consumer-mode`: a dedicated mode
/// anywhere needs confirms upstream (`--hold-seconds`).
fn checked_routes(
    o: &mut Options,
    tables: &file::Tables,
    upstream_tls: &UpstreamTls,
) -> Result<(Vec<Route>, ConsumerMode), ConfigError> {
    let consumer_mode =
        routes::consumer_mode(&o.consumer_mode.take().unwrap_or_default()).map_err(err)?;
    let routes = routes::check(&tables.route, (upstream_tls, consumer_mode))?;
    let dedicated = std::iter::once(consumer_mode)
        .chain(routes.iter().map(|r| r.consumer_mode))
        .any(|mode| mode == ConsumerMode::Dedicated);
    if dedicated && o.hold_seconds == Some(0) {
        return Err(err(
            "consumer_mode dedicated needs --hold-seconds above 0: a client moves to its own connection once the broker confirmed what it published",
        ));
    }
    Ok((routes, consumer_mode))
}

/// `--log-level` and `--log-format`, checked.
fn logging(o: &mut Options) -> Result<(String, LogFormat), ConfigError> {
    let log_level = o.log_level.take().unwrap_or_default();
    if !matches!(
        log_level.as_str(),
        "error" | "warn" | "info" | "debug" | "trace"
    ) {
        return Err(err(format!(
            "invalid log level '{log_level}': expected error, warn, info, debug or trace"
        )));
    }
    let log_format = match o.log_format.take().as_deref() {
        Some("json") => LogFormat::Json,
        Some("text") | None => LogFormat::Text,
        Some(other) => {
            return Err(err(format!(
                "invalid --log-format '{other}': expected text or json"
            )))
        }
    };
    Ok((log_level, log_format))
}

/// `--listen`, the TLS listener's files and `--socket-mode`, checked
/// against each other.
fn listeners(o: &mut Options) -> Result<(Listen, Option<ListenerTls>, u32), ConfigError> {
    let listen = match o.listen.take().unwrap_or_default() {
        l if l.is_empty() => return Err(err("invalid --listen '': give an address")),
        l => match l.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => Listen::Unix(PathBuf::from(path)),
            Some(path) => {
                return Err(err(format!(
                    "invalid --listen 'unix:{path}': the socket path must be absolute"
                )))
            }
            None => Listen::Tcp(l),
        },
    };
    let socket_mode = o.socket_mode.take().unwrap_or_default();
    let socket_mode = u32::from_str_radix(&socket_mode, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| {
            err(format!(
                "invalid --socket-mode '{socket_mode}': expected octal permissions such as 0660"
            ))
        })?;
    let client_ca = given(o.tls_client_ca.take()).map(PathBuf::from);
    let tls = match cert_and_key(o.tls_cert.take(), o.tls_key.take(), "tls")? {
        Some((cert, key)) => Some(ListenerTls {
            port: o.tls_port.unwrap_or_default(),
            cert,
            key,
            client_ca,
        }),
        None if client_ca.is_some() => {
            return Err(err(
                "--tls-client-ca needs --tls-cert and --tls-key (the TLS listener)",
            ))
        }
        None => None,
    };
    if tls.is_some() && matches!(listen, Listen::Unix(_)) {
        return Err(err(
            "the TLS listener needs an IP --listen address, not a Unix socket",
        ));
    }
    Ok((listen, tls, socket_mode))
}

/// `--max-held-publish-mib` or `--max-held-delivery-mib` in bytes: room
/// for one message of RabbitMQ's default largest size at least.
fn held_bytes(name: &str, mib: Option<u32>) -> Result<u64, ConfigError> {
    match mib {
        Some(mib @ 128..) => Ok(u64::from(mib) << 20),
        other => Err(err(format!(
            "invalid --{name} {}: must be at least 128 (one message of the largest size)",
            other.unwrap_or_default()
        ))),
    }
}

/// The hold buffer holds at least one client's share.
fn hold_buffer_bytes(mib: Option<u32>) -> Result<u64, ConfigError> {
    match mib {
        Some(mib @ 16..) => Ok(u64::from(mib) << 20),
        other => Err(err(format!(
            "invalid --hold-buffer-mib {}: must be at least 16 (one client's share)",
            other.unwrap_or_default()
        ))),
    }
}

/// A count that 0 would make meaningless.
fn at_least_one(name: &str, value: Option<u16>) -> Result<u16, ConfigError> {
    match value {
        Some(0) => Err(err(format!("invalid --{name} 0: must be at least 1"))),
        other => Ok(other.unwrap_or_default()),
    }
}

/// A timeout that 0 would make meaningless.
fn at_least_a_second(name: &str, value: Option<u64>) -> Result<Duration, ConfigError> {
    match value {
        Some(0) => Err(err(format!("invalid --{name} 0: must be at least 1"))),
        other => Ok(Duration::from_secs(other.unwrap_or_default())),
    }
}

/// A file setting, unless it is missing or empty.
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// `--PREFIX-cert` and `--PREFIX-key`: both, or neither.
fn cert_and_key(
    cert: Option<String>,
    key: Option<String>,
    prefix: &str,
) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    match (given(cert), given(key)) {
        (Some(cert), Some(key)) => Ok(Some((cert.into(), key.into()))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(err(format!("--{prefix}-cert needs --{prefix}-key"))),
        (None, Some(_)) => Err(err(format!("--{prefix}-key needs --{prefix}-cert"))),
    }
}

#[cfg(test)]
mod tests;
