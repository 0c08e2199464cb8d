//! The server side of the AMQP handshake, up to Connection.Open.
//!
//! warren plays the broker here: it offers PLAIN and AMQPLAIN, tunes, and
//! learns the vhost. It does not judge the credentials: the session asks the
//! pool, which asks the broker, before it answers Open-Ok.

use crate::protocol::ids::{self, MethodId};
use tokio::io::AsyncWriteExt;

use crate::auth::{AuthError, Credentials};
use crate::link::Capabilities;
use crate::net::{ReadHalf, WriteHalf};
use crate::protocol::frame::{Frame, FrameError, FrameReader, PROTOCOL_HEADER};
use crate::protocol::limits::MIN_FRAME_MAX;
use crate::protocol::method::{self, Close, StartOk, Tune};
use crate::protocol::reply::{self, COMMAND_INVALID, NOT_ALLOWED, SYNTAX_ERROR};
use crate::protocol::wire::{table_get, FieldTable, FieldValue};

/// Who the client says it is (Start-Ok), ready for authentication.
#[derive(Debug)]
pub struct Hello {
    pub credentials: Credentials,
    pub capabilities: Capabilities,
    /// The client wants a Connection.Close, not a dropped socket, when its
    /// login is refused.
    pub wants_auth_failure_close: bool,
    pub connection_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("not AMQP 0-9-1 (protocol header {0:?})")]
    WrongProtocol(Vec<u8>),
    /// Only `--proxy-protocol-from` addresses may name another client.
    #[error("a PROXY protocol header from an address --proxy-protocol-from does not list")]
    UntrustedProxyHeader,
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// Close the connection with this.
    #[error("{}", .0.text)]
    Refused(Close),
}

fn capability(properties: &FieldTable, name: &str) -> bool {
    match table_get(properties, "capabilities") {
        Some(FieldValue::Table(caps)) => {
            matches!(table_get(caps, name), Some(FieldValue::Bool(true)))
        }
        _ => false,
    }
}

fn text_property(properties: &FieldTable, name: &str) -> Option<String> {
    match table_get(properties, name) {
        Some(FieldValue::LongStr(v)) => Some(String::from_utf8_lossy(v).into_owned()),
        _ => None,
    }
}

async fn expect(
    reader: &mut FrameReader<ReadHalf>,
    wanted: MethodId,
) -> Result<Frame, HandshakeError> {
    let frame = reader.read_frame().await?;
    match frame.method_id() {
        Some(id) if id == wanted && frame.channel() == 0 => Ok(frame),
        other => Err(HandshakeError::Refused(reply::close(
            COMMAND_INVALID,
            format!(
                "expected {}, got {}",
                method::name(wanted),
                other
                    .map(method::name)
                    .unwrap_or_else(|| format!("frame type {}", frame.kind()))
            ),
        ))),
    }
}

fn malformed(what: MethodId) -> impl Fn(crate::protocol::wire::DecodeError) -> HandshakeError {
    move |e| {
        HandshakeError::Refused(reply::close(
            SYNTAX_ERROR,
            format!("{} in {}", e, method::name(what)),
        ))
    }
}

/// The heartbeat interval: 0 from either side means none was proposed
/// there, so the other side's value holds; otherwise the smaller wins.
fn smaller_limit(ours: u16, theirs: u16) -> u16 {
    match (ours, theirs) {
        (0, t) => t,
        (o, 0) => o,
        (o, t) => o.min(t),
    }
}

/// Checks a client's Tune-Ok value as RabbitMQ does, with its wording: at
/// least `min`, and no more than what was offered (0, "no limit", is more
/// than any limit).
fn check_tuned(field: &str, min: u32, offered: u32, asked: u32) -> Result<(), HandshakeError> {
    let (direction, bound, value) = if asked != 0 && asked < min {
        ("lower than the minimum", min, asked)
    } else if offered != 0 && (asked == 0 || asked > offered) {
        ("higher than the maximum", offered, asked)
    } else {
        return Ok(());
    };
    let no_limit = if value == 0 { " (no limit)" } else { "" };
    Err(HandshakeError::Refused(
        reply::close(
            NOT_ALLOWED,
            format!(
                "negotiated {field} = {value}{no_limit} is {direction} allowed value ({bound})"
            ),
        )
        .caused_by(ids::CONNECTION_TUNE),
    ))
}

/// Reads the protocol header, sends `start` (Connection.Start, see
/// [`super::server_properties`]) and reads Start-Ok.
pub async fn greet(
    reader: &mut FrameReader<ReadHalf>,
    writer: &mut WriteHalf,
    start: &[u8],
) -> Result<Hello, HandshakeError> {
    let header = reader.read_preamble(PROTOCOL_HEADER.len()).await?;
    if &header[..] != PROTOCOL_HEADER {
        let _ = writer.write_all(PROTOCOL_HEADER).await;
        return Err(match crate::proxy_protocol::looks_like_header(&header) {
            true => HandshakeError::UntrustedProxyHeader,
            false => HandshakeError::WrongProtocol(header.to_vec()),
        });
    }
    writer
        .write_all(start)
        .await
        .map_err(FrameError::Io)?;

    let frame = expect(reader, ids::CONNECTION_START_OK).await?;
    let start_ok =
        StartOk::decode(frame.method_args()).map_err(malformed(ids::CONNECTION_START_OK))?;
    let credentials =
        Credentials::decode(&start_ok.mechanism, &start_ok.response).map_err(|e| {
            let code = match e {
                AuthError::UnknownMechanism(_) => COMMAND_INVALID,
                AuthError::Malformed(_) => 403,
            };
            HandshakeError::Refused(reply::close(code, e))
        })?;
    let properties = &start_ok.client_properties;
    Ok(Hello {
        credentials,
        capabilities: Capabilities {
            blocked: capability(properties, "connection.blocked"),
            cancel_notify: capability(properties, "consumer_cancel_notify"),
        },
        wants_auth_failure_close: capability(properties, "authentication_failure_close"),
        connection_name: text_property(properties, "connection_name"),
    })
}

/// Tunes (offering `offer`) and reads Connection.Open: returns the
/// negotiated values and the vhost.
pub async fn tune_and_open(
    reader: &mut FrameReader<ReadHalf>,
    writer: &mut WriteHalf,
    offer: Tune,
) -> Result<(Tune, String), HandshakeError> {
    writer
        .write_all(&offer.encode(ids::CONNECTION_TUNE))
        .await
        .map_err(FrameError::Io)?;

    let frame = expect(reader, ids::CONNECTION_TUNE_OK).await?;
    let asked = Tune::decode(frame.method_args()).map_err(malformed(ids::CONNECTION_TUNE_OK))?;
    check_tuned("frame_max", MIN_FRAME_MAX, offer.frame_max, asked.frame_max)?;
    check_tuned(
        "channel_max",
        0,
        offer.channel_max.into(),
        asked.channel_max.into(),
    )?;
    let tune = Tune {
        channel_max: asked.channel_max,
        frame_max: asked.frame_max,
        heartbeat: if asked.heartbeat == 0 {
            0
        } else {
            smaller_limit(offer.heartbeat, asked.heartbeat)
        },
    };
    reader.set_frame_max(tune.frame_max);

    let frame = expect(reader, ids::CONNECTION_OPEN).await?;
    let vhost =
        method::decode_open_vhost(frame.method_args()).map_err(malformed(ids::CONNECTION_OPEN))?;
    Ok((tune, vhost))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_zero_on_one_side_leaves_the_other() {
        assert_eq!(smaller_limit(60, 0), 60);
        assert_eq!(smaller_limit(0, 30), 30);
        assert_eq!(smaller_limit(60, 30), 30);
    }

    #[test]
    fn tune_ok_values_are_checked_like_rabbitmq() {
        let text = |r: Result<(), HandshakeError>| match r {
            Err(HandshakeError::Refused(close)) => close.text,
            other => panic!("{other:?}"),
        };
        assert!(check_tuned("channel_max", 0, 2047, 256).is_ok());
        assert_eq!(
            text(check_tuned("channel_max", 0, 2047, 0)),
            "NOT_ALLOWED - negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)"
        );
        assert_eq!(
            text(check_tuned("frame_max", 4096, 131072, 1000)),
            "NOT_ALLOWED - negotiated frame_max = 1000 is lower than the minimum allowed value (4096)"
        );
    }
}
