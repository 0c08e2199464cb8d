//! Publishes the broker has not confirmed yet, kept per client channel so
//! they can be sent again if the upstream connection is lost.
//!
//! warren puts every upstream channel in confirm mode, whether or not the
//! client asked for confirms: the broker numbers the publishes of a channel
//! 1, 2, ... and acks (or nacks) each once it has taken responsibility for
//! it. The router publishes how far that has got (`Delivered::settled`),
//! and the session drops what is settled from its log whenever it looks.
//! What is still in the log when the connection goes is exactly what the
//! broker may not have: it is published again, in order, on the client's
//! next upstream connection. A confirm lost with the connection makes a
//! duplicate, so delivery is at least once.
//!
//! Entries are numbered from 1 for each lease of an upstream channel (the
//! router subtracts the publishes the channel had numbered before).

use std::collections::VecDeque;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::gauge::Gauge;

use crate::held::Charges;
use crate::protocol::frame::{self, Frame, FRAME_OVERHEAD};

/// What an entry costs beside its frames: the entry itself and its share of
/// the queue's allocation.
const ENTRY_OVERHEAD: usize = 64;

/// A whole publish (method, header and bodies) as it went upstream.
#[derive(Debug, Clone)]
pub enum Frames {
    /// Copied into the session's publish batch at this range; the batch's
    /// bytes exist once it is sent ([`ReplayLog::sent_batch`]).
    InBatch(Range<usize>),
    /// Consecutive frames in one buffer.
    Whole(Bytes),
    /// Frames queued one by one.
    Pieces(Vec<Bytes>),
}

impl Frames {
    fn len(&self) -> usize {
        match self {
            Frames::InBatch(range) => range.len(),
            Frames::Whole(bytes) => bytes.len(),
            Frames::Pieces(pieces) => pieces.iter().map(Bytes::len).sum(),
        }
    }

    /// The frames, addressed to `channel` and split for a peer's
    /// `frame_max`, into `out`. Copies: it runs only to publish again.
    pub fn reframe(&self, channel: u16, frame_max: usize, out: &mut Vec<Bytes>) {
        let mut each = |bytes: &[u8]| {
            for one in frames_in(bytes) {
                let frame = Frame::from_bytes(BytesMut::from(one));
                frame::push_for_peer(frame, channel, frame_max, out);
            }
        };
        match self {
            Frames::InBatch(_) => unreachable!("a batch is resolved when it is sent"),
            Frames::Whole(bytes) => each(bytes),
            Frames::Pieces(pieces) => pieces.iter().for_each(|piece| each(piece)),
        }
    }
}

/// The frames in a buffer of whole, well-formed frames (warren's own
/// copies of what it checked and sent).
fn frames_in(mut bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if bytes.len() < FRAME_OVERHEAD {
            return None;
        }
        let size = u32::from_be_bytes(bytes[3..7].try_into().expect("4 bytes")) as usize;
        let (one, rest) = bytes.split_at((size + FRAME_OVERHEAD).min(bytes.len()));
        bytes = rest;
        Some(one)
    })
}

/// A publish not yet settled by the broker.
#[derive(Debug, Clone)]
pub struct Unsettled {
    /// Its number on the lease (1 for the lease's first publish).
    pub seq: u64,
    /// The client's confirm tag for it; 0 when it did not ask for one.
    pub client_tag: u64,
    pub frames: Frames,
}

/// One client channel's unsettled publishes, oldest first.
#[derive(Debug, Default)]
pub struct ReplayLog {
    entries: VecDeque<Unsettled>,
    /// Publishes made on the current lease.
    published: u64,
    /// What the entries pin, overhead included.
    bytes: usize,
    /// The budgets `bytes` are charged to (none in unit tests).
    charges: Option<Charges>,
    /// All logs' entries together (`warren_held_messages`).
    counted: Gauge,
}

impl ReplayLog {
    pub fn new(charges: Charges, counted: Gauge) -> Self {
        ReplayLog {
            entries: VecDeque::new(),
            published: 0,
            bytes: 0,
            charges: Some(charges),
            counted,
        }
    }

    fn forget(&mut self, entries: usize) {
        self.counted.dec_by(entries as i64);
    }

    /// Records the next publish on the lease; the bytes it adds.
    pub fn push(&mut self, client_tag: u64, frames: Frames) -> usize {
        self.published += 1;
        let cost = frames.len() + ENTRY_OVERHEAD;
        self.bytes += cost;
        if let Some(charges) = &mut self.charges {
            charges.add(cost);
        }
        self.entries.push_back(Unsettled {
            seq: self.published,
            client_tag,
            frames,
        });
        self.counted.inc();
        cost
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The session's batch went upstream as `batch`: entries copied into it
    /// now point into it (they are the newest ones).
    pub fn sent_batch(&mut self, batch: &Bytes) {
        for entry in self.entries.iter_mut().rev() {
            match &entry.frames {
                Frames::InBatch(range) => entry.frames = Frames::Whole(batch.slice(range.clone())),
                _ => return,
            }
        }
    }

    /// Drops entries the broker settled: every publish numbered up to
    /// `settled`. The bytes it gave back.
    pub fn trim(&mut self, settled: u64) -> usize {
        let (mut freed, before) = (0, self.entries.len());
        while let Some(entry) = self.entries.front() {
            if entry.seq > settled {
                break;
            }
            freed += entry.frames.len() + ENTRY_OVERHEAD;
            self.entries.pop_front();
        }
        self.give_back(freed);
        self.forget(before - self.entries.len());
        freed
    }

    fn give_back(&mut self, bytes: usize) {
        self.bytes -= bytes;
        if let Some(charges) = &mut self.charges {
            charges.remove(bytes);
        }
    }

    /// Empties the log for a new lease: what is unsettled, minus what the
    /// broker settled out of order (`settled_apart`), and the bytes given
    /// back. Numbering starts again at 1.
    pub fn take_unsettled(&mut self, settled: u64, settled_apart: &[u64]) -> (Vec<Unsettled>, usize) {
        self.trim(settled);
        let freed = self.bytes;
        self.give_back(freed);
        self.published = 0;
        self.forget(self.entries.len());
        let unsettled = self
            .entries
            .drain(..)
            .filter(|entry| !settled_apart.contains(&entry.seq))
            .collect();
        (unsettled, freed)
    }
}

impl Drop for ReplayLog {
    fn drop(&mut self) {
        self.forget(self.entries.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{build, FrameReader, FRAME_BODY, FRAME_HEADER, FRAME_METHOD};

    fn publish(channel: u16, body: usize) -> Bytes {
        let mut all = BytesMut::new();
        all.extend_from_slice(&build(FRAME_METHOD, channel, |b| b.extend_from_slice(&[0, 60, 0, 40])));
        all.extend_from_slice(&build(FRAME_HEADER, channel, |b| b.extend_from_slice(&[0; 14])));
        all.extend_from_slice(&build(FRAME_BODY, channel, |b| b.extend_from_slice(&vec![7; body])));
        all.freeze()
    }

    async fn read_all(pieces: &[Bytes]) -> Vec<(u8, u16, usize)> {
        let joined: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        let mut reader = FrameReader::new(&joined[..], 1 << 20);
        let mut frames = Vec::new();
        while let Ok(frame) = reader.read_frame().await {
            frames.push((frame.kind(), frame.channel(), frame.payload().len()));
        }
        frames
    }

    #[tokio::test]
    async fn a_publish_is_sent_again_on_the_new_channel_split_for_its_peer() {
        let mut out = Vec::new();
        Frames::Whole(publish(3, 10_000)).reframe(9, 4096, &mut out);
        let frames = read_all(&out).await;
        assert_eq!(frames[0], (FRAME_METHOD, 9, 4));
        assert_eq!(frames[1], (FRAME_HEADER, 9, 14));
        let bodies: Vec<_> = frames[2..].iter().map(|f| (f.0, f.1, f.2)).collect();
        assert_eq!(
            bodies,
            [(FRAME_BODY, 9, 4088), (FRAME_BODY, 9, 4088), (FRAME_BODY, 9, 1824)]
        );
        let mut pieces = Vec::new();
        let whole = publish(1, 5);
        Frames::Pieces(vec![whole.slice(..12), whole.slice(12..)]).reframe(2, 131072, &mut pieces);
        assert_eq!(
            read_all(&pieces).await,
            [(FRAME_METHOD, 2, 4), (FRAME_HEADER, 2, 14), (FRAME_BODY, 2, 5)]
        );
    }

    #[test]
    fn settled_publishes_leave_and_give_their_bytes_back() {
        let mut log = ReplayLog::default();
        let first = log.push(0, Frames::Whole(publish(1, 100)));
        let second = log.push(1, Frames::Whole(publish(1, 200)));
        log.push(2, Frames::Whole(publish(1, 300)));
        let sizes: usize = [100, 200, 300].map(|n| publish(1, n).len()).iter().sum();
        assert_eq!(log.bytes, sizes + 3 * ENTRY_OVERHEAD);
        assert_eq!(first, publish(1, 100).len() + ENTRY_OVERHEAD);
        assert_eq!(log.trim(0), 0);
        assert_eq!(log.trim(2), first + second);
        let (left, freed) = log.take_unsettled(2, &[]);
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].seq, left[0].client_tag), (3, 2));
        assert_eq!((log.bytes, log.published), (0, 0));
        assert!(freed > 300 && log.entries.is_empty());
    }

    #[test]
    fn what_the_log_holds_is_charged_until_settled_or_dropped() {
        use crate::held::HeldBytes;
        let (all, client) = (HeldBytes::new(1 << 20), HeldBytes::new(1 << 10));
        let counted = Gauge::default();
        let mut log = ReplayLog::new(Charges::new(all.clone(), client.clone()), counted.clone());
        let cost = log.push(0, Frames::Whole(publish(1, 2000)));
        log.push(0, Frames::Whole(publish(1, 10)));
        log.push(0, Frames::Whole(publish(1, 10)));
        assert!(client.is_full());
        assert_eq!(all.used() as usize, log.bytes);
        assert_eq!(counted.get(), 3);
        log.trim(1);
        assert_eq!(all.used() as usize, log.bytes);
        assert!(!client.is_full() && log.bytes < cost);
        assert_eq!(counted.get(), 2);
        let (carried, _) = log.take_unsettled(2, &[]);
        assert_eq!((carried.len(), counted.get()), (1, 0));
        log.push(0, Frames::Whole(publish(1, 10)));
        drop(log);
        assert_eq!((all.used(), client.used(), counted.get()), (0, 0, 0));
    }

    #[test]
    fn publishes_settled_out_of_order_are_not_sent_again() {
        let mut log = ReplayLog::default();
        for tag in 1..=5 {
            log.push(tag, Frames::Whole(publish(1, 1)));
        }
        let (left, _) = log.take_unsettled(1, &[3, 5]);
        let seqs: Vec<u64> = left.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 4]);
    }

    #[test]
    fn batched_publishes_point_into_the_batch_once_it_is_sent() {
        let mut log = ReplayLog::default();
        log.push(0, Frames::Whole(publish(1, 1)));
        log.push(0, Frames::InBatch(0..10));
        log.push(0, Frames::InBatch(10..25));
        let batch = Bytes::from(vec![1u8; 25]);
        log.sent_batch(&batch);
        let (left, _) = log.take_unsettled(0, &[]);
        let lens: Vec<usize> = left
            .iter()
            .map(|e| match &e.frames {
                Frames::Whole(b) => b.len(),
                other => panic!("unresolved {other:?}"),
            })
            .collect();
        assert_eq!(lens, [publish(1, 1).len(), 10, 15]);
    }
}
