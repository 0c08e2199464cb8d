//! The checks a frame a client sends on a channel passes before it can
//! touch the channel table or the shared upstream connection.
//!
//! Each check mirrors one RabbitMQ makes at connection level while reading
//! a frame, in the same order and with the same reply code and text, so the
//! offender hears what it would hear directly and nothing reaches the
//! connection its neighbours share. Where RabbitMQ's reader crashes instead
//! of answering (an unknown method id, a field table that does not parse)
//! and the client's socket just closes, warren closes the connection with
//! the code for the fault and says what it was: the client loses its
//! connection either way, and learns why. Two stages, as in RabbitMQ: what its reader checks
//! for every frame ([`check_frame`]), and what it checks when a channel
//! expects a method ([`check_method`]; while a channel expects content, a
//! method is an unexpected frame, see `content.rs`).

use crate::protocol::frame::{Frame, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};
use crate::protocol::ids::{self, MethodId};
use crate::protocol::method::{self, Close, Qos};
use crate::protocol::reply::{
    self, COMMAND_INVALID, FRAME_ERROR, NOT_IMPLEMENTED, UNEXPECTED_FRAME,
};
use crate::protocol::spec::{self, Malformed, MethodSpec, Sender};

/// What RabbitMQ's reader checks of every frame on a channel. A method
/// frame's spec comes back.
pub fn check_frame(frame: &Frame) -> Result<Option<&'static MethodSpec>, Close> {
    let payload = frame.payload();
    match frame.kind() {
        FRAME_METHOD => {
            let Some((class, id)) = frame.method_id() else {
                return Err(reply::unknown_frame(frame.kind(), payload));
            };
            match spec::lookup(class, id) {
                Some(spec) => Ok(Some(spec)),
                None => Err(
                    reply::close(NOT_IMPLEMENTED, format!("unknown method {class}.{id}"))
                        .caused_by((class, id)),
                ),
            }
        }
        FRAME_HEARTBEAT => Err(reply::close(
            UNEXPECTED_FRAME,
            reply::octets(frame.kind(), payload),
        )),
        FRAME_HEADER if payload.len() < spec::CONTENT_HEADER_MIN => {
            Err(reply::unknown_frame(frame.kind(), payload))
        }
        _ => Ok(None),
    }
}

/// What RabbitMQ checks of a method when the channel expects one: its
/// arguments decode, a client may send it, and its values are not ones
/// RabbitMQ answers with a connection error. `exchange_types`: the broker's
/// plugin exchange types. A server method that carries content is refused
/// only once its content is complete, as RabbitMQ does (`content.rs`).
pub fn check_method(
    spec: &MethodSpec,
    frame: &Frame,
    exchange_types: &[String],
) -> Result<(), Close> {
    let id = (spec.class, spec.method);
    let args = frame.method_args();
    match spec::check_arguments(spec, args) {
        Ok(()) => {}
        Err(Malformed::Utf8) => {
            return Err(reply::close(FRAME_ERROR, "Malformed UTF-8 in shortstr"))
        }
        Err(_) => return Err(reply::close(FRAME_ERROR, cannot_decode(args)).caused_by(id)),
    }
    if spec.sender != Sender::ClientOnChannel && !spec.content {
        return Err(reply::unimplemented_method(id));
    }
    check_values(id, args, exchange_types)
}

/// Argument values RabbitMQ answers with a connection-level error whatever
/// the channel's state (the arguments are known to decode).
fn check_values(id: MethodId, args: &[u8], exchange_types: &[String]) -> Result<(), Close> {
    let refuse = |code, detail: String| Err(reply::close(code, detail).caused_by(id));
    let first_bit_clear = || args.first().is_some_and(|bits| bits & 1 == 0);
    match id {
        ids::BASIC_QOS => match Qos::decode(args) {
            Ok(qos) if qos.prefetch_size != 0 => refuse(
                NOT_IMPLEMENTED,
                format!("prefetch_size!=0 ({})", qos.prefetch_size),
            ),
            _ => Ok(()),
        },
        ids::CHANNEL_FLOW if first_bit_clear() => refuse(NOT_IMPLEMENTED, "active=false".into()),
        ids::BASIC_RECOVER | ids::BASIC_RECOVER_ASYNC if first_bit_clear() => {
            refuse(NOT_IMPLEMENTED, "requeue=false".into())
        }
        ids::EXCHANGE_DECLARE => match method::decode_exchange_declare(args) {
            Ok((kind, false)) if !method::exchange_type_known(&kind, exchange_types) => {
                // RabbitMQ says "invalid" for a name that is an atom of its
                // Erlang VM and "unknown" for any other; these few are atoms
                // in every VM.
                let which = match kind.as_str() {
                    "" | "ok" | "error" | "true" | "false" | "undefined" | "queue" | "exchange" => {
                        "invalid"
                    }
                    _ => "unknown",
                };
                refuse(COMMAND_INVALID, format!("{which} exchange type '{kind}'"))
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// RabbitMQ's text for method arguments that do not decode: all of them, in
/// Erlang's binary notation (the reply text is cut to its 255 bytes later).
fn cannot_decode(args: &[u8]) -> String {
    format!(
        "cannot decode {}",
        reply::erlang_binary(&args[..args.len().min(128)])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{build, FRAME_BODY};
    use bytes::{BufMut, BytesMut};

    fn frame(kind: u8, payload: &[u8]) -> Frame {
        Frame::from_bytes(BytesMut::from(
            &build(kind, 1, |b| b.put_slice(payload))[..],
        ))
    }

    fn method(class: u16, id: u16, args: &[u8]) -> Frame {
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(args);
        frame(FRAME_METHOD, &payload)
    }

    /// Both stages, as for a channel that expects a method.
    fn check_with(frame: &Frame, exchange_types: &[String]) -> Result<(), Close> {
        if let Some(spec) = check_frame(frame)? {
            check_method(spec, frame, exchange_types)?;
        }
        Ok(())
    }

    fn refused(frame: Frame) -> Option<(u16, String)> {
        check_with(&frame, &[])
            .err()
            .map(|close| (close.code, close.text))
    }

    #[test]
    fn well_formed_methods_and_content_pass() {
        assert_eq!(refused(method(60, 80, &[0, 0, 0, 0, 0, 0, 0, 1, 0])), None);
        assert_eq!(refused(frame(FRAME_BODY, b"x")), None);
        assert_eq!(refused(frame(FRAME_HEADER, &[0; 12])), None);
    }

    #[test]
    fn short_and_malformed_frames_are_frame_errors() {
        assert_eq!(
            refused(frame(FRAME_METHOD, &[0, 60])),
            Some((
                501,
                "FRAME_ERROR - type 1, all octets = <<0,60>>: unknown_frame".into()
            ))
        );
        assert_eq!(
            refused(frame(FRAME_HEADER, &[0, 60, 0])),
            Some((
                501,
                "FRAME_ERROR - type 2, all octets = <<0,60,0>>: unknown_frame".into()
            ))
        );
        assert_eq!(
            refused(method(60, 80, &[0, 0, 0, 1])),
            Some((501, "FRAME_ERROR - cannot decode <<0,0,0,1>>".into()))
        );
        let close = check_with(&method(90, 10, &[7]), &[]).unwrap_err();
        assert_eq!(close.cause, (90, 10), "the method is named as the cause");
        assert_eq!(
            refused(method(50, 40, &[0, 0, 1, 0xff, 0])),
            Some((501, "FRAME_ERROR - Malformed UTF-8 in shortstr".into()))
        );
    }

    #[test]
    fn unknown_methods_and_unparsable_tables_are_named() {
        assert_eq!(
            refused(method(60, 250, &[])),
            Some((540, "NOT_IMPLEMENTED - unknown method 60.250".into()))
        );
        let bad_table = [0, 0, 1, b'q', 0, 0, 0, 0, 4, 1, b'k', b'?', 0];
        assert_eq!(refused(method(50, 10, &bad_table)).map(|r| r.0), Some(501));
    }

    #[test]
    fn server_methods_are_refused_as_rabbitmq_does() {
        assert_eq!(
            refused(method(60, 31, &[1, b't'])),
            Some((503, "COMMAND_INVALID - unimplemented method".into()))
        );
        assert_eq!(
            refused(method(60, 60, &[0; 12])),
            None,
            "refused once its content is complete"
        );
        assert_eq!(
            refused(frame(FRAME_HEARTBEAT, &[])),
            Some((505, "UNEXPECTED_FRAME - type 8, all octets = <<>>".into()))
        );
    }

    #[test]
    fn values_rabbitmq_refuses_at_connection_level_are_refused_here() {
        assert_eq!(
            refused(method(20, 20, &[0])),
            Some((540, "NOT_IMPLEMENTED - active=false".into()))
        );
        assert_eq!(refused(method(20, 20, &[1])), None);
        assert_eq!(
            refused(method(60, 110, &[0])),
            Some((540, "NOT_IMPLEMENTED - requeue=false".into()))
        );
        assert_eq!(
            refused(method(60, 10, &[0, 0, 0, 7, 0, 0, 0])),
            Some((540, "NOT_IMPLEMENTED - prefetch_size!=0 (7)".into()))
        );
    }

    #[test]
    fn only_built_in_and_configured_exchange_types_reach_the_broker() {
        let declare = |kind: &str, passive: u8| {
            let mut args = vec![0, 0, 2, b'e', b'x', kind.len() as u8];
            args.extend_from_slice(kind.as_bytes());
            args.extend_from_slice(&[passive, 0, 0, 0, 0]);
            method(40, 10, &args)
        };
        let plugins = ["x-delayed-message".to_string()];
        let refused = |frame: Frame| check_with(&frame, &plugins).err().map(|c| (c.code, c.text));
        assert_eq!(
            refused(declare("fanoutt", 0)),
            Some((
                503,
                "COMMAND_INVALID - unknown exchange type 'fanoutt'".into()
            ))
        );
        assert_eq!(
            refused(declare("", 0)),
            Some((503, "COMMAND_INVALID - invalid exchange type ''".into()))
        );
        assert_eq!(refused(declare("x-nonexistent", 0)).map(|r| r.0), Some(503));
        assert_eq!(
            refused(declare("fanoutt", 1)),
            None,
            "passive ignores the type"
        );
        assert_eq!(refused(declare("x-delayed-message", 0)), None);
        assert_eq!(refused(declare("topic", 0)), None);
    }
}
