//! What clients are told about the server in Connection.Start.
//!
//! Libraries and applications read `product`, `version`, `cluster_name`,
//! `platform` and the capabilities to choose behaviour, so clients are shown
//! their broker's own server properties, as learned from its nodes (see
//! `upstream::hello`), with two changes: only the capabilities warren
//! honours are advertised (and only if the broker has them too), and one
//! key, `proxy`, names warren and its version. Until a node has been heard
//! from, clients see warren's own properties.

use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::auth::MECHANISMS;
use crate::protocol::method;
use crate::protocol::wire::{table_get, FieldTable, FieldValue};

/// Capabilities whose behaviour warren keeps for its clients.
const HONOURED: [&str; 9] = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
];

/// The key that names warren among the broker's properties.
const PROXY_KEY: &str = "proxy";

fn proxy_value() -> FieldValue {
    text(&format!(
        "warren {} ({})",
        env!("CARGO_PKG_VERSION"),
        crate::version::COMMIT
    ))
}

fn text(value: &str) -> FieldValue {
    FieldValue::LongStr(value.as_bytes().to_vec())
}

/// The broker's properties as clients see them.
pub fn for_clients(broker: &FieldTable) -> FieldTable {
    let broker_capabilities = match table_get(broker, "capabilities") {
        Some(FieldValue::Table(capabilities)) => capabilities.as_slice(),
        _ => &[],
    };
    let honoured: FieldTable = HONOURED
        .iter()
        .filter_map(|name| {
            let value = table_get(broker_capabilities, name)?;
            Some((name.to_string(), value.clone()))
        })
        .collect();
    // In the broker's order, so a client sees its table as the broker sent it.
    let mut shown: FieldTable = broker
        .iter()
        .filter(|(key, _)| key != PROXY_KEY)
        .map(|(key, value)| match key.as_str() {
            "capabilities" => (key.clone(), FieldValue::Table(honoured.clone())),
            _ => (key.clone(), value.clone()),
        })
        .collect();
    shown.push((PROXY_KEY.into(), proxy_value()));
    shown
}

/// warren's own properties, before any broker node has been heard from.
fn own() -> FieldTable {
    vec![
        (
            "capabilities".into(),
            FieldValue::Table(
                HONOURED
                    .iter()
                    .map(|name| (name.to_string(), FieldValue::Bool(true)))
                    .collect(),
            ),
        ),
        ("product".into(), text("warren")),
        ("version".into(), text(env!("CARGO_PKG_VERSION"))),
        ("platform".into(), text("Rust")),
        ("information".into(), text("AMQP 0-9-1 pooling proxy")),
        (PROXY_KEY.into(), proxy_value()),
    ]
}

/// The Connection.Start frame for clients, made once per set of broker
/// properties rather than once per client.
#[derive(Debug)]
pub struct ClientStart {
    own: Bytes,
    /// The broker properties it was last made from, and the frame.
    relayed: RwLock<Option<(Arc<FieldTable>, Bytes)>>,
}

impl Default for ClientStart {
    fn default() -> Self {
        ClientStart {
            own: method::connection_start(&own(), MECHANISMS),
            relayed: RwLock::default(),
        }
    }
}

impl ClientStart {
    /// The frame for the broker properties known now, if any.
    pub fn frame(&self, broker: Option<Arc<FieldTable>>) -> Bytes {
        let Some(broker) = broker else {
            return self.own.clone();
        };
        if let Some((made_from, frame)) = &*self.relayed.read().expect("start lock") {
            if Arc::ptr_eq(made_from, &broker) {
                return frame.clone();
            }
        }
        let frame = method::connection_start(&for_clients(&broker), MECHANISMS);
        *self.relayed.write().expect("start lock") = Some((broker, frame.clone()));
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rabbitmq() -> FieldTable {
        let yes = |k: &str| (k.to_string(), FieldValue::Bool(true));
        vec![
            (
                "capabilities".into(),
                FieldValue::Table(vec![
                    yes("publisher_confirms"),
                    yes("basic.nack"),
                    yes("connection.blocked"),
                    yes("stream_filtering"),
                    ("direct_reply_to".into(), FieldValue::Bool(false)),
                ]),
            ),
            ("cluster_name".into(), text("rabbit@node-1")),
            ("product".into(), text("RabbitMQ")),
            ("version".into(), text("3.10.8")),
            ("proxy".into(), text("a client cannot get this through")),
        ]
    }

    #[test]
    fn the_brokers_properties_with_only_the_capabilities_warren_honours() {
        let shown = for_clients(&rabbitmq());
        assert_eq!(table_get(&shown, "product"), Some(&text("RabbitMQ")));
        assert_eq!(table_get(&shown, "version"), Some(&text("3.10.8")));
        assert_eq!(table_get(&shown, "cluster_name"), Some(&text("rabbit@node-1")));
        let Some(FieldValue::Table(capabilities)) = table_get(&shown, "capabilities") else {
            panic!("no capabilities in {shown:?}");
        };
        let names: Vec<&str> = capabilities.iter().map(|(k, _)| k.as_str()).collect();
        // Not stream_filtering (warren does not know it), not what the
        // broker lacks; a capability the broker says false stays false.
        assert_eq!(
            names,
            ["publisher_confirms", "basic.nack", "connection.blocked", "direct_reply_to"]
        );
        assert_eq!(
            table_get(capabilities, "direct_reply_to"),
            Some(&FieldValue::Bool(false))
        );
        let proxies: Vec<_> = shown.iter().filter(|(k, _)| k == "proxy").collect();
        assert_eq!(proxies.len(), 1);
        assert_eq!(proxies[0].1, proxy_value());
    }

    #[test]
    fn the_frame_is_made_once_per_set_of_properties() {
        let start = ClientStart::default();
        assert_eq!(start.frame(None), start.own);
        let broker = Arc::new(rabbitmq());
        let first = start.frame(Some(broker.clone()));
        assert_ne!(first, start.own);
        let again = start.frame(Some(broker));
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same buffer, not made again");
        let other = start.frame(Some(Arc::new(rabbitmq())));
        assert_ne!(first.as_ptr(), other.as_ptr());
    }
}
