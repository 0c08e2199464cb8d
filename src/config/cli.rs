//! The command line (and environment, through clap's `env`), turned into
//! [`Options`]. Flag names are the file keys with dashes.

use std::path::PathBuf;

use clap::Parser;

use super::Options;

#[derive(Debug, Parser)]
#[command(
    name = "warren",
    version,
    args_override_self = true,
    about = "AMQP 0-9-1 proxy that pools upstream connections and channels",
    after_help = "Every option can also come from the file given with --config: TOML \
                  (*.toml, keys as in docs/configuration.md) or amqproxy's INI format. \
                  Precedence: command line > environment > file > default. \
                  SIGHUP reloads the file."
)]
pub struct Cli {
    /// Upstream brokers, amqp://host[:port] or amqps://host[:port]; several
    /// spread the load and stand in for each other. Credentials and vhost in
    /// a URL are ignored: every client brings its own
    #[arg(value_name = "UPSTREAM_URL", env = "AMQP_URL", value_delimiter = ',')]
    pub upstream: Vec<String>,
    /// Address to listen on for AMQP clients, or unix:/path for a Unix
    /// socket [default: 127.0.0.1]
    #[arg(
        short = 'l',
        long = "listen",
        env = "LISTEN_ADDRESS",
        value_name = "ADDRESS"
    )]
    pub listen: Option<String>,
    /// Port to listen on for AMQP clients; 0 turns the plain listener off
    /// [default: 5673]
    #[arg(short = 'p', long, env = "LISTEN_PORT")]
    pub port: Option<u16>,
    /// Port of the TLS listener, on the --listen address; on when --tls-cert
    /// and --tls-key are given [default: 5674]
    #[arg(long, env = "TLS_PORT")]
    pub tls_port: Option<u16>,
    /// Certificate chain (PEM) the TLS listener presents
    #[arg(long, env = "TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// Private key (PEM) of --tls-cert
    #[arg(long, env = "TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<String>,
    /// CA certificates (PEM): TLS clients must present a certificate signed
    /// by one of them
    #[arg(long, env = "TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<String>,
    /// Permissions of the Unix socket file (--listen unix:/path), octal
    /// [default: 0660]
    #[arg(long, env = "SOCKET_MODE", value_name = "MODE")]
    pub socket_mode: Option<String>,
    /// Do not set SO_REUSEPORT on the listeners (it lets a new warren bind
    /// the port while the old one drains)
    #[arg(long, env = "NO_REUSE_PORT")]
    pub no_reuse_port: bool,
    /// Port of the HTTP endpoint (metrics, health, admin API, status page);
    /// 0 turns it off [default: 15673]
    #[arg(short = 'b', long = "http-port", env = "HTTP_PORT")]
    pub http_port: Option<u16>,
    /// Address of the HTTP endpoint [default: 127.0.0.1]
    #[arg(long = "http-address", env = "HTTP_ADDRESS", value_name = "ADDRESS")]
    pub http_address: Option<String>,
    /// Host names the HTTP endpoint answers to, comma-separated, besides IP
    /// addresses and localhost: a request naming another host (a page on
    /// another site that made its name point here) is refused [default:
    /// none]
    #[arg(long, env = "HTTP_HOSTS", value_name = "NAMES", value_delimiter = ',')]
    pub http_hosts: Option<Vec<String>>,
    /// Bearer token the admin API (/api/) asks for; prefer HTTP_TOKEN or
    /// --http-token-file, which other users cannot read from the process
    /// list [default: none]
    #[arg(long, env = "HTTP_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub http_token: Option<String>,
    /// File holding the admin API's bearer token (surrounding whitespace
    /// ignored), read at start and at every reload
    #[arg(long, env = "HTTP_TOKEN_FILE", value_name = "FILE")]
    pub http_token_file: Option<String>,
    /// CA certificates (PEM) that amqps:// brokers are verified against,
    /// instead of the system's roots
    #[arg(long, env = "UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Option<String>,
    /// Client certificate chain (PEM) warren presents to amqps:// brokers
    #[arg(long, env = "UPSTREAM_CERT", value_name = "FILE")]
    pub upstream_cert: Option<String>,
    /// Private key (PEM) of --upstream-cert
    #[arg(long, env = "UPSTREAM_KEY", value_name = "FILE")]
    pub upstream_key: Option<String>,
    /// Do not verify amqps:// brokers' certificates. For tests only: anyone
    /// on the path can read and change the traffic, passwords included
    #[arg(long, env = "UPSTREAM_INSECURE")]
    pub upstream_insecure: bool,
    /// Seconds an upstream connection with no clients stays open [default: 5]
    #[arg(
        short = 't',
        long = "idle-connection-timeout",
        env = "IDLE_CONNECTION_TIMEOUT",
        value_name = "SECONDS"
    )]
    pub idle_connection_timeout: Option<u64>,
    /// Most client connections at once; beyond it a client is refused with
    /// 530 at Connection.Open. 0: no limit [default: 16384]
    #[arg(long, env = "MAX_CLIENTS", value_name = "N")]
    pub max_clients: Option<u32>,
    /// Handshakes (from accept to Connection.Open) in progress at once;
    /// beyond it warren accepts no more until one ends. 0: no limit
    /// [default: 1024]
    #[arg(long, env = "MAX_PENDING_HANDSHAKES", value_name = "N")]
    pub max_pending_handshakes: Option<u32>,
    /// Handshakes in progress from one IP address; a further connection from
    /// it is closed at once. Loopback clients count only in
    /// --max-pending-handshakes. 0: no limit [default: 64]
    #[arg(long, env = "MAX_PENDING_HANDSHAKES_PER_SOURCE", value_name = "N")]
    pub max_pending_handshakes_per_source: Option<u32>,
    /// Most upstream connections per pool (user, password and vhost); when
    /// all are full a client is refused with 530. 0: no limit [default: 100]
    #[arg(long, env = "MAX_UPSTREAM_CONNECTIONS", value_name = "N")]
    pub max_upstream_connections: Option<u32>,
    /// MiB of partly received messages warren holds for all clients
    /// together (a message is forwarded once whole); a client whose next
    /// frame would go over is closed with 506. One client may hold at most
    /// 256 MiB [default: 1024]
    #[arg(long, env = "MAX_HELD_PUBLISH_MIB", value_name = "MIB")]
    pub max_held_publish_mib: Option<u32>,
    /// Exchange types the broker's plugins add (x-delayed-message, ...),
    /// comma-separated: clients may declare exchanges of these and of the
    /// built-in types. Any other type would make the broker close the
    /// shared upstream connection, so warren refuses it (503) [default:
    /// none]
    #[arg(
        long,
        env = "EXCHANGE_TYPES",
        value_name = "TYPES",
        value_delimiter = ','
    )]
    pub exchange_types: Option<Vec<String>>,
    /// Most channels warren opens on one upstream connection; the broker's
    /// own channel_max also applies [default: 65535]
    #[arg(long, env = "MAX_UPSTREAM_CHANNELS", value_name = "N")]
    pub max_upstream_channels: Option<u16>,
    /// Channels each client is sure to get on a shared upstream connection:
    /// beyond them it takes only channels no other client has a claim on
    /// [default: 8]
    #[arg(long, env = "GUARANTEED_CHANNELS", value_name = "N")]
    pub guaranteed_channels: Option<u16>,
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
    /// Seconds a client gets from connecting (TLS included) to
    /// Connection.Open [default: 10]
    #[arg(long, env = "CLIENT_HANDSHAKE_TIMEOUT", value_name = "SECONDS")]
    pub client_handshake_timeout: Option<u64>,
    /// Seconds to connect and log in to a broker node before trying the
    /// next; short enough that a silent node leaves time for the next within
    /// clients' own timeouts (php-amqplib's is 3 s) [default: 3]
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT", value_name = "SECONDS")]
    pub upstream_connect_timeout: Option<u64>,
    /// Seconds after which an upstream connection takes no new clients and
    /// closes once its clients leave: bounds how long a revoked password
    /// keeps working through a pool. 0: no limit [default: 3600]
    #[arg(long, env = "UPSTREAM_MAX_LIFETIME", value_name = "SECONDS")]
    pub upstream_max_lifetime: Option<u64>,
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
    /// Configuration file: TOML if it ends in .toml, else amqproxy's INI
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate this configuration file (with the command line and
    /// environment), print the effective configuration and exit
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
}

impl Cli {
    /// The file to read, whether to run or to check it.
    pub fn file(&self) -> Option<&PathBuf> {
        self.config.as_ref().or(self.check_config.as_ref())
    }

    /// What the command line and environment give.
    pub fn options(&self) -> Options {
        let flag = |given: bool, value: bool| given.then_some(value);
        Options {
            upstream: (!self.upstream.is_empty()).then(|| self.upstream.clone()),
            listen: self.listen.clone(),
            port: self.port,
            tls_port: self.tls_port,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_client_ca: self.tls_client_ca.clone(),
            socket_mode: self.socket_mode.clone(),
            reuse_port: flag(self.no_reuse_port, false),
            http_port: self.http_port,
            http_address: self.http_address.clone(),
            http_hosts: self.http_hosts.clone(),
            http_token: self.http_token.clone(),
            http_token_file: self.http_token_file.clone(),
            upstream_ca: self.upstream_ca.clone(),
            upstream_cert: self.upstream_cert.clone(),
            upstream_key: self.upstream_key.clone(),
            upstream_insecure: flag(self.upstream_insecure, true),
            idle_connection_timeout: self.idle_connection_timeout,
            max_clients: self.max_clients,
            max_pending_handshakes: self.max_pending_handshakes,
            max_pending_handshakes_per_source: self.max_pending_handshakes_per_source,
            max_upstream_connections: self.max_upstream_connections,
            max_held_publish_mib: self.max_held_publish_mib,
            max_upstream_channels: self.max_upstream_channels,
            exchange_types: self.exchange_types.clone(),
            guaranteed_channels: self.guaranteed_channels,
            channel_max: self.channel_max,
            heartbeat: self.heartbeat,
            channel_reuse: flag(self.no_channel_reuse, false),
            max_kept_channels: self.max_kept_channels,
            prewarm_channels: self.prewarm_channels,
            client_handshake_timeout: self.client_handshake_timeout,
            upstream_connect_timeout: self.upstream_connect_timeout,
            upstream_max_lifetime: self.upstream_max_lifetime,
            term_timeout: self.term_timeout,
            term_client_close_timeout: self.term_client_close_timeout,
            log_level: if self.debug {
                Some("debug".into())
            } else {
                self.log_level.clone()
            },
            log_format: self.log_format.clone(),
        }
    }
}
