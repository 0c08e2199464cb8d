//! Rare events (handshakes, logins, disconnects, closes, outages), counted
//! straight into shared Prometheus metrics: each happens at most once per
//! connection or channel, never per frame.

use std::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// How a client's handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HandshakeOutcome {
    ok,
    /// The broker refused the login (403).
    auth_failed,
    /// The broker refused the vhost or another step (530 and others).
    refused,
    /// warren refused the client (bad protocol header, Tune values, ...).
    invalid,
    broker_unreachable,
    timeout,
    /// The client went away during the handshake.
    abandoned,
    /// `--max-clients` were connected already.
    over_limit,
    /// A `[[quota]]`'s `max_clients` for the user or vhost was reached.
    quota,
    /// `--max-pending-handshakes-per-source` handshakes from the client's
    /// address were in progress already.
    source_limit,
    /// The TLS handshake failed.
    tls_failed,
    /// A `--proxy-protocol-from` balancer's connection had no valid PROXY
    /// header.
    proxy_header,
}

/// Why an admitted client's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DisconnectReason {
    /// The client sent Connection.Close.
    client_closed,
    /// warren closed it (an error, shutdown, or its upstream was lost).
    closed_by_warren,
    /// The socket failed or the client vanished without a Close.
    connection_lost,
    /// It did not read its deliveries fast enough.
    slow_client,
}

/// How a login to the broker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum LoginOutcome {
    ok,
    /// The broker refused the credentials (403).
    auth_failed,
    /// The broker closed the handshake with another code.
    refused,
    unreachable,
    timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CloseScope {
    connection,
    channel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: HandshakeOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LoginLabel {
    pub outcome: LoginOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: DisconnectReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CloseLabels {
    pub scope: CloseScope,
    pub code: u16,
}

/// Events too rare to need single-writer counters.
#[derive(Debug)]
pub struct Events {
    /// TCP connections accepted on the AMQP port.
    pub accepted: Counter,
    pub handshakes: Family<OutcomeLabel, Counter>,
    pub disconnects: Family<ReasonLabel, Counter>,
    /// Connection and channel closes clients received, from warren or relayed
    /// from the broker, by reply code.
    pub closes: Family<CloseLabels, Counter>,
    pub upstream_logins: Family<LoginLabel, Counter>,
    pub handshake_seconds: Histogram,
    pub upstream_login_seconds: Histogram,
    /// Clients held through a lost upstream connection right now.
    pub holding_clients: Gauge,
    /// Publishes the broker has not confirmed yet, kept to publish again.
    pub held_messages: Gauge,
    /// Publishes sent again on a new upstream connection.
    pub republished: Counter,
    /// Held publishes given up on (the hold time ran out, or the client
    /// left while held).
    pub dropped_held: Counter,
}

impl Default for Events {
    fn default() -> Self {
        // 0.25 ms to about 8 s: a local handshake is a millisecond or two,
        // one that logs in upstream costs a broker round trip or a few.
        let buckets = || Histogram::new(exponential_buckets(0.00025, 2.0, 16));
        Events {
            accepted: Counter::default(),
            handshakes: Family::default(),
            disconnects: Family::default(),
            closes: Family::default(),
            upstream_logins: Family::default(),
            handshake_seconds: buckets(),
            upstream_login_seconds: buckets(),
            holding_clients: Gauge::default(),
            held_messages: Gauge::default(),
            republished: Counter::default(),
            dropped_held: Counter::default(),
        }
    }
}

impl Events {
    pub fn handshake(&self, outcome: HandshakeOutcome) {
        self.handshakes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn disconnect(&self, reason: DisconnectReason) {
        self.disconnects
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn close(&self, scope: CloseScope, code: u16) {
        self.closes
            .get_or_create(&CloseLabels { scope, code })
            .inc();
    }

    pub fn upstream_login(&self, outcome: LoginOutcome, started: Instant) {
        self.upstream_logins
            .get_or_create(&LoginLabel { outcome })
            .inc();
        self.upstream_login_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}
