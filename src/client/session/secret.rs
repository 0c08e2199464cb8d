//! Connection.Update-Secret: a client refreshing its OAuth 2 token, or a
//! rotated password, on a live connection. The broker is asked, on a
//! connection of the client's own opened for the question (a shared one's
//! secret belongs to all its clients), and its answer is relayed. Accepted,
//! the client belongs to the pool of its new credentials from then on; its
//! open channels stay on the connection they are on. The secret is never
//! logged.

use zeroize::Zeroizing;

use super::{Exit, Session};
use crate::client::frame_check;
use crate::protocol::frame::Frame;
use crate::protocol::method;
use crate::protocol::reply::{self, ACCESS_REFUSED, CONNECTION_FORCED};
use crate::protocol::wire::Decoder;
use crate::upstream::ConnectError;

impl Session {
    pub(super) async fn update_secret(&mut self, frame: Frame) -> Option<Exit> {
        if let Err(close) = frame_check::check_frame(&frame) {
            return Some(Exit::Close(close));
        }
        let mut args = Decoder::new(frame.method_args());
        let Some(secret) = args
            .long_bytes()
            .ok()
            .and_then(|secret| String::from_utf8(secret.to_vec()).ok())
        else {
            return Some(Exit::Close(reply::close(
                ACCESS_REFUSED,
                "warren takes secrets that are UTF-8 text",
            )));
        };
        let updated = self
            .ctx
            .pools
            .update_secret(&self.pool, &self.vhost, Zeroizing::new(secret), frame.as_bytes())
            .await;
        match updated {
            Ok(pool) => {
                self.pool = pool;
                tracing::info!(client = self.id, "client updated its secret (the broker accepted it)");
                self.link.push(method::connection_update_secret_ok());
                None
            }
            Err(ConnectError::Refused(close)) => {
                tracing::warn!(client = self.id, code = close.code, "the broker refused the client's new secret");
                Some(Exit::Close(close))
            }
            Err(other) => Some(Exit::Close(reply::close(
                CONNECTION_FORCED,
                format!("warren cannot reach the broker to check the new secret: {other}"),
            ))),
        }
    }
}
