//! Sockets as trait objects, so the frame reader and writer tasks are the
//! same code for TCP, TLS and Unix-socket streams.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub type ReadHalf = Pin<Box<dyn AsyncRead + Send + Sync>>;
pub type WriteHalf = Pin<Box<dyn AsyncWrite + Send + Sync>>;

/// Who is on the other end of a client connection, for logs and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    /// Unix-socket peers have no address worth showing.
    Unix,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

/// Splits any stream (TLS, Unix) into boxed halves.
pub fn split<S>(stream: S) -> (ReadHalf, WriteHalf)
where
    S: AsyncRead + AsyncWrite + Send + Sync + 'static,
{
    let (read, write) = tokio::io::split(stream);
    (Box::pin(read), Box::pin(write))
}

/// Turns Nagle off: AMQP is request/response over small frames and a
/// delayed ACK would add 40 ms to each exchange.
pub fn no_delay(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// Splits a TCP stream without the lock `tokio::io::split` needs.
pub fn split_tcp(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    no_delay(&stream);
    let (read, write) = stream.into_split();
    (Box::pin(read), Box::pin(write))
}

/// Like [`split_tcp`], and the read side acknowledges short reads at once
/// (see [`QuickAck`]).
pub fn split_client_tcp(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    no_delay(&stream);
    let fd = stream.as_raw_fd();
    let (read, write) = stream.into_split();
    (Box::pin(QuickAck::new(read, fd)), Box::pin(write))
}

/// Acknowledges every short read at once (TCP_QUICKACK). Some clients
/// (Node's amqplib among them) leave Nagle on and write a publish as
/// several small writes: each write after the first waits for our ACK,
/// which Linux delays by up to 40 ms when we have nothing to send back.
///
/// Linux re-enters delayed-ACK mode on its own, so the option is set again
/// after every short read. Wraps a read half, or a whole stream (under TLS).
pub struct QuickAck<S> {
    inner: S,
    fd: RawFd,
}

/// Reads shorter than this re-arm TCP_QUICKACK: a publish written as
/// several small writes arrives as reads of a few hundred bytes.
const STALL_SIZED_READ: usize = 4096;

impl<S> QuickAck<S> {
    /// `fd` must be the socket `inner` reads from, alive as long as `inner`.
    pub fn new(inner: S, fd: RawFd) -> Self {
        quick_ack(fd);
        QuickAck { inner, fd }
    }
}

impl QuickAck<TcpStream> {
    pub fn client_stream(stream: TcpStream) -> Self {
        no_delay(&stream);
        let fd = stream.as_raw_fd();
        QuickAck::new(stream, fd)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for QuickAck<S> {
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

impl<S: AsyncWrite + Unpin> AsyncWrite for QuickAck<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn quick_ack(fd: RawFd) {
    let on: libc::c_int = 1;
    let _ = set_option(fd, libc::IPPROTO_TCP, libc::TCP_QUICKACK, &on);
}

/// `setsockopt` for the options neither the standard library nor tokio
/// sets. `fd` must be an open socket.
pub fn set_option<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: the kernel reads size_of::<T>() bytes from `value`, a live
    // reference, during the call; a bad `fd` is an error, not UB.
    let set = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A client connection as accepted, before any TLS handshake: that runs in
/// the client's own task, under its handshake timeout.
pub enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Tls(TcpStream, SocketAddr, tokio_rustls::TlsAcceptor),
    Unix(tokio::net::UnixStream),
}

impl Accepted {
    pub fn peer(&self) -> Peer {
        match self {
            Accepted::Tcp(_, addr) | Accepted::Tls(_, addr, _) => Peer::Tcp(*addr),
            Accepted::Unix(_) => Peer::Unix,
        }
    }

    /// The TCP socket, for what precedes TLS and AMQP (a PROXY header).
    pub fn tcp_mut(&mut self) -> Option<&mut TcpStream> {
        match self {
            Accepted::Tcp(stream, _) | Accepted::Tls(stream, _, _) => Some(stream),
            Accepted::Unix(_) => None,
        }
    }

    /// The client's byte stream, TLS handshake done.
    pub async fn open(self) -> io::Result<(ReadHalf, WriteHalf)> {
        match self {
            Accepted::Tcp(stream, _) => Ok(split_client_tcp(stream)),
            Accepted::Tls(stream, _, acceptor) => {
                let stream = acceptor.accept(QuickAck::client_stream(stream)).await?;
                Ok(split(stream))
            }
            Accepted::Unix(stream) => {
                let (read, write) = stream.into_split();
                Ok((Box::pin(read), Box::pin(write)))
            }
        }
    }
}
