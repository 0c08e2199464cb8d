//! Socket halves as trait objects, so the frame reader and writer tasks are
//! the same code for plain TCP and (later) TLS streams.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
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

/// Like [`split_tcp`], and the read side acknowledges every segment at once
/// (TCP_QUICKACK). Some clients (Node's amqplib among them) leave Nagle on
/// and write a publish as several small writes: each write after the first
/// waits for our ACK, which Linux delays by up to 40 ms when we have nothing
/// to send back. Acknowledging at once removes that stall from every cycle.
pub fn split_client_tcp(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let (read, write) = stream.into_split();
    quick_ack(fd);
    (Box::pin(QuickAckRead { inner: read, fd }), Box::pin(write))
}

/// Linux re-enters delayed-ACK mode on its own, so the option is set again
/// after every short read (see `STALL_SIZED_READ`).
/// Reads shorter than this re-arm TCP_QUICKACK: a publish written as
/// several small writes arrives as reads of a few hundred bytes.
const STALL_SIZED_READ: usize = 4096;

struct QuickAckRead {
    inner: OwnedReadHalf,
    fd: RawFd,
}

impl AsyncRead for QuickAckRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        // Only a short read can mean a client stalled behind Nagle waiting
        // for our ACK; a bulk stream fills segments without waiting, and
        // an ACK forced per read there costs a packet per syscall.
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() - before < STALL_SIZED_READ {
            quick_ack(self.fd);
        }
        polled
    }
}

fn quick_ack(fd: RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is the socket owned by the stream this reader belongs to
    // (alive as long as `inner`), and the option value is a valid c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
