//! The server side of the AMQP handshake, up to Connection.Open.
//!
//! warren plays the broker here: it offers PLAIN and AMQPLAIN, tunes, and
//! learns the vhost. It does not judge the credentials: the session asks the
//! pool, which asks the broker, before it answers Open-Ok.

use tokio::io::AsyncWriteExt;

use crate::auth::{AuthError, Credentials, MECHANISMS};
use crate::frame::{Frame, FrameError, FrameReader, MIN_FRAME_MAX, PROTOCOL_HEADER};
use crate::method::{self, Close, MethodId, StartOk, Tune};
use crate::net::{ReadHalf, WriteHalf};
use crate::reply::{self, COMMAND_INVALID, NOT_ALLOWED, SYNTAX_ERROR};
use crate::wire::{table_get, FieldTable, FieldValue};

/// Who the client says it is (Start-Ok), ready for authentication.
#[derive(Debug)]
pub struct Hello {
    pub credentials: Credentials,
    /// The client understands Connection.Blocked/Unblocked.
    pub wants_blocked: bool,
    /// The client wants a Connection.Close, not a dropped socket, when its
    /// login is refused.
    pub wants_auth_failure_close: bool,
    pub connection_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("not AMQP 0-9-1 (protocol header {0:?})")]
    WrongProtocol(Vec<u8>),
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// Close the connection with this.
    #[error("{}", .0.text)]
    Refused(Close),
}

/// The capabilities warren honours, advertised in Connection.Start.
fn server_properties() -> FieldTable {
    let yes = |k: &str| (k.to_string(), FieldValue::Bool(true));
    let text = |k: &str, v: &str| (k.to_string(), FieldValue::LongStr(v.as_bytes().to_vec()));
    vec![
        (
            "capabilities".into(),
            FieldValue::Table(vec![
                yes("publisher_confirms"),
                yes("exchange_exchange_bindings"),
                yes("basic.nack"),
                yes("consumer_cancel_notify"),
                yes("connection.blocked"),
                yes("consumer_priorities"),
                yes("authentication_failure_close"),
                yes("per_consumer_qos"),
                yes("direct_reply_to"),
            ]),
        ),
        text("product", "warren"),
        text("version", env!("CARGO_PKG_VERSION")),
        text("platform", "Rust"),
        text("information", "AMQP 0-9-1 pooling proxy"),
    ]
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

fn malformed(what: MethodId) -> impl Fn(crate::wire::DecodeError) -> HandshakeError {
    move |e| {
        HandshakeError::Refused(reply::close(
            SYNTAX_ERROR,
            format!("{} in {}", e, method::name(what)),
        ))
    }
}

/// Negotiates one tuning value: 0 means "no limit" for both sides.
fn smaller_limit<T: Copy + Ord + Default>(ours: T, theirs: T) -> T {
    if theirs == T::default() {
        ours
    } else if ours == T::default() {
        theirs
    } else {
        ours.min(theirs)
    }
}

/// Reads the protocol header, offers the mechanisms and reads Start-Ok.
pub async fn greet(
    reader: &mut FrameReader<ReadHalf>,
    writer: &mut WriteHalf,
) -> Result<Hello, HandshakeError> {
    let header = reader.read_preamble(PROTOCOL_HEADER.len()).await?;
    if &header[..] != PROTOCOL_HEADER {
        let _ = writer.write_all(PROTOCOL_HEADER).await;
        return Err(HandshakeError::WrongProtocol(header.to_vec()));
    }
    writer
        .write_all(&method::connection_start(&server_properties(), MECHANISMS))
        .await
        .map_err(FrameError::Io)?;

    let frame = expect(reader, method::CONNECTION_START_OK).await?;
    let start_ok =
        StartOk::decode(frame.method_args()).map_err(malformed(method::CONNECTION_START_OK))?;
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
        wants_blocked: capability(properties, "connection.blocked"),
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
        .write_all(&offer.encode(method::CONNECTION_TUNE))
        .await
        .map_err(FrameError::Io)?;

    let frame = expect(reader, method::CONNECTION_TUNE_OK).await?;
    let asked = Tune::decode(frame.method_args()).map_err(malformed(method::CONNECTION_TUNE_OK))?;
    let tune = Tune {
        channel_max: smaller_limit(offer.channel_max, asked.channel_max),
        frame_max: smaller_limit(offer.frame_max, asked.frame_max),
        heartbeat: if asked.heartbeat == 0 {
            0
        } else {
            smaller_limit(offer.heartbeat, asked.heartbeat)
        },
    };
    if tune.frame_max < MIN_FRAME_MAX {
        return Err(HandshakeError::Refused(reply::close(
            NOT_ALLOWED,
            format!("frame_max={} < {MIN_FRAME_MAX} min size", tune.frame_max),
        )));
    }
    reader.set_frame_max(tune.frame_max);

    let frame = expect(reader, method::CONNECTION_OPEN).await?;
    let vhost = method::decode_open_vhost(frame.method_args())
        .map_err(malformed(method::CONNECTION_OPEN))?;
    Ok((tune, vhost))
}

#[cfg(test)]
mod tests {
    use super::smaller_limit;

    #[test]
    fn zero_means_no_limit_on_either_side() {
        assert_eq!(smaller_limit(2047u16, 0), 2047);
        assert_eq!(smaller_limit(0u16, 256), 256);
        assert_eq!(smaller_limit(2047u16, 256), 256);
        assert_eq!(smaller_limit(131072u32, 1 << 20), 131072);
    }
}
