//! Publisher-confirm tags: the client's numbering on a shared channel, and
//! how far the broker has settled the channel's publishes.
//!
//! Confirm mode is sticky and the broker numbers publishes per channel for
//! the channel's whole life. warren puts every upstream channel in confirm
//! mode (see [`crate::replay`]); a client sees acks only if it asked for
//! them, for its own publishes, numbered from 1, never an ack for a previous
//! client's message. After a lost connection its unsettled publishes are
//! sent again on a new channel and keep the tags the client knows them by.
//! The router applies this mapping to every Basic.Ack and Basic.Nack the
//! broker sends on the channel.

use std::collections::BTreeSet;

/// The mapping for the channel's current client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfirmTags {
    /// Publishes the broker numbered before this client's first.
    pub base: u64,
    /// This client asked for confirms (Confirm.Select).
    pub wanted: bool,
    /// The client's tags for the publishes sent again after a lost
    /// connection, in the order sent (the broker numbers them `base + 1`
    /// on); 0 for one the client wanted no confirm for.
    pub replayed: Box<[u64]>,
    /// The client's tags given before the publishes that follow the
    /// replayed ones.
    pub tags_before: u64,
}

impl ConfirmTags {
    /// A client's confirms from its Confirm.Select on, after
    /// `published_before` publishes the broker numbered on its behalf.
    pub fn after(published_before: u64) -> Self {
        ConfirmTags {
            base: published_before,
            wanted: true,
            ..ConfirmTags::default()
        }
    }

    /// The tag to show the client for a broker tag, or `None` to drop the
    /// ack. A `multiple` ack that spans the hand-over is clipped by the same
    /// rule: "everything up to broker tag T" becomes "everything up to the
    /// client's tag for T", which names only this client's publishes: the
    /// replayed ones keep their order, so every unsettled tag below it was
    /// sent again before it.
    pub fn to_client(&self, broker_tag: u64) -> Option<u64> {
        if !self.wanted || broker_tag <= self.base {
            return None;
        }
        let nth = broker_tag - self.base;
        let replayed = self.replayed.len() as u64;
        if nth <= replayed {
            Some(self.replayed[(nth - 1) as usize]).filter(|&tag| tag > 0)
        } else {
            Some(nth - replayed + self.tags_before)
        }
    }
}

/// How far the broker has settled (acked or nacked) a channel's publishes,
/// in its numbering: everything up to `upto`, and the tags in `apart`
/// beyond it (a single ack can come out of order when publishes go to
/// different queues).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    pub upto: u64,
    pub apart: BTreeSet<u64>,
}

impl Settlement {
    pub fn starting_at(upto: u64) -> Self {
        Settlement {
            upto,
            apart: BTreeSet::new(),
        }
    }

    /// The broker settled `tag` (and with `multiple` all before it).
    pub fn on_ack(&mut self, tag: u64, multiple: bool) {
        if multiple {
            self.upto = self.upto.max(tag);
            self.apart = self.apart.split_off(&(self.upto + 1));
        } else if tag > self.upto {
            self.apart.insert(tag);
        }
        while self.apart.first() == Some(&(self.upto + 1)) {
            self.apart.pop_first();
            self.upto += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn unwanted_and_earlier_acks_are_dropped() {
        let tags = ConfirmTags {
            base: 5,
            wanted: true,
            ..ConfirmTags::default()
        };
        assert_eq!(tags.to_client(5), None);
        assert_eq!(tags.to_client(6), Some(1));
        assert_eq!(ConfirmTags::default().to_client(1), None);
    }

    #[test]
    fn replayed_publishes_keep_the_tags_the_client_knows() {
        // Tags 2 and 4 were unsettled when the connection went (3 was
        // acked out of order); 5 was published while it was away.
        let tags = ConfirmTags {
            base: 0,
            wanted: true,
            replayed: vec![2, 4, 5].into(),
            tags_before: 5,
        };
        let shown: Vec<_> = (1..=5).map(|t| tags.to_client(t)).collect();
        assert_eq!(shown, [Some(2), Some(4), Some(5), Some(6), Some(7)]);
        let before_select = ConfirmTags {
            replayed: vec![0, 0, 1].into(),
            tags_before: 1,
            ..tags
        };
        assert_eq!(before_select.to_client(2), None);
        assert_eq!(before_select.to_client(3), Some(1));
        assert_eq!(before_select.to_client(4), Some(2));
    }

    #[test]
    fn settlement_follows_single_multiple_and_out_of_order_acks() {
        let mut settled = Settlement::starting_at(10);
        settled.on_ack(9, false);
        assert_eq!(settled, Settlement::starting_at(10), "a previous client's");
        settled.on_ack(12, false);
        settled.on_ack(14, false);
        assert_eq!((settled.upto, settled.apart.len()), (10, 2));
        settled.on_ack(11, false);
        assert_eq!((settled.upto, settled.apart.len()), (12, 1));
        settled.on_ack(13, true);
        assert_eq!(settled, Settlement::starting_at(14));
        settled.on_ack(20, true);
        assert_eq!(settled, Settlement::starting_at(20));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Publish,
        /// The broker acks the oldest unacked publish, or with `multiple`
        /// everything up to a later one.
        Ack {
            multiple: bool,
            spread: u8,
        },
        /// The channel moves to a new client; `wants` is whether it asks
        /// for confirms.
        HandOver {
            wants: bool,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => Just(Step::Publish),
            3 => (any::<bool>(), 0u8..4).prop_map(|(multiple, spread)| Step::Ack { multiple, spread }),
            1 => any::<bool>().prop_map(|wants| Step::HandOver { wants }),
        ]
    }

    proptest! {
        /// Random publishes, single and multiple acks and hand-overs: every
        /// client sees acks only for its own publishes, numbered from 1,
        /// each at most once, and none unless it asked for confirms.
        #[test]
        fn clients_see_only_their_own_tags(steps in prop::collection::vec(step(), 1..200)) {
            let mut published = 0u64;
            let mut unacked: BTreeSet<u64> = BTreeSet::new();
            let mut tags = ConfirmTags { wanted: true, ..ConfirmTags::default() };
            let mut client_published = 0u64;
            let mut client_acked: BTreeSet<u64> = BTreeSet::new();
            for step in steps {
                match step {
                    Step::Publish => {
                        published += 1;
                        client_published += 1;
                        unacked.insert(published);
                    }
                    Step::Ack { multiple, spread } => {
                        let Some(&first) = unacked.iter().next() else { continue };
                        let tag = if multiple {
                            *unacked.iter().nth(spread as usize).unwrap_or(&first)
                        } else {
                            first
                        };
                        let covered: Vec<u64> = if multiple {
                            unacked.range(..=tag).copied().collect()
                        } else {
                            vec![tag]
                        };
                        for t in &covered {
                            unacked.remove(t);
                        }
                        if let Some(client_tag) = tags.to_client(tag) {
                            prop_assert!(tags.wanted);
                            prop_assert!(client_tag >= 1 && client_tag <= client_published);
                            let seen: Vec<u64> = if multiple {
                                (1..=client_tag).filter(|t| !client_acked.contains(t)).collect()
                            } else {
                                vec![client_tag]
                            };
                            for t in seen {
                                prop_assert!(client_acked.insert(t), "tag {} acked twice", t);
                            }
                        } else {
                            // Dropped: it must not have covered any of this
                            // client's publishes it asked confirms for.
                            prop_assert!(!tags.wanted || covered.iter().all(|t| *t <= tags.base));
                        }
                    }
                    Step::HandOver { wants } => {
                        tags = ConfirmTags { base: published, wanted: wants, ..ConfirmTags::default() };
                        client_published = 0;
                        client_acked.clear();
                    }
                }
            }
        }
    }
}
