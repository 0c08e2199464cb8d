//! AMQP reply codes and the texts warren puts next to them. RabbitMQ prefixes
//! every text with the code's name; warren does the same so clients and logs
//! read identically with or without the proxy.

use crate::method::Close;

pub const REPLY_SUCCESS: u16 = 200;
pub const CONNECTION_FORCED: u16 = 320;
pub const NOT_FOUND: u16 = 404;
pub const RESOURCE_LOCKED: u16 = 405;
pub const PRECONDITION_FAILED: u16 = 406;
pub const FRAME_ERROR: u16 = 501;
pub const SYNTAX_ERROR: u16 = 502;
pub const COMMAND_INVALID: u16 = 503;
pub const CHANNEL_ERROR: u16 = 504;
pub const UNEXPECTED_FRAME: u16 = 505;
pub const RESOURCE_ERROR: u16 = 506;
pub const NOT_ALLOWED: u16 = 530;
pub const NOT_IMPLEMENTED: u16 = 540;
pub const INTERNAL_ERROR: u16 = 541;

pub fn code_name(code: u16) -> &'static str {
    match code {
        REPLY_SUCCESS => "OK",
        CONNECTION_FORCED => "CONNECTION_FORCED",
        403 => "ACCESS_REFUSED",
        NOT_FOUND => "NOT_FOUND",
        RESOURCE_LOCKED => "RESOURCE_LOCKED",
        PRECONDITION_FAILED => "PRECONDITION_FAILED",
        FRAME_ERROR => "FRAME_ERROR",
        SYNTAX_ERROR => "SYNTAX_ERROR",
        COMMAND_INVALID => "COMMAND_INVALID",
        CHANNEL_ERROR => "CHANNEL_ERROR",
        UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        RESOURCE_ERROR => "RESOURCE_ERROR",
        NOT_ALLOWED => "NOT_ALLOWED",
        NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        INTERNAL_ERROR => "INTERNAL_ERROR",
        _ => "ERROR",
    }
}

/// A Close whose text starts with the code's name, as RabbitMQ's do.
pub fn close(code: u16, detail: impl std::fmt::Display) -> Close {
    Close::new(code, format!("{} - {}", code_name(code), detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_carry_the_code_name() {
        assert_eq!(
            close(504, "expected 'channel.open'").text,
            "CHANNEL_ERROR - expected 'channel.open'"
        );
        assert_eq!(close(320, "x").code, 320);
    }
}
