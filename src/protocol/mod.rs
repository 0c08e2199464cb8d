//! AMQP 0-9-1 as RabbitMQ speaks it: frames, the method grammar, the
//! methods warren reads or writes itself, field tables and reply codes.
//!
//! A leaf: nothing here imports the rest of warren, so the protocol can be
//! read, tested and fuzzed on its own. Within it, [`ids`] and [`wire`]
//! depend on nothing, [`spec`] on `ids`, [`frame`] on `ids`, [`method`] on
//! all of those, and [`reply`] on `method`.

pub mod frame;
pub mod ids;
pub mod limits;
pub mod method;
pub mod reply;
pub mod spec;
pub mod wire;
