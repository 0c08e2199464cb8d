//! Every setting by its file key, as read from one source (command line,
//! environment, INI or TOML file) before defaults and validation.
//!
//! Each field is an `Option` so sources merge with "the first that gives
//! it wins"; the same struct, fully filled, is what `--check-config` prints.

use serde::{Deserialize, Deserializer, Serialize};

use crate::protocol::limits::{PROTOCOL_CHANNEL_MAX, RABBITMQ_CHANNEL_MAX};

/// `upstream = "amqp://a"` as well as `upstream = ["amqp://a", "amqp://b"]`.
/// The error names neither value: a URL may hold a password.
fn one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(deserializer) {
        Ok(OneOrMany::One(url)) => Ok(Some(vec![url])),
        Ok(OneOrMany::Many(urls)) => Ok(Some(urls)),
        Err(_) => Err(serde::de::Error::custom(
            "upstream must be a URL or a list of URLs",
        )),
    }
}

/// Declares [`Options`] and its field-wise merge from one list, so a new
/// setting cannot be added to one and forgotten in the other.
macro_rules! options {
    ($( $(#[$doc:meta])* $name:ident: $ty:ty = $default:expr; )*) => {
        #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Options {
            $( $(#[$doc])* #[serde(skip_serializing_if = "Option::is_none")] pub $name: Option<$ty>, )*
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
        }
    };
}

options! {
    /// Broker URLs, amqp:// or amqps://: a list, or one string.
    #[serde(default, deserialize_with = "one_or_many")]
    upstream: Vec<String> = None;
    /// IP address, host name, or `unix:/path` for a Unix socket.
    listen: String = Some("127.0.0.1".into());
    port: u16 = Some(5673);
    tls_port: u16 = Some(5674);
    tls_cert: String = None;
    tls_key: String = None;
    tls_client_ca: String = None;
    /// Permissions of the Unix socket file, octal.
    socket_mode: String = Some("0660".into());
    reuse_port: bool = Some(true);
    http_port: u16 = Some(15673);
    http_address: String = Some("127.0.0.1".into());
    /// Host names the HTTP endpoint answers to besides IPs and localhost.
    http_hosts: Vec<String> = Some(Vec::new());
    /// The admin API's bearer token; `--check-config` hides it.
    http_token: String = None;
    http_token_file: String = None;
    upstream_ca: String = None;
    upstream_cert: String = None;
    upstream_key: String = None;
    upstream_insecure: bool = Some(false);
    idle_connection_timeout: u64 = Some(5);
    max_clients: u32 = Some(16384);
    max_pending_handshakes: u32 = Some(1024);
    max_pending_handshakes_per_source: u32 = Some(64);
    max_upstream_connections: u32 = Some(100);
    max_held_publish_mib: u32 = Some(1024);
    max_upstream_channels: u16 = Some(PROTOCOL_CHANNEL_MAX);
    /// Exchange types of the broker's plugins that clients may declare.
    exchange_types: Vec<String> = Some(Vec::new());
    guaranteed_channels: u16 = Some(8);
    channel_max: u16 = Some(RABBITMQ_CHANNEL_MAX);
    heartbeat: u16 = Some(60);
    channel_reuse: bool = Some(true);
    max_kept_channels: u16 = Some(64);
    prewarm_channels: u16 = Some(0);
    client_handshake_timeout: u64 = Some(10);
    upstream_connect_timeout: u64 = Some(3);
    upstream_max_lifetime: u64 = Some(3600);
    term_timeout: i64 = Some(-1);
    term_client_close_timeout: u64 = Some(0);
    log_level: String = Some("info".into());
    log_format: String = Some("text".into());
}
