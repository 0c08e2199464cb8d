//! warren: an AMQP 0-9-1 proxy that pools upstream connections and channels.
//!
//! Where a frame goes, by module:
//! - [`listener`] accepts a client and starts a [`client`] session;
//! - the session reads client frames ([`protocol::frame`]), checks them,
//!   tracks channels and pushes frames to its pinned [`upstream`]
//!   connection, found or opened by the [`pool`];
//! - the upstream router reads broker frames and pushes them to the client
//!   through its [`link`]; every socket is written by a [`writer`] task.
//!
//! The crate exports only [`main`]: everything else is internal, so the
//! compiler reports what nothing uses. With the `fuzzing` feature the
//! parsers and state machines the fuzz targets (`fuzz/`) drive are public
//! too.

/// Modules public only to the fuzz targets.
macro_rules! fuzzed {
    ($($module:ident),* $(,)?) => {
        $(
            #[cfg(feature = "fuzzing")]
            pub mod $module;
            #[cfg(not(feature = "fuzzing"))]
            mod $module;
        )*
    };
}

mod admin;
mod app;
mod auth;
mod config;
mod confirms;
mod ctl;
mod exclusive;
mod fd_limit;
mod housekeeping;
mod link;
mod listener;
mod logging;
mod memory;
mod outbox;
mod pause;
mod pool;
mod quota;
mod reload;
mod stats;
mod systemd;
mod tls;
mod untrusted;
mod upstream;
mod version;
mod writer;

fuzzed!(
    channel,
    client,
    content,
    held,
    net,
    protocol,
    proxy_protocol,
    replay
);

pub use app::main;
