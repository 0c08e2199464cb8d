//! Settings from the command line, the environment and an amqproxy-style INI
//! file, merged with precedence CLI > environment > file > default.
//!
//! Every flag is an `Option` so the merge can tell "given" from "defaulted".
//! Errors are one line that names the offending flag, variable, key or URL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "warren",
    version,
    args_override_self = true,
    about = "AMQP 0-9-1 proxy that pools upstream connections and channels",
    after_help = "Every option can also come from the INI file given with --config \
                  ([main] and [listen] sections, amqproxy's format). Precedence: \
                  command line > environment > file > default."
)]
pub struct Cli {
    /// Upstream broker, amqp://host[:port]. Credentials and vhost in the URL
    /// are ignored: every client brings its own.
    #[arg(value_name = "UPSTREAM_URL", env = "AMQP_URL")]
    pub upstream: Option<String>,
    /// Address to listen on for AMQP clients [default: 127.0.0.1]
    #[arg(
        short = 'l',
        long = "listen",
        env = "LISTEN_ADDRESS",
        value_name = "ADDRESS"
    )]
    pub listen: Option<String>,
    /// Port to listen on for AMQP clients [default: 5673]
    #[arg(short = 'p', long, env = "LISTEN_PORT")]
    pub port: Option<u16>,
    /// Port of the HTTP endpoint (metrics, health, admin API, status page);
    /// 0 turns it off [default: 15673]
    #[arg(short = 'b', long = "http-port", env = "HTTP_PORT")]
    pub http_port: Option<u16>,
    /// Address of the HTTP endpoint [default: 127.0.0.1]
    #[arg(long = "http-address", env = "HTTP_ADDRESS", value_name = "ADDRESS")]
    pub http_address: Option<String>,
    /// Seconds an upstream connection with no clients stays open [default: 5]
    #[arg(
        short = 't',
        long = "idle-connection-timeout",
        env = "IDLE_CONNECTION_TIMEOUT",
        value_name = "SECONDS"
    )]
    pub idle_connection_timeout: Option<u64>,
    /// Most channels warren opens on one upstream connection; the broker's
    /// own channel_max also applies [default: 65535]
    #[arg(long, env = "MAX_UPSTREAM_CHANNELS", value_name = "N")]
    pub max_upstream_channels: Option<u16>,
    /// Most channels one client connection may open (Tune channel_max)
    /// [default: 2047]
    #[arg(long, env = "CHANNEL_MAX", value_name = "N")]
    pub channel_max: Option<u16>,
    /// Close every upstream channel when its client is done with it, instead
    /// of keeping clean ones for the next client
    #[arg(long, env = "NO_CHANNEL_REUSE")]
    pub no_channel_reuse: bool,
    /// Clean channels kept open per upstream connection for the next clients
    /// [default: 64]
    #[arg(long, env = "MAX_KEPT_CHANNELS", value_name = "N")]
    pub max_kept_channels: Option<u16>,
    /// Clean channels opened in advance on each upstream connection, so even
    /// the first Channel.Open costs no round trip [default: 0]
    #[arg(long, env = "PREWARM_CHANNELS", value_name = "N")]
    pub prewarm_channels: Option<u16>,
    /// Heartbeat interval offered to clients, seconds; 0 disables [default: 60]
    #[arg(long, env = "HEARTBEAT", value_name = "SECONDS")]
    pub heartbeat: Option<u16>,
    /// Seconds to wait for clients to leave after SIGTERM/SIGINT before
    /// closing them; -1 waits without limit [default: -1]
    #[arg(
        long,
        env = "TERM_TIMEOUT",
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub term_timeout: Option<i64>,
    /// Seconds to wait for a client's Close-Ok after warren closes it during
    /// shutdown [default: 0]
    #[arg(long, env = "TERM_CLIENT_CLOSE_TIMEOUT", value_name = "SECONDS")]
    pub term_client_close_timeout: Option<u64>,
    /// Log level: error, warn, info, debug, trace [default: info]
    #[arg(long, env = "LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text, or json (one object per line) [default: text]
    #[arg(long, env = "LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Shorthand for --log-level debug
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// INI configuration file (amqproxy format)
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Where upstream connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub upstream: UpstreamAddr,
    pub listen_address: String,
    pub port: u16,
    /// 0: no HTTP endpoint.
    pub http_port: u16,
    pub http_address: String,
    pub idle_connection_timeout: Duration,
    pub max_upstream_channels: u16,
    pub channel_max: u16,
    pub heartbeat: u16,
    /// Keep clean upstream channels for the next client.
    pub channel_reuse: bool,
    pub max_kept_channels: u16,
    pub prewarm_channels: u16,
    /// `None` waits for clients without limit.
    pub term_timeout: Option<Duration>,
    pub term_client_close_timeout: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Limit on TCP connect plus AMQP handshake with the broker.
    pub upstream_connect_timeout: Duration,
    /// Limit on a client's handshake, from accept to Connection.Open.
    pub client_handshake_timeout: Duration,
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

/// Values read from the INI file, by the same names as the flags.
#[derive(Debug, Default, PartialEq, Eq)]
struct FileValues {
    upstream: Option<String>,
    listen: Option<String>,
    port: Option<u16>,
    http_port: Option<u16>,
    http_address: Option<String>,
    idle_connection_timeout: Option<u64>,
    max_upstream_channels: Option<u16>,
    channel_max: Option<u16>,
    heartbeat: Option<u16>,
    channel_reuse: Option<bool>,
    max_kept_channels: Option<u16>,
    prewarm_channels: Option<u16>,
    term_timeout: Option<i64>,
    term_client_close_timeout: Option<u64>,
    log_level: Option<String>,
    log_format: Option<String>,
}

impl Config {
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_ini_file(path)?,
            None => FileValues::default(),
        };
        let upstream_url = cli.upstream.or(file.upstream).ok_or_else(|| {
            err("missing upstream: give UPSTREAM_URL, set AMQP_URL, or set [main] upstream in the config file")
        })?;
        let log_level = if cli.debug {
            "debug".to_string()
        } else {
            cli.log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into())
        };
        if !matches!(
            log_level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(err(format!(
                "invalid log level '{log_level}': expected error, warn, info, debug or trace"
            )));
        }
        let log_format = match cli.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(err(format!(
                    "invalid --log-format '{other}': expected text or json"
                )))
            }
        };
        let term_timeout = cli.term_timeout.or(file.term_timeout).unwrap_or(-1);
        let max_upstream_channels = cli
            .max_upstream_channels
            .or(file.max_upstream_channels)
            .unwrap_or(u16::MAX);
        if max_upstream_channels == 0 {
            return Err(err("invalid --max-upstream-channels 0: must be at least 1"));
        }
        let channel_max = cli.channel_max.or(file.channel_max).unwrap_or(2047);
        if channel_max == 0 {
            return Err(err("invalid --channel-max 0: must be at least 1"));
        }
        Ok(Config {
            upstream: parse_upstream_url(&upstream_url)?,
            listen_address: cli
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: cli.port.or(file.port).unwrap_or(5673),
            http_port: cli.http_port.or(file.http_port).unwrap_or(15673),
            http_address: cli
                .http_address
                .or(file.http_address)
                .unwrap_or_else(|| "127.0.0.1".into()),
            idle_connection_timeout: Duration::from_secs(
                cli.idle_connection_timeout
                    .or(file.idle_connection_timeout)
                    .unwrap_or(5),
            ),
            max_upstream_channels,
            channel_max,
            heartbeat: cli.heartbeat.or(file.heartbeat).unwrap_or(60),
            channel_reuse: !cli.no_channel_reuse && file.channel_reuse.unwrap_or(true),
            max_kept_channels: cli
                .max_kept_channels
                .or(file.max_kept_channels)
                .unwrap_or(64),
            prewarm_channels: cli.prewarm_channels.or(file.prewarm_channels).unwrap_or(0),
            term_timeout: u64::try_from(term_timeout).ok().map(Duration::from_secs),
            term_client_close_timeout: Duration::from_secs(
                cli.term_client_close_timeout
                    .or(file.term_client_close_timeout)
                    .unwrap_or(0),
            ),
            log_level,
            log_format,
            upstream_connect_timeout: Duration::from_secs(10),
            client_handshake_timeout: Duration::from_secs(10),
        })
    }
}

/// Parses `amqp://[user:pass@]host[:port][/vhost]`. Only host and port are
/// used; credentials and vhost belong to each client.
pub fn parse_upstream_url(raw: &str) -> Result<UpstreamAddr, ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| err(format!("invalid upstream URL: {e}")))?;
    let default_port = match url.scheme() {
        "amqp" => 5672,
        "amqps" => {
            return Err(err(
                "invalid upstream URL: amqps:// is not supported yet; use amqp://",
            ))
        }
        other => {
            return Err(err(format!(
                "invalid upstream URL: scheme '{other}' is not amqp://"
            )))
        }
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| err("invalid upstream URL: no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(UpstreamAddr {
        host,
        port: url.port().unwrap_or(default_port),
    })
}

fn read_ini_file(path: &Path) -> Result<FileValues, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read config file {}: {e}", path.display())))?;
    parse_ini(&text).map_err(|e| err(format!("config file {}: {}", path.display(), e.0)))
}

fn parse_ini(text: &str) -> Result<FileValues, ConfigError> {
    let mut values = FileValues::default();
    let mut section = String::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            if !matches!(section.as_str(), "main" | "listen") {
                return Err(err(format!("line {line_no}: unknown section [{section}]")));
            }
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err(format!("line {line_no}: expected key = value")))?;
        let (key, value) = (key.trim(), value.trim());
        let number = |what: &str| {
            value.parse::<i64>().map_err(|_| {
                err(format!(
                    "line {line_no}: [{section}] {key} = '{value}' is not {what}"
                ))
            })
        };
        let ranged = |lo: i64, hi: i64| {
            let n = number("a number")?;
            if n < lo || n > hi {
                return Err(err(format!(
                    "line {line_no}: [{section}] {key} = {n} is out of range {lo}..={hi}"
                )));
            }
            Ok(n)
        };
        match (section.as_str(), key) {
            ("main", "upstream") => values.upstream = Some(value.to_string()),
            ("main" | "listen", "log_level") => values.log_level = Some(value.to_string()),
            ("main", "log_format") => values.log_format = Some(value.to_string()),
            ("main", "idle_connection_timeout") => {
                values.idle_connection_timeout = Some(ranged(0, i64::MAX)? as u64)
            }
            ("main", "max_upstream_channels") => {
                values.max_upstream_channels = Some(ranged(1, 65535)? as u16)
            }
            ("main", "channel_max") => values.channel_max = Some(ranged(1, 65535)? as u16),
            ("main", "heartbeat") => values.heartbeat = Some(ranged(0, 65535)? as u16),
            ("main", "channel_reuse") => {
                values.channel_reuse = Some(match value {
                    "true" | "yes" | "on" | "1" => true,
                    "false" | "no" | "off" | "0" => false,
                    _ => {
                        return Err(err(format!(
                            "line {line_no}: [main] channel_reuse = '{value}' is not true or false"
                        )))
                    }
                })
            }
            ("main", "max_kept_channels") => {
                values.max_kept_channels = Some(ranged(0, 65535)? as u16)
            }
            ("main", "prewarm_channels") => {
                values.prewarm_channels = Some(ranged(0, 65535)? as u16)
            }
            ("main", "term_timeout") => values.term_timeout = Some(ranged(-1, i64::MAX)?),
            ("main", "term_client_close_timeout") => {
                values.term_client_close_timeout = Some(ranged(0, i64::MAX)? as u64)
            }
            ("listen", "address" | "bind") => values.listen = Some(value.to_string()),
            ("listen", "port") => values.port = Some(ranged(0, 65535)? as u16),
            ("main" | "listen", "http_port") => values.http_port = Some(ranged(0, 65535)? as u16),
            ("listen", "http_address") => values.http_address = Some(value.to_string()),
            ("", _) => return Err(err(format!("line {line_no}: '{key}' outside any section"))),
            _ => {
                return Err(err(format!(
                    "line {line_no}: unknown key '{key}' in [{section}]"
                )))
            }
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("warren").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn upstream_url_defaults_port_and_ignores_credentials() {
        assert_eq!(
            parse_upstream_url("amqp://user:pw@broker/%2Fvh").unwrap(),
            UpstreamAddr {
                host: "broker".into(),
                port: 5672
            }
        );
        assert_eq!(parse_upstream_url("amqp://[::1]:5800").unwrap().host, "::1");
        assert!(parse_upstream_url("http://x")
            .unwrap_err()
            .0
            .contains("scheme 'http'"));
        assert!(parse_upstream_url("not a url")
            .unwrap_err()
            .0
            .contains("invalid upstream URL"));
    }

    #[test]
    fn ini_file_reads_amqproxy_keys_and_names_bad_lines() {
        let values = parse_ini(
            "[main]\nupstream = amqp://b:5800\nidle_connection_timeout = 9\nterm_timeout = -1\n\
             [listen]\nbind = 0.0.0.0\nport = 6000\n",
        )
        .unwrap();
        assert_eq!(values.upstream.as_deref(), Some("amqp://b:5800"));
        assert_eq!(values.idle_connection_timeout, Some(9));
        assert_eq!(values.term_timeout, Some(-1));
        assert_eq!(values.listen.as_deref(), Some("0.0.0.0"));
        assert_eq!(values.port, Some(6000));

        let bad = parse_ini("[listen]\nport = 70000\n").unwrap_err().0;
        assert!(bad.contains("line 2") && bad.contains("port"), "{bad}");
        let unknown = parse_ini("[main]\nupstreams = x\n").unwrap_err().0;
        assert!(unknown.contains("unknown key 'upstreams'"), "{unknown}");
    }

    #[test]
    fn command_line_beats_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("warren-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("warren.ini");
        std::fs::write(
            &file,
            "[main]\nupstream = amqp://file-host\n[listen]\nport = 7000\n",
        )
        .unwrap();
        let config =
            Config::from_cli(cli(&["-c", file.to_str().unwrap(), "-p", "7001", "-d"])).unwrap();
        assert_eq!(config.upstream.host, "file-host");
        assert_eq!(config.port, 7001);
        assert_eq!(config.listen_address, "127.0.0.1");
        assert_eq!(config.log_level, "debug");
        assert_eq!(config.term_timeout, None);
        assert_eq!(config.idle_connection_timeout, Duration::from_secs(5));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_upstream_is_a_clear_error() {
        let cli = Cli::try_parse_from(["warren", "-p", "1"]).unwrap();
        if cli.upstream.is_none() {
            let e = Config::from_cli(cli).unwrap_err().0;
            assert!(e.contains("missing upstream"), "{e}");
        }
    }
}
