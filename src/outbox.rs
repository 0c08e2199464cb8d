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
//!
//! A consumer is owed whole messages, and one message may be larger than
//! the whole bound (RabbitMQ takes up to 512 MiB). So a large message can
//! be exempted ([`Outbox::exempt_next`]): the bound then applies to what is
//! queued beside the exempted messages not yet written, and an exemption
//! ends (giving back whatever it holds, such as a share of a global
//! budget) once the writer has passed it. Whoever exempts bounds how much.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};

#[derive(Debug)]
struct Credit {
    available: Semaphore,
    /// Bytes queued without credit, to be paid back before credit returns.
    overdraft: AtomicUsize,
    limit: usize,
    /// Credit the writer gave back so far: its place in the stream of
    /// everything ever queued (written by the writer only).
    returned: AtomicU64,
    /// Large messages owed whole, oldest first.
    exemptions: Mutex<VecDeque<Exemption>>,
    /// Where the oldest exemption ends (`u64::MAX`: none), so the writer
    /// takes the lock only when it has passed one.
    exempt_until: AtomicU64,
}

/// Part of the stream, by credit position, that does not count against the
/// bound; `_hold` is dropped when the writer has passed it.
struct Exemption {
    start: u64,
    end: u64,
    _hold: Box<dyn Send>,
}

impl std::fmt::Debug for Exemption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Exemption({}..{})", self.start, self.end)
    }
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

    /// Credit held by queued frames, overdraft included.
    fn queued(&self) -> u64 {
        (self.limit - self.available.available_permits().min(self.limit)
            + self.overdraft.load(Ordering::Relaxed)) as u64
    }

    /// Whether `cost` more fits when the exempted messages still queued do
    /// not count.
    fn exempted_room_for(&self, cost: usize) -> bool {
        if self.exempt_until.load(Ordering::Relaxed) == u64::MAX {
            return false;
        }
        self.queued() + cost as u64 <= self.limit as u64 + self.exempt_unwritten()
    }

    /// Exempted credit not yet written.
    fn exempt_unwritten(&self) -> u64 {
        let written = self.returned.load(Ordering::Relaxed);
        let exemptions = self.exemptions.lock().expect("exemptions lock");
        exemptions
            .iter()
            .filter(|e| e.end > written)
            .map(|e| e.end - e.start.max(written))
            .sum()
    }

    /// Ends the exemptions the writer has passed.
    fn passed(&self, written: u64) {
        if written < self.exempt_until.load(Ordering::Relaxed) {
            return;
        }
        let mut exemptions = self.exemptions.lock().expect("exemptions lock");
        while exemptions.front().is_some_and(|e| e.end <= written) {
            exemptions.pop_front();
        }
        self.exempt_until.store(
            exemptions.front().map_or(u64::MAX, |e| e.end),
            Ordering::Relaxed,
        );
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
        returned: AtomicU64::new(0),
        exemptions: Mutex::default(),
        exempt_until: AtomicU64::new(u64::MAX),
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

    /// Queues a frame if there is credit for it (or it fits beside an
    /// exempted message), without waiting.
    pub fn try_send(&self, frame: Bytes) -> Result<(), TrySendError> {
        let cost = self.credit.cost(&frame);
        match self.credit.available.try_acquire_many(cost as u32) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) if self.credit.exempted_room_for(cost) => {
                self.credit.overdraft.fetch_add(cost, Ordering::Relaxed);
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(TrySendError::Full),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(TrySendError::Closed),
        }
        self.queue.send(frame).map_err(|_| TrySendError::Closed)
    }

    /// The next `cost` of credit queued (a large message's frames, costed
    /// as [`Outbox::cost_of`] does) does not count against the bound; `hold`
    /// is kept until the writer has passed it.
    pub fn exempt_next(&self, cost: u64, hold: impl Send + 'static) {
        let credit = &self.credit;
        let start = credit.returned.load(Ordering::Relaxed) + credit.queued();
        let mut exemptions = credit.exemptions.lock().expect("exemptions lock");
        exemptions.push_back(Exemption {
            start,
            end: start + cost,
            _hold: Box::new(hold),
        });
        if exemptions.len() == 1 {
            credit.exempt_until.store(start + cost, Ordering::Relaxed);
        }
    }

    /// Exempted credit queued and not yet written.
    pub fn exempted(&self) -> u64 {
        self.credit.exempt_unwritten()
    }

    /// What a frame of `len` bytes costs in credit.
    pub fn cost_of(len: usize) -> u64 {
        (len + QUEUED_FRAME_OVERHEAD) as u64
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

    /// The writer stops after what is queued now and shuts the socket's
    /// write side, as the broker does after its last Close-Ok, even while
    /// the session still holds a sender (see `crate::client::session`).
    pub fn finish(&self) {
        let _ = self.queue.send(Bytes::new());
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
        let written = self.credit.returned.load(Ordering::Relaxed) + credit as u64;
        self.credit.returned.store(written, Ordering::Relaxed);
        self.credit.passed(written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

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

    /// Dropped when the exemption ends.
    struct Hold(Arc<AtomicBool>);
    impl Drop for Hold {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn an_exempted_message_goes_whole_and_the_bound_applies_beside_it() {
        let (outbox, mut inbox) = outbox(1000);
        let released = Arc::new(AtomicBool::new(false));
        outbox.exempt_next(3000, Hold(released.clone()));
        for _ in 0..10 {
            assert_eq!(
                outbox.try_send(costing(300)),
                Ok(()),
                "the message's own frames"
            );
        }
        assert_eq!(outbox.exempted(), 3000);
        for _ in 0..10 {
            assert_eq!(outbox.try_send(costing(100)), Ok(()), "the bound beside it");
        }
        assert_eq!(outbox.try_send(costing(100)), Err(TrySendError::Full));
        while outbox.exempted() > 0 {
            write_out(&mut inbox).await;
        }
        assert!(
            released.load(Ordering::Relaxed),
            "the hold goes once the writer passed it"
        );
        write_out(&mut inbox).await;
        assert_eq!(outbox.try_send(costing(1000)), Ok(()));
        assert_eq!(
            outbox.try_send(costing(100)),
            Err(TrySendError::Full),
            "the bound is back"
        );
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_limit_still_goes() {
        let (outbox, mut inbox) = outbox(100);
        outbox.send(costing(500)).await.unwrap();
        write_out(&mut inbox).await;
        assert_eq!(outbox.try_send(costing(100)), Ok(()));
    }
}
