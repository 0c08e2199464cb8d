//! warren: an AMQP 0-9-1 proxy that pools upstream connections and channels.
//!
//! Where a frame goes, by module:
//! - [`listener`] accepts a client and starts a [`client`] session;
//! - the session reads client frames ([`frame`]), tracks channels
//!   ([`channel`]) and pushes frames to its pinned [`upstream`] connection,
//!   found or opened by the [`pool`];
//! - the upstream router reads broker frames and pushes them to the client
//!   through its [`link`]; every socket is written by a [`writer`] task.

pub mod admin;
pub mod auth;
pub mod channel;
pub mod client;
pub mod config;
pub mod confirms;
pub mod content;
pub mod exclusive;
pub mod fd_limit;
pub mod link;
pub mod listener;
pub mod logging;
pub mod memory;
pub mod net;
pub mod outbox;
pub mod pool;
pub mod protocol;
pub mod stats;
pub mod tls;
pub mod untrusted;
pub mod upstream;
pub mod writer;
