//! Publisher-confirm tags on a reused channel.
//!
//! Confirm mode is sticky and the broker numbers publishes per channel for
//! the channel's whole life. When a kept channel in confirm mode serves a
//! new client, that client must see its own publishes numbered from 1, never
//! an ack for a previous client's message, and no ack at all if it did not
//! ask for confirms. The router applies this mapping to every Basic.Ack and
//! Basic.Nack the broker sends on the channel.

/// The mapping for the channel's current client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfirmTags {
    /// Publishes the broker numbered before this client's first.
    pub base: u64,
    /// This client asked for confirms (Confirm.Select).
    pub wanted: bool,
}

impl ConfirmTags {
    /// The tag to show the client for a broker tag, or `None` to drop the
    /// ack. A `multiple` ack that spans the hand-over is clipped by the same
    /// rule: "everything up to broker tag T" becomes "everything up to T -
    /// base", which names only this client's publishes.
    pub fn to_client(self, broker_tag: u64) -> Option<u64> {
        (self.wanted && broker_tag > self.base).then(|| broker_tag - self.base)
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
        };
        assert_eq!(tags.to_client(5), None);
        assert_eq!(tags.to_client(6), Some(1));
        assert_eq!(
            ConfirmTags {
                base: 0,
                wanted: false
            }
            .to_client(1),
            None
        );
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
            let mut tags = ConfirmTags { base: 0, wanted: true };
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
                        tags = ConfirmTags { base: published, wanted: wants };
                        client_published = 0;
                        client_acked.clear();
                    }
                }
            }
        }
    }
}
