//! Opening an authenticated connection to the broker, as an AMQP client.

use crate::protocol::ids::{self, MethodId};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::auth::Credentials;
use crate::net::{ReadHalf, WriteHalf};
use crate::protocol::frame::{FrameError, FrameReader, PROTOCOL_HEADER};
use crate::protocol::limits::{PRE_TUNE_FRAME_MAX, RABBITMQ_FRAME_MAX};
use crate::protocol::method::{self, Close, Start, Tune};
use crate::protocol::reply::{self, ACCESS_REFUSED, REPLY_SUCCESS};
use crate::protocol::wire::{FieldTable, FieldValue};

/// Why an upstream connection could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The broker answered with Connection.Close: wrong credentials (403),
    /// vhost not allowed (530), ... Relayed to the client as is.
    #[error("broker refused: {} {}", .0.code, .0.text)]
    Refused(Close),
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    #[error("broker broke the handshake: {0}")]
    Protocol(String),
    #[error("broker did not complete the handshake in time")]
    Timeout,
}

impl ConnectError {
    /// The broker judged the client (its login or its vhost): another node
    /// of the same cluster would say the same.
    pub fn is_final(&self) -> bool {
        matches!(self, ConnectError::Refused(close) if matches!(close.code, 403 | 530))
    }
}

/// What the broker granted.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
}

/// Client properties warren presents to the broker. The capabilities are
/// asked for so the broker sends what clients may rely on (blocked
/// notifications, consumer cancel notifications, nacks) and explains
/// refused logins instead of dropping the socket. `describe` adds what
/// names warren in the broker's connection list.
fn client_properties(connection_name: &str, describe: bool) -> FieldTable {
    let yes = |k: &str| (k.to_string(), FieldValue::Bool(true));
    let text = |k: &str, v: &str| (k.to_string(), FieldValue::LongStr(v.as_bytes().to_vec()));
    let mut properties = if describe {
        vec![
            text("product", "warren"),
            text("version", env!("CARGO_PKG_VERSION")),
            text("platform", "Rust"),
            text("connection_name", connection_name),
        ]
    } else {
        Vec::new()
    };
    properties.push((
        "capabilities".into(),
        FieldValue::Table(vec![
            yes("authentication_failure_close"),
            yes("publisher_confirms"),
            yes("consumer_cancel_notify"),
            yes("basic.nack"),
            yes("connection.blocked"),
            yes("exchange_exchange_bindings"),
        ]),
    ));
    properties
}

/// The Start-Ok warren logs in with, within what the broker reads before
/// the connection is tuned. Long credentials leave out the properties that
/// only describe warren; credentials too long even for that are refused as
/// the broker refuses a login it does not know, without asking it: a Start-Ok
/// the broker cannot read makes it drop the socket, which would look like a
/// failed node.
pub fn start_ok(credentials: &Credentials, connection_name: &str) -> Result<Bytes, ConnectError> {
    let response = credentials.plain_response();
    [true, false]
        .into_iter()
        .map(|describe| {
            method::connection_start_ok(
                &client_properties(connection_name, describe),
                "PLAIN",
                &response,
            )
        })
        .find(|frame| frame.len() <= PRE_TUNE_FRAME_MAX as usize)
        .ok_or_else(|| {
            ConnectError::Refused(reply::close(
                ACCESS_REFUSED,
                "Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
            ))
        })
}

fn protocol(what: impl std::fmt::Display) -> ConnectError {
    ConnectError::Protocol(what.to_string())
}

async fn expect(
    reader: &mut FrameReader<ReadHalf>,
    wanted: MethodId,
) -> Result<Vec<u8>, ConnectError> {
    let frame = reader.read_frame().await.map_err(|e| match e {
        FrameError::Closed => {
            ConnectError::Unreachable("connection closed during the handshake".into())
        }
        other => protocol(other),
    })?;
    match frame.method_id() {
        Some(id) if id == wanted => Ok(frame.method_args().to_vec()),
        Some(ids::CONNECTION_CLOSE) => Err(ConnectError::Refused(
            Close::decode(frame.method_args()).map_err(protocol)?,
        )),
        other => Err(protocol(format!(
            "expected {}, got {}",
            method::name(wanted),
            other
                .map(method::name)
                .unwrap_or_else(|| "a non-method frame".into())
        ))),
    }
}

/// A broker connection whose login was accepted (the broker sent Tune, we
/// answered) and that waits for Connection.Open. The broker judges
/// credentials before it knows the vhost, and so does warren's client
/// handshake: this is what lets a refused password reach the client at the
/// same step as it would directly.
pub struct Authenticated {
    reader: FrameReader<ReadHalf>,
    writer: WriteHalf,
    negotiated: Negotiated,
    /// What the broker said about itself in Connection.Start.
    pub server_properties: FieldTable,
}

/// Runs the handshake up to Tune-Ok.
/// `start_ok` is what [`start_ok`] made of the client's credentials.
pub async fn authenticate(
    (read_half, mut writer): (ReadHalf, WriteHalf),
    start_ok: &[u8],
    channel_limit: u16,
) -> Result<Authenticated, ConnectError> {
    let mut reader = FrameReader::new(read_half, 1 << 20);
    writer.write_all(PROTOCOL_HEADER).await.map_err(io)?;

    let start =
        Start::decode(&expect(&mut reader, ids::CONNECTION_START).await?).map_err(protocol)?;
    if !start.mechanisms.split_whitespace().any(|m| m == "PLAIN") {
        return Err(protocol(format!(
            "broker does not offer PLAIN (offers: {})",
            start.mechanisms
        )));
    }
    writer.write_all(start_ok).await.map_err(io)?;

    let offered =
        Tune::decode(&expect(&mut reader, ids::CONNECTION_TUNE).await?).map_err(protocol)?;
    let negotiated = Negotiated {
        channel_max: match offered.channel_max {
            0 => channel_limit,
            n => n.min(channel_limit),
        },
        frame_max: match offered.frame_max {
            0 => RABBITMQ_FRAME_MAX,
            n => n,
        },
        heartbeat: offered.heartbeat,
    };
    let tune_ok = Tune {
        channel_max: negotiated.channel_max,
        frame_max: negotiated.frame_max,
        heartbeat: negotiated.heartbeat,
    };
    writer
        .write_all(&tune_ok.encode(ids::CONNECTION_TUNE_OK))
        .await
        .map_err(io)?;
    Ok(Authenticated {
        reader,
        writer,
        negotiated,
        server_properties: start.server_properties,
    })
}

fn io(e: std::io::Error) -> ConnectError {
    ConnectError::Unreachable(e.to_string())
}

impl Authenticated {
    pub fn frame_max(&self) -> u32 {
        self.negotiated.frame_max
    }

    /// Opens `vhost` and hands back the socket halves ready for the data path.
    pub async fn open(
        mut self,
        vhost: &str,
    ) -> Result<(FrameReader<ReadHalf>, WriteHalf, Negotiated), ConnectError> {
        self.writer
            .write_all(&method::connection_open(vhost))
            .await
            .map_err(io)?;
        match expect(&mut self.reader, ids::CONNECTION_OPEN_OK).await {
            Ok(_) => {
                self.reader.set_frame_max(self.negotiated.frame_max);
                Ok((self.reader, self.writer, self.negotiated))
            }
            Err(refused @ ConnectError::Refused(_)) => {
                // The broker waits for our Close-Ok before it drops the socket.
                let _ = self.writer.write_all(&method::connection_close_ok()).await;
                Err(refused)
            }
            Err(other) => Err(other),
        }
    }

    /// Closes a login that turned out not to be needed. RabbitMQ takes a
    /// Connection.Close only once the vhost is open (before, it logs an
    /// error), so the vhost is opened first; the broker sees a clean close.
    /// Opens `vhost` and asks the broker to take `update` (a client's
    /// Connection.Update-Secret) on this connection of the client's own,
    /// then closes it: the broker's answer (Ok, or its Close).
    pub async fn try_update_secret(self, vhost: &str, update: &[u8]) -> Result<(), ConnectError> {
        let (mut reader, mut writer, _) = self.open(vhost).await?;
        writer.write_all(update).await.map_err(io)?;
        match expect(&mut reader, ids::CONNECTION_UPDATE_SECRET_OK).await {
            Ok(_) => {
                let close = Close::new(REPLY_SUCCESS, "warren: secret checked");
                if writer.write_all(&close.connection_frame()).await.is_ok() {
                    let _ = expect(&mut reader, ids::CONNECTION_CLOSE_OK).await;
                }
                Ok(())
            }
            Err(refused @ ConnectError::Refused(_)) => {
                let _ = writer.write_all(&method::connection_close_ok()).await;
                Err(refused)
            }
            Err(other) => Err(other),
        }
    }

    pub async fn discard(self, vhost: &str) {
        let Ok((mut reader, mut writer, _)) = self.open(vhost).await else {
            return;
        };
        let close = Close::new(REPLY_SUCCESS, "warren: connection not needed");
        if writer.write_all(&close.connection_frame()).await.is_ok() {
            let _ = expect(&mut reader, ids::CONNECTION_CLOSE_OK).await;
        }
    }
}
