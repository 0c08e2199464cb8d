//! The numbers the protocol and RabbitMQ fix, each written once.

use super::frame::FRAME_OVERHEAD;

/// The spec's floor for frame_max: every peer must accept frames this large.
pub const MIN_FRAME_MAX: u32 = 4096;

/// The largest frame RabbitMQ reads before the connection is tuned: a
/// payload of `MIN_FRAME_MAX` bytes (measured on 3.10: a Start-Ok with a
/// 4096-byte payload is answered, one byte more and the socket is dropped).
pub const PRE_TUNE_FRAME_MAX: u32 = MIN_FRAME_MAX + FRAME_OVERHEAD as u32;

/// RabbitMQ's default frame_max (`frame_max` in rabbitmq.conf). warren
/// offers it to clients, and assumes it of a broker that announces 0.
pub const RABBITMQ_FRAME_MAX: u32 = 131072;

/// RabbitMQ's default channel_max: what warren offers clients unless told
/// otherwise.
pub const RABBITMQ_CHANNEL_MAX: u16 = 2047;

/// The highest channel id the protocol can carry.
pub const PROTOCOL_CHANNEL_MAX: u16 = u16::MAX;
