//! The write half of every socket (client or upstream) is owned by one task
//! that drains a bounded queue of ready-made frames.
//!
//! Whoever produces frames never touches the socket: they push `Bytes` and
//! move on. The task takes everything queued at once and hands it to the
//! kernel in one vectored write, so a burst of small frames costs one
//! syscall. It also sends heartbeats when the connection has been quiet on
//! the write side, which is exactly when the peer needs them.

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::outbox::Inbox;
use crate::protocol::frame;
use crate::stats::Tally;

/// Frames taken off the queue per write; bounds the iovec count.
const BATCH: usize = 256;

/// Runs until every sender is dropped or one finishes the queue
/// ([`crate::outbox::Outbox::finish`], an empty buffer): then it flushes and
/// shuts the write side down. Or until the socket fails. `heartbeat` is the
/// interval after which an idle write side sends a heartbeat frame; `None`
/// disables them. `stall_limit`: how long a write may make no progress
/// before the peer counts as gone (`None`: forever, for a broker that stops
/// reading under a memory alarm).
/// Every byte written is added to `sent` (this task is its only writer).
pub async fn run<W: AsyncWrite + Unpin>(
    mut sink: W,
    mut queue: Inbox,
    heartbeat: Option<Duration>,
    stall_limit: Option<Duration>,
    sent: Arc<Tally>,
) -> io::Result<()> {
    let mut batch = Vec::new();
    loop {
        let received = match heartbeat {
            Some(interval) => {
                tokio::select! {
                    n = queue.recv_many(&mut batch, BATCH) => n,
                    _ = tokio::time::sleep(interval) => {
                        batch.push(frame::heartbeat());
                        write_all(&mut sink, &mut batch, stall_limit).await?;
                        sent.add(frame::HEARTBEAT_LEN);
                        continue;
                    }
                }
            }
            None => queue.recv_many(&mut batch, BATCH).await,
        };
        let finished = batch.iter().position(Bytes::is_empty);
        if let Some(end) = finished {
            batch.truncate(end);
        }
        if !batch.is_empty() {
            let (credit, size) = queue.credit_and_size_of(&batch);
            write_all(&mut sink, &mut batch, stall_limit).await?;
            queue.release(credit);
            sent.add(size as u64);
        }
        if received == 0 || finished.is_some() {
            let _ = sink.shutdown().await;
            return Ok(());
        }
    }
}

/// Writes every buffer of `batch`, in order, with as few syscalls as the
/// kernel allows, and leaves `batch` empty. Fails with `TimedOut` when one
/// write makes no progress for `stall_limit`.
async fn write_all<W: AsyncWrite + Unpin>(
    sink: &mut W,
    batch: &mut Vec<Bytes>,
    stall_limit: Option<Duration>,
) -> io::Result<()> {
    let mut first = 0;
    while first < batch.len() {
        let slices: Vec<IoSlice<'_>> = batch[first..].iter().map(|b| IoSlice::new(b)).collect();
        let write = sink.write_vectored(&slices);
        let mut written = match stall_limit {
            Some(limit) => tokio::time::timeout(limit, write)
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??,
            None => write.await?,
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let head = &mut batch[first];
            if written >= head.len() {
                written -= head.len();
                first += 1;
            } else {
                head.advance(written);
                written = 0;
            }
        }
    }
    batch.clear();
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_fails_the_writer_after_the_stall_limit() {
        let (sink, _unread) = tokio::io::duplex(16);
        let (tx, rx) = crate::outbox::outbox(1 << 20);
        let task = tokio::spawn(run(
            sink,
            rx,
            None,
            Some(Duration::from_secs(30)),
            Arc::default(),
        ));
        tx.send(Bytes::from(vec![0u8; 1024])).await.unwrap();
        let error = task.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        tx.closed().await;
    }

    #[tokio::test]
    async fn writes_everything_in_order_through_a_tiny_pipe() {
        let (sink, mut source) = tokio::io::duplex(7);
        let (tx, rx) = crate::outbox::outbox(1 << 20);
        let sent = Arc::new(Tally::default());
        let task = tokio::spawn(run(sink, rx, None, None, sent.clone()));
        let expected: Vec<u8> = (0..100u8).collect();
        for chunk in expected.chunks(9) {
            tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        drop(tx);
        let mut got = Vec::new();
        source.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, expected);
        task.await.unwrap().unwrap();
        assert_eq!(sent.get(), expected.len() as u64);
    }

    #[tokio::test]
    async fn a_finished_queue_ends_the_socket_after_what_came_before() {
        let (sink, mut source) = tokio::io::duplex(64);
        let (tx, rx) = crate::outbox::outbox(1 << 20);
        let task = tokio::spawn(run(sink, rx, None, None, Arc::default()));
        tx.send(Bytes::from_static(b"close-ok")).await.unwrap();
        tx.finish();
        let _ = tx.send(Bytes::from_static(b"too late")).await;
        let mut got = Vec::new();
        source.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"close-ok");
        task.await.unwrap().unwrap();
        // The sender lives on; what it queues now goes nowhere.
        assert!(tx.send_now(Bytes::from_static(b"later")).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_write_side_sends_heartbeats() {
        let (sink, mut source) = tokio::io::duplex(64);
        let (tx, rx) = crate::outbox::outbox(1);
        let task = tokio::spawn(run(
            sink,
            rx,
            Some(Duration::from_secs(5)),
            None,
            Arc::default(),
        ));
        let mut got = [0u8; 8];
        source.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], &frame::heartbeat()[..]);
        drop(tx);
        task.await.unwrap().unwrap();
    }
}
