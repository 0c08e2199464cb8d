//! Socket halves as trait objects, so the frame reader and writer tasks are
//! the same code for plain TCP and (later) TLS streams.

use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub type ReadHalf = Pin<Box<dyn AsyncRead + Send + Sync>>;
pub type WriteHalf = Pin<Box<dyn AsyncWrite + Send + Sync>>;

/// Splits a TCP stream without the lock `tokio::io::split` needs, after
/// turning Nagle off: AMQP is request/response over small frames and a
/// delayed ACK would add 40 ms to each exchange.
pub fn split_tcp(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    (Box::pin(read), Box::pin(write))
}
