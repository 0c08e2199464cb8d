//! A socket's write queue: unbounded underneath, bounded in bytes by credit.
//!
//! Producers that may wait (a session pushing its client's frames upstream)
//! wait for credit, which is backpressure. Producers that must never wait
//! (the upstream router, which serves every client of a connection) either
//! take credit if there is some and report a full queue otherwise
//! (`try_send`: a slow client is then disconnected), or go into overdraft
//! (`send_now`: the router's own control frames, which must keep their place
//! in the one FIFO order the broker sees). The writer gives credit back as
//! bytes reach the socket.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};

#[derive(Debug)]
struct Credit {
    available: Semaphore,
    /// Bytes queued without credit, to be paid back before credit returns.
    overdraft: AtomicUsize,
    limit: usize,
}

/// What a queued frame occupies beyond its bytes: its queue slot, and the
/// allocation it was written into (a 12-byte reply lives in a 64-byte
/// buffer). Charged so that a queue of tiny frames is bounded in the memory
/// it really takes, not in frame bytes.
pub const QUEUED_FRAME_OVERHEAD: usize = 96;

impl Credit {
    /// Credit a frame needs. A frame larger than the whole limit takes it all
    /// rather than waiting forever.
    fn cost(&self, frame: &Bytes) -> usize {
        (frame.len() + QUEUED_FRAME_OVERHEAD).min(self.limit)
    }
}

/// The queue is gone: the socket's writer has stopped.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    Full,
    Closed,
}

#[derive(Debug, Clone)]
pub struct Outbox {
    queue: mpsc::UnboundedSender<Bytes>,
    credit: Arc<Credit>,
}

/// The writer's end.
#[derive(Debug)]
pub struct Inbox {
    queue: mpsc::UnboundedReceiver<Bytes>,
    credit: Arc<Credit>,
}

/// A queue that holds at most `limit` bytes from producers that respect it.
pub fn outbox(limit: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let credit = Arc::new(Credit {
        available: Semaphore::new(limit),
        overdraft: AtomicUsize::new(0),
        limit,
    });
    (
        Outbox {
            queue: tx,
            credit: credit.clone(),
        },
        Inbox { queue: rx, credit },
    )
}

impl Outbox {
    /// Queues a frame, waiting for credit.
    pub async fn send(&self, frame: Bytes) -> Result<(), Closed> {
        let cost = self.credit.cost(&frame) as u32;
        match self.credit.available.acquire_many(cost).await {
            Ok(permit) => permit.forget(),
            Err(_) => return Err(Closed),
        }
        self.queue.send(frame).map_err(|_| Closed)
    }

    /// Queues a frame if there is credit for it, without waiting.
    pub fn try_send(&self, frame: Bytes) -> Result<(), TrySendError> {
        let cost = self.credit.cost(&frame) as u32;
        match self.credit.available.try_acquire_many(cost) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(TrySendError::Full),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(TrySendError::Closed),
        }
        self.queue.send(frame).map_err(|_| TrySendError::Closed)
    }

    /// Whether frames are queued or being written: a frame queued now will
    /// wait for them.
    pub fn is_backlogged(&self) -> bool {
        self.credit.available.available_permits() < self.credit.limit
            || self.credit.overdraft.load(Ordering::Relaxed) > 0
    }

    /// Resolves once the writer has stopped (the socket failed or stalled).
    pub async fn closed(&self) {
        self.queue.closed().await
    }

    /// Queues a frame now, in overdraft if there is no credit.
    pub fn send_now(&self, frame: Bytes) -> Result<(), Closed> {
        let cost = self.credit.cost(&frame);
        match self.credit.available.try_acquire_many(cost as u32) {
            Ok(permit) => permit.forget(),
            Err(_) => {
                self.credit.overdraft.fetch_add(cost, Ordering::Relaxed);
            }
        }
        self.queue.send(frame).map_err(|_| Closed)
    }
}

/// Without a writer no credit comes back: wake every waiting sender with
/// `Closed` instead of leaving it waiting forever.
impl Drop for Inbox {
    fn drop(&mut self) {
        self.credit.available.close();
    }
}

impl Inbox {
    /// Takes up to `limit` queued frames; 0 when every producer is gone.
    pub async fn recv_many(&mut self, batch: &mut Vec<Bytes>, limit: usize) -> usize {
        self.queue.recv_many(batch, limit).await
    }

    /// The credit taken by these frames and their size in bytes, in one
    /// pass (call before writing them: writing consumes the buffers).
    pub fn credit_and_size_of(&self, frames: &[Bytes]) -> (usize, usize) {
        frames.iter().fold((0, 0), |(credit, size), f| {
            (credit + self.credit.cost(f), size + f.len())
        })
    }

    /// Gives back the credit of frames that reached the socket, after
    /// paying off any overdraft.
    pub fn release(&self, credit: usize) {
        let owed = self
            .credit
            .overdraft
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |owed| {
                Some(owed - owed.min(credit))
            })
            .unwrap_or(0);
        let returned = credit - owed.min(credit);
        if returned > 0 {
            self.credit.available.add_permits(returned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the writer does: takes what is queued and gives its credit back.
    async fn write_out(inbox: &mut Inbox) -> usize {
        let mut batch = Vec::new();
        let taken = inbox.recv_many(&mut batch, 8).await;
        inbox.release(inbox.credit_and_size_of(&batch).0);
        taken
    }

    /// A frame whose credit, overhead included, is `cost`.
    fn costing(cost: usize) -> Bytes {
        Bytes::from(vec![0u8; cost - QUEUED_FRAME_OVERHEAD])
    }

    #[tokio::test]
    async fn credit_bounds_the_queue_and_returns_when_written() {
        let (outbox, mut inbox) = outbox(200);
        outbox.send(costing(120)).await.unwrap();
        assert_eq!(outbox.try_send(costing(100)), Err(TrySendError::Full));
        assert_eq!(write_out(&mut inbox).await, 1);
        assert_eq!(outbox.try_send(costing(100)), Ok(()));
    }

    #[tokio::test]
    async fn tiny_frames_are_charged_what_they_occupy() {
        let (outbox, _inbox) = outbox(10 * QUEUED_FRAME_OVERHEAD);
        let queued = (0..100)
            .take_while(|_| outbox.try_send(Bytes::from_static(b"x")).is_ok())
            .count();
        assert!(queued < 10, "{queued} one-byte frames fit in ten overheads");
    }

    #[tokio::test]
    async fn overdraft_is_paid_back_before_credit_returns() {
        let (outbox, mut inbox) = outbox(200);
        outbox.send(costing(200)).await.unwrap();
        outbox.send_now(costing(100)).unwrap();
        write_out(&mut inbox).await;
        // 300 written, 100 of them on overdraft: 200 of credit back.
        assert_eq!(outbox.try_send(costing(200)), Ok(()));
        assert_eq!(outbox.try_send(costing(100)), Err(TrySendError::Full));
    }

    #[tokio::test]
    async fn senders_waiting_for_credit_learn_that_the_writer_is_gone() {
        let (outbox, inbox) = outbox(100);
        outbox.send(costing(100)).await.unwrap();
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(costing(100)).await }
        });
        tokio::task::yield_now().await;
        drop(inbox);
        assert_eq!(waiting.await.unwrap(), Err(Closed));
        outbox.closed().await;
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_limit_still_goes() {
        let (outbox, mut inbox) = outbox(100);
        outbox.send(costing(500)).await.unwrap();
        write_out(&mut inbox).await;
        assert_eq!(outbox.try_send(costing(100)), Ok(()));
    }
}
