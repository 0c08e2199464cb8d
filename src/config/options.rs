//! Every setting, defined once: its file key, type and default, how it
//! appears on the command line (flag, environment variable, value name)
//! and its help. The [`Options`] struct every source fills (command line,
//! environment, INI or TOML file), the merge of sources, the defaults, the
//! clap arguments and `--help` are all derived from the one list below;
//! a unit test holds docs/configuration.md's tables to it.
//!
//! Each field is an `Option` so sources merge with "the first that gives
//! it wins"; the same struct, fully filled, is what `--check-config` prints.

use clap::{value_parser, Arg, ArgAction, ArgMatches};
use serde::{Deserialize, Deserializer, Serialize};

use super::quotas::QuotaOptions;
use super::routes::RouteOptions;
use crate::protocol::limits::{PROTOCOL_CHANNEL_MAX, RABBITMQ_CHANNEL_MAX};

/// `key = "a"` as well as `key = ["a", "b"]`. `expected` is the whole
/// error: it names no value, as a URL may hold a password.
fn one_or_many_of<'de, D: Deserializer<'de>>(
    deserializer: D,
    expected: &'static str,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(deserializer) {
        Ok(OneOrMany::One(one)) => Ok(vec![one]),
        Ok(OneOrMany::Many(many)) => Ok(many),
        Err(_) => Err(serde::de::Error::custom(expected)),
    }
}

/// `upstream = "amqp://a"` as well as `upstream = ["amqp://a", "amqp://b"]`.
fn one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    one_or_many_of(deserializer, "upstream must be a URL or a list of URLs").map(Some)
}

/// A route's list of patterns or URLs, or just one.
pub fn strings<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    one_or_many_of(deserializer, "expected a string or a list of strings")
}

/// How a setting appears on the command line. Its long flag is the file
/// key with dashes, unless it is a switch (`--no-reuse-port`).
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    pub env: &'static str,
    pub short: Option<char>,
    pub value_name: Option<&'static str>,
    pub kind: FlagKind,
    /// Its value is hidden in `--help` (the environment may hold a secret).
    secret: bool,
    negative_numbers: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `--key VALUE`.
    Value,
    /// A positional argument.
    Positional,
    /// `--long` without a value, setting the boolean to `sets`.
    Switch { long: &'static str, sets: bool },
}

impl Flag {
    /// `--key VALUE`, or `ENV=VALUE`.
    const fn value(env: &'static str, value_name: &'static str) -> Flag {
        Flag {
            env,
            short: None,
            value_name: Some(value_name),
            kind: FlagKind::Value,
            secret: false,
            negative_numbers: false,
        }
    }

    const fn positional(env: &'static str, value_name: &'static str) -> Flag {
        Flag {
            kind: FlagKind::Positional,
            ..Flag::value(env, value_name)
        }
    }

    const fn switch(env: &'static str, long: &'static str, sets: bool) -> Flag {
        Flag {
            value_name: None,
            kind: FlagKind::Switch { long, sets },
            ..Flag::value(env, "")
        }
    }

    const fn short(self, short: char) -> Flag {
        Flag {
            short: Some(short),
            ..self
        }
    }

    const fn secret(self) -> Flag {
        Flag {
            secret: true,
            ..self
        }
    }

    const fn negative_numbers(self) -> Flag {
        Flag {
            negative_numbers: true,
            ..self
        }
    }

    /// The long flag for the file key `key`.
    pub fn long(&self, key: &str) -> Option<String> {
        match self.kind {
            FlagKind::Value => Some(key.replace('_', "-")),
            FlagKind::Positional => None,
            FlagKind::Switch { long, .. } => Some(long.to_string()),
        }
    }

    fn arg(&self, key: &'static str, help: String) -> Arg {
        let mut arg = Arg::new(key)
            .env(self.env)
            .help(help)
            .hide_env_values(self.secret)
            .allow_negative_numbers(self.negative_numbers);
        if let Some(long) = self.long(key) {
            arg = arg.long(long);
        }
        if let Some(short) = self.short {
            arg = arg.short(short);
        }
        if let Some(name) = self.value_name {
            arg = arg.value_name(name);
        }
        if self.kind == FlagKind::Positional {
            arg = arg.num_args(1..);
        }
        arg
    }
}

/// A setting's type as the command line reads it and `--help` shows it.
trait CliValue: Sized {
    fn configure(arg: Arg) -> Arg;
    fn read(matches: &ArgMatches, key: &str, flag: &Flag) -> Option<Self>;
    fn show(&self) -> String;
}

macro_rules! scalar_cli_value {
    ($($ty:ty),*) => {$(
        impl CliValue for $ty {
            fn configure(arg: Arg) -> Arg {
                arg.value_parser(value_parser!($ty))
            }
            fn read(matches: &ArgMatches, key: &str, _: &Flag) -> Option<Self> {
                matches.get_one::<$ty>(key).cloned()
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

scalar_cli_value!(u16, u32, u64, i64, String);

impl CliValue for Vec<String> {
    fn configure(arg: Arg) -> Arg {
        arg.value_delimiter(',').action(ArgAction::Append)
    }
    fn read(matches: &ArgMatches, key: &str, _: &Flag) -> Option<Self> {
        matches
            .get_many::<String>(key)
            .map(|values| values.cloned().collect())
    }
    fn show(&self) -> String {
        match self.is_empty() {
            true => "none".to_string(),
            false => self.join(","),
        }
    }
}

impl CliValue for bool {
    fn configure(arg: Arg) -> Arg {
        arg.action(ArgAction::SetTrue)
    }
    fn read(matches: &ArgMatches, key: &str, flag: &Flag) -> Option<Self> {
        match flag.kind {
            FlagKind::Switch { sets, .. } => matches.get_flag(key).then_some(sets),
            _ => None,
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// One setting as the docs and `--help` describe it.
pub struct Described {
    pub key: &'static str,
    pub flag: Flag,
    pub help: String,
    /// The default as `--help` shows it; `None`: off unless given.
    pub default: Option<String>,
}

/// Declares [`Options`], its merge, its defaults and its command line from
/// one list, so a setting cannot be added to one and forgotten in another.
macro_rules! options {
    ($(
        $(#[doc = $help:literal])*
        $(#[serde($($serde:tt)*)])?
        $name:ident: $ty:ty = $default:expr, $flag:expr;
    )*) => {
        #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Options {
            $(
                $(#[serde($($serde)*)])?
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $name: Option<$ty>,
            )*
        }

        /// A TOML file: every setting, and the `[[route]]` tables. A
        /// struct of its own, not `Options` flattened, so a mistake is
        /// reported with its line.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct TomlFile {
            #[serde(default)]
            pub route: Vec<RouteOptions>,
            #[serde(default)]
            pub quota: Vec<QuotaOptions>,
            $(
                $(#[serde($($serde)*)])?
                $name: Option<$ty>,
            )*
        }

        impl TomlFile {
            pub fn settings(self) -> Options {
                Options { $( $name: self.$name, )* }
            }
        }

        /// Every setting's file key, in the order documented.
        pub const KEYS: &[&str] = &[$( stringify!($name), )*];

        impl Options {
            /// Field by field: `self`'s value where given, else `lower`'s.
            pub fn or(self, lower: Options) -> Options {
                Options { $( $name: self.$name.or(lower.$name), )* }
            }

            /// The value of every setting nobody gave (`None`: no default,
            /// the setting is off unless given).
            pub fn defaults() -> Options {
                Options { $( $name: $default, )* }
            }

            /// What the command line and environment give.
            pub fn from_matches(matches: &ArgMatches) -> Options {
                Options { $( $name: <$ty as CliValue>::read(matches, stringify!($name), &$flag), )* }
            }
        }

        /// Every setting, described.
        pub fn described() -> Vec<Described> {
            vec![$(
                Described {
                    key: stringify!($name),
                    flag: $flag,
                    help: [$($help),*].map(str::trim).join(" "),
                    default: {
                        let default: Option<$ty> = $default;
                        default.as_ref().map(CliValue::show)
                    },
                },
            )*]
        }

        /// How each setting's type configures its argument, in `KEYS` order.
        const CONFIGURE: &[fn(Arg) -> Arg] = &[$( <$ty as CliValue>::configure, )*];
    };
}

/// Every setting as a clap argument, its default in its help.
pub fn args() -> Vec<Arg> {
    described()
        .iter()
        .zip(CONFIGURE)
        .map(|(described, configure)| configure(described.arg()))
        .collect()
}

impl Described {
    fn arg(&self) -> Arg {
        let help = match (&self.default, self.flag.kind) {
            (Some(default), FlagKind::Value) => format!("{} [default: {default}]", self.help),
            _ => self.help.clone(),
        };
        self.flag.arg(self.key, help)
    }
}

options! {
    /// Upstream brokers, amqp://host[:port] or amqps://host[:port]; several
    /// spread the load and stand in for each other. Credentials and vhost in
    /// a URL are ignored: every client brings its own
    #[serde(default, deserialize_with = "one_or_many")]
    upstream: Vec<String> = None, Flag::positional("AMQP_URL", "UPSTREAM_URL");
    /// Address to listen on for AMQP clients, or unix:/path for a Unix socket
    listen: String = Some("127.0.0.1".into()), Flag::value("LISTEN_ADDRESS", "ADDRESS").short('l');
    /// Port to listen on for AMQP clients; 0 turns the plain listener off
    port: u16 = Some(5673), Flag::value("LISTEN_PORT", "PORT").short('p');
    /// Port of the TLS listener, on the --listen address; on when --tls-cert
    /// and --tls-key are given
    tls_port: u16 = Some(5674), Flag::value("TLS_PORT", "PORT");
    /// Certificate chain (PEM) the TLS listener presents
    tls_cert: String = None, Flag::value("TLS_CERT", "FILE");
    /// Private key (PEM) of --tls-cert
    tls_key: String = None, Flag::value("TLS_KEY", "FILE");
    /// CA certificates (PEM): TLS clients must present a certificate signed
    /// by one of them
    tls_client_ca: String = None, Flag::value("TLS_CLIENT_CA", "FILE");
    /// Permissions of the Unix socket file (--listen unix:/path), octal
    socket_mode: String = Some("0660".into()), Flag::value("SOCKET_MODE", "MODE");
    /// Do not set SO_REUSEPORT on the listeners (it lets a new warren bind
    /// the port while the old one drains)
    reuse_port: bool = Some(true), Flag::switch("NO_REUSE_PORT", "no-reuse-port", false);
    /// Port of the HTTP endpoint (metrics, health, admin API, status page);
    /// 0 turns it off
    http_port: u16 = Some(15673), Flag::value("HTTP_PORT", "PORT").short('b');
    /// Address of the HTTP endpoint
    http_address: String = Some("127.0.0.1".into()), Flag::value("HTTP_ADDRESS", "ADDRESS");
    /// Host names the HTTP endpoint answers to, comma-separated, besides IP
    /// addresses and localhost: a request naming another host (a page on
    /// another site that made its name point here) is refused
    http_hosts: Vec<String> = Some(Vec::new()), Flag::value("HTTP_HOSTS", "NAMES");
    /// Bearer token the admin API (/api/) asks for; prefer HTTP_TOKEN or
    /// --http-token-file, which other users cannot read from the process list
    http_token: String = None, Flag::value("HTTP_TOKEN", "TOKEN").secret();
    /// File holding the admin API's bearer token (surrounding whitespace
    /// ignored), read at start and at every reload
    http_token_file: String = None, Flag::value("HTTP_TOKEN_FILE", "FILE");
    /// CA certificates (PEM) that amqps:// brokers are verified against,
    /// instead of the system's roots
    upstream_ca: String = None, Flag::value("UPSTREAM_CA", "FILE");
    /// Client certificate chain (PEM) warren presents to amqps:// brokers
    upstream_cert: String = None, Flag::value("UPSTREAM_CERT", "FILE");
    /// Private key (PEM) of --upstream-cert
    upstream_key: String = None, Flag::value("UPSTREAM_KEY", "FILE");
    /// Do not verify amqps:// brokers' certificates. For tests only: anyone
    /// on the path can read and change the traffic, passwords included
    upstream_insecure: bool = Some(false), Flag::switch("UPSTREAM_INSECURE", "upstream-insecure", true);
    /// How warren names its connections to the broker (the management UI
    /// shows it): text with {version} {listen} {host} {pid} {route} {node}
    /// {user} {vhost}
    upstream_connection_name: String = Some("warren {version} on {listen}".into()), Flag::value("UPSTREAM_CONNECTION_NAME", "TEMPLATE");
    /// Where a client that starts consuming, declares an exclusive queue or
    /// selects a transaction is served: shared (on the connection it shares
    /// with other clients) or dedicated (an upstream connection of its own,
    /// pooled and reused); routes may say otherwise
    consumer_mode: String = Some("shared".into()), Flag::value("CONSUMER_MODE", "MODE");
    /// Seconds an upstream connection with no clients stays open
    idle_connection_timeout: u64 = Some(5), Flag::value("IDLE_CONNECTION_TIMEOUT", "SECONDS").short('t');
    /// Most client connections at once; beyond it a client is refused with
    /// 530 at Connection.Open. 0: no limit
    max_clients: u32 = Some(16384), Flag::value("MAX_CLIENTS", "N");
    /// Handshakes (from accept to Connection.Open) in progress at once;
    /// beyond it warren accepts no more until one ends. 0: no limit
    max_pending_handshakes: u32 = Some(1024), Flag::value("MAX_PENDING_HANDSHAKES", "N");
    /// Handshakes in progress from one IP address; a further connection from
    /// it is closed at once. Loopback clients count only in
    /// --max-pending-handshakes. 0: no limit
    max_pending_handshakes_per_source: u32 = Some(64), Flag::value("MAX_PENDING_HANDSHAKES_PER_SOURCE", "N");
    /// Networks (CIDR, or single addresses) of load balancers that open
    /// each connection with a PROXY protocol header (v1 or v2) naming the
    /// client; from them the header is required, and warren logs, limits
    /// and shows the client's address. Comma-separated; none by default
    proxy_protocol_from: Vec<String> = Some(Vec::new()), Flag::value("PROXY_PROTOCOL_FROM", "NETWORKS");
    /// Most upstream connections per pool (user, password and vhost); when
    /// all are full a client is refused with 530. 0: no limit
    max_upstream_connections: u32 = Some(100), Flag::value("MAX_UPSTREAM_CONNECTIONS", "N");
    /// MiB of partly received messages warren holds for all clients
    /// together (a message is forwarded once whole); a client whose next
    /// frame would go over is closed with 506. One client may hold at most
    /// 256 MiB
    max_held_publish_mib: u32 = Some(1024), Flag::value("MAX_HELD_PUBLISH_MIB", "MIB");
    /// MiB of large messages (1 MiB or more) queued for consumers beyond
    /// their 16 MiB write queue, all clients together: a message a consumer
    /// is being sent is owed whole, the bound applies to what waits behind
    /// it
    max_held_delivery_mib: u32 = Some(1024), Flag::value("MAX_HELD_DELIVERY_MIB", "MIB");
    /// Most channels warren opens on one upstream connection; the broker's
    /// own channel_max also applies
    max_upstream_channels: u16 = Some(PROTOCOL_CHANNEL_MAX), Flag::value("MAX_UPSTREAM_CHANNELS", "N");
    /// Exchange types the broker's plugins add (x-delayed-message, ...),
    /// comma-separated: clients may declare exchanges of these and of the
    /// built-in types. Any other type would make the broker close the
    /// shared upstream connection, so warren refuses it (503)
    exchange_types: Vec<String> = Some(Vec::new()), Flag::value("EXCHANGE_TYPES", "TYPES");
    /// Channels each client is sure to get on a shared upstream connection:
    /// beyond them it takes only channels no other client has a claim on
    guaranteed_channels: u16 = Some(8), Flag::value("GUARANTEED_CHANNELS", "N");
    /// Most channels one client connection may open (Tune channel_max)
    channel_max: u16 = Some(RABBITMQ_CHANNEL_MAX), Flag::value("CHANNEL_MAX", "N");
    /// Heartbeat interval offered to clients, seconds; 0 disables
    heartbeat: u16 = Some(60), Flag::value("HEARTBEAT", "SECONDS");
    /// Close every upstream channel when its client is done with it, instead
    /// of keeping clean ones for the next client
    channel_reuse: bool = Some(true), Flag::switch("NO_CHANNEL_REUSE", "no-channel-reuse", false);
    /// Clean channels kept open per upstream connection for the next clients
    max_kept_channels: u16 = Some(64), Flag::value("MAX_KEPT_CHANNELS", "N");
    /// Clean channels opened in advance on each upstream connection, so even
    /// the first Channel.Open costs no round trip
    prewarm_channels: u16 = Some(0), Flag::value("PREWARM_CHANNELS", "N");
    /// Seconds a client gets from connecting (TLS included) to
    /// Connection.Open
    client_handshake_timeout: u64 = Some(10), Flag::value("CLIENT_HANDSHAKE_TIMEOUT", "SECONDS");
    /// Seconds to connect and log in to a broker node before trying the
    /// next; short enough that a silent node leaves time for the next within
    /// clients' own timeouts (php-amqplib's is 3 s)
    upstream_connect_timeout: u64 = Some(3), Flag::value("UPSTREAM_CONNECT_TIMEOUT", "SECONDS");
    /// Seconds a broker node is left out after it refused or timed out a
    /// connection, or closed or lost one (CONNECTION_FORCED, a failed read,
    /// missed heartbeats); it is then probed in the background and taken
    /// back once it answers. Clients go to a banned node only when no other
    /// answers
    node_ban_seconds: u64 = Some(10), Flag::value("NODE_BAN_SECONDS", "SECONDS");
    /// Seconds a publisher is held when its upstream connection is lost:
    /// what the broker had not confirmed and what the client publishes
    /// meanwhile waits, and is published again on a node that answers.
    /// 0: clients get 320 at once, and upstream channels are not put in
    /// confirm mode
    hold_seconds: u64 = Some(60), Flag::value("HOLD_SECONDS", "SECONDS");
    /// MiB of publishes the broker has not confirmed yet that warren keeps,
    /// all clients together; one client keeps at most 16 MiB. A client over
    /// either is not read until the broker confirms
    hold_buffer_mib: u32 = Some(256), Flag::value("HOLD_BUFFER_MIB", "MIB");
    /// Seconds after which an upstream connection takes no new clients and
    /// closes once its clients leave: bounds how long a revoked password
    /// keeps working through a pool. 0: no limit
    upstream_max_lifetime: u64 = Some(3600), Flag::value("UPSTREAM_MAX_LIFETIME", "SECONDS");
    /// Seconds to wait for clients to leave after SIGTERM/SIGINT before
    /// closing them; -1 waits without limit
    term_timeout: i64 = Some(-1), Flag::value("TERM_TIMEOUT", "SECONDS").negative_numbers();
    /// Seconds to wait for a client's Close-Ok after warren closes it during
    /// shutdown
    term_client_close_timeout: u64 = Some(0), Flag::value("TERM_CLIENT_CLOSE_TIMEOUT", "SECONDS");
    /// Log level: error, warn, info, debug, trace
    log_level: String = Some("info".into()), Flag::value("LOG_LEVEL", "LEVEL");
    /// Log format: text, or json (one object per line)
    log_format: String = Some("text".into()), Flag::value("LOG_FORMAT", "FORMAT");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cells of a markdown table row.
    fn cells(row: &str) -> Vec<&str> {
        row.trim()
            .trim_matches('|')
            .split(" | ")
            .map(str::trim)
            .collect()
    }

    /// The rows of docs/configuration.md's option tables (flag,
    /// environment, file key, INI, default, meaning).
    fn documented() -> Vec<Vec<&'static str>> {
        include_str!("../../docs/configuration.md")
            .lines()
            .filter(|line| line.starts_with("| "))
            .map(cells)
            .filter(|cells| cells.len() == 6 && cells[0] != "flag" && cells[0] != "---")
            .collect()
    }

    #[test]
    fn the_docs_tables_agree_with_the_definitions() {
        let rows = documented();
        for setting in described() {
            let key = format!("`{}`", setting.key);
            let row = rows
                .iter()
                .find(|cells| cells[2].starts_with(&key))
                .unwrap_or_else(|| panic!("docs/configuration.md has no row for {key}"));
            let flag = &setting.flag;
            match flag.long(setting.key) {
                Some(long) => assert!(row[0].contains(&format!("`--{long}`")), "{key}: {}", row[0]),
                None => assert!(
                    row[0].contains(&format!("`{}`", flag.value_name.unwrap_or(""))),
                    "{key}"
                ),
            }
            if let Some(short) = flag.short {
                assert!(row[0].contains(&format!("`-{short}`")), "{key}: {}", row[0]);
            }
            assert!(
                row[1].starts_with(&format!("`{}`", flag.env)),
                "{key}: {}",
                row[1]
            );
            let default = row[4];
            match setting.default.as_deref() {
                None | Some("none") => assert!(
                    default.starts_with("none") || default == "required",
                    "{key}: documented default {default}"
                ),
                Some(value) => assert!(
                    default.starts_with(&format!("`{value}`")),
                    "{key}: documented default {default}, defined {value}"
                ),
            }
        }
        for row in rows.iter().filter(|row| !row[2].is_empty()) {
            assert!(
                KEYS.iter()
                    .any(|key| row[2].starts_with(&format!("`{key}`"))),
                "docs/configuration.md documents {} that is not a setting",
                row[2]
            );
        }
    }

    #[test]
    fn help_shows_each_default_once() {
        let listen = args()
            .into_iter()
            .find(|arg| arg.get_id() == "listen")
            .expect("listen");
        let help = listen.get_help().expect("help").to_string();
        assert!(help.ends_with("[default: 127.0.0.1]"), "{help}");
        assert_eq!(help.matches("[default:").count(), 1);
    }
}
