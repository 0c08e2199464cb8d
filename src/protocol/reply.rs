//! AMQP reply codes and the texts warren puts next to them. RabbitMQ prefixes
//! every text with the code's name; warren does the same so clients and logs
//! read identically with or without the proxy.

use super::ids::MethodId;
use super::method::Close;

pub const REPLY_SUCCESS: u16 = 200;
pub const ACCESS_REFUSED: u16 = 403;
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

/// A Close whose text starts with the code's name, as RabbitMQ's do, and
/// is cut as RabbitMQ cuts it to fit a short string: 252 bytes and "...".
pub fn close(code: u16, detail: impl std::fmt::Display) -> Close {
    let mut text = format!("{} - {}", code_name(code), detail);
    if text.len() > 255 {
        let mut end = 252;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    Close::new(code, text)
}

/// RabbitMQ's answer to a method it does not take from clients.
pub fn unimplemented_method(id: MethodId) -> Close {
    close(COMMAND_INVALID, "unimplemented method").caused_by(id)
}

/// How many payload bytes RabbitMQ quotes when it refuses a frame.
const QUOTED_OCTETS: usize = 16;

/// RabbitMQ's description of a frame it could not take: its type and up to
/// sixteen payload octets.
pub fn octets(kind: u8, payload: &[u8]) -> String {
    let (which, quoted) = if payload.len() <= QUOTED_OCTETS {
        ("all", payload)
    } else {
        ("first 16", &payload[..QUOTED_OCTETS])
    };
    format!("type {kind}, {which} octets = {}", erlang_binary(quoted))
}

/// RabbitMQ's reader's answer to a frame it cannot make sense of (a method
/// frame too short for its ids, a content header too short for its size).
pub fn unknown_frame(kind: u8, payload: &[u8]) -> Close {
    close(
        FRAME_ERROR,
        format!("{}: unknown_frame", octets(kind, payload)),
    )
}

/// Bytes in Erlang's binary notation, as RabbitMQ's texts quote them.
pub fn erlang_binary(bytes: &[u8]) -> String {
    let inner: Vec<String> = bytes.iter().map(u8::to_string).collect();
    format!("<<{}>>", inner.join(","))
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
        let long = close(501, "é".repeat(200));
        assert!(long.text.len() <= 255 && long.text.ends_with("..."));
    }
}
