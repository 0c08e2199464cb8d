//! Who uses an upstream connection, as pure state read by the pool when it
//! picks a connection for a client and by the router when it grants a
//! channel.
//!
//! Channels are shared fairly: every pinned client has channels reserved,
//! which no other client may take. A client that has not opened a channel
//! reserves one (it can still move to another connection, see
//! `Pools::rebalance`); from its first on, it reserves what it lacks of
//! `--guaranteed-channels`. Beyond its guarantee a client takes only
//! channels nobody has reserved, so a client that opens channels by the
//! thousand never takes the next channel of one that opened a few.

/// How much room a connection must have to take another client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// At least one free channel.
    Any,
    /// At least half of its channels free.
    HalfFree,
    /// No client at all (a dedicated connection).
    Alone,
}

impl Room {
    fn fits(self, clients: usize, used: usize, capacity: usize) -> bool {
        match self {
            Room::Any => used < capacity,
            Room::HalfFree => used * 2 < capacity,
            Room::Alone => clients == 0 && used < capacity,
        }
    }
}

/// What a client holding `held` channels keeps reserved under a guarantee
/// of `guaranteed`; 0 once it is past it. Needs no lock: sessions ask after
/// every frame they handle.
pub fn reservation(guaranteed: usize, opened_a_channel: bool, held: usize) -> usize {
    if opened_a_channel {
        guaranteed.saturating_sub(held)
    } else {
        1
    }
}

#[derive(Debug)]
pub struct Occupancy {
    /// The connection's channel_max.
    capacity: usize,
    /// `--guaranteed-channels`, at least 1 and at most `capacity`.
    guaranteed: usize,
    clients: usize,
    /// Channels in use (held by clients, closing, or warren's own probes),
    /// as the router last counted them.
    pub channels: usize,
    /// Channels reserved by pinned clients and not in use by them.
    reserved: usize,
    pub closed: bool,
}

impl Occupancy {
    pub fn new(capacity: usize, guaranteed: usize) -> Self {
        Occupancy {
            capacity,
            guaranteed: guaranteed.clamp(1, capacity.max(1)),
            clients: 0,
            channels: 0,
            reserved: 0,
            closed: false,
        }
    }

    pub fn clients(&self) -> usize {
        self.clients
    }

    /// Takes a place for one more client if the connection is open and has
    /// room for it by `room` (a client is counted as needing a channel
    /// until it has one).
    pub fn try_pin(&mut self, room: Room) -> bool {
        if self.closed || !room.fits(self.clients, self.channels + self.reserved, self.capacity) {
            return false;
        }
        self.clients += 1;
        self.reserved += 1;
        true
    }

    /// Undoes `try_pin`, giving back the client's `reserved` channels.
    pub fn unpin(&mut self, reserved: usize) {
        self.clients = self.clients.saturating_sub(1);
        self.reserved = self.reserved.saturating_sub(reserved);
    }

    /// `--guaranteed-channels` as this connection applies it.
    pub fn guaranteed(&self) -> usize {
        self.guaranteed
    }

    /// A client's reservation changed from `from` to `to`.
    pub fn reserve(&mut self, from: usize, to: usize) {
        self.reserved = (self.reserved + to).saturating_sub(from);
    }

    /// Whether a client past its guarantee may take one more channel
    /// without touching any reservation.
    pub fn has_unreserved(&self) -> bool {
        self.channels + self.reserved < self.capacity
    }

    /// A client about to open its first channel is better served by a
    /// quieter connection when more than half of this one's channels are
    /// taken or reserved, or its guarantee would not fit: clients that open
    /// many channels do not crowd each other out.
    pub fn is_crowded(&self) -> bool {
        let taken = self.channels + self.reserved;
        !Room::HalfFree.fits(self.clients, taken, self.capacity)
            || taken.saturating_sub(1) + self.guaranteed > self.capacity
    }

    pub fn is_unused(&self) -> bool {
        self.clients == 0 && self.channels == 0
    }

    /// Closes the connection to new clients if it has none, in one step,
    /// so the pool cannot pin a client between the check and the close.
    /// Whether it is closed.
    pub fn close_if_unused(&mut self) -> bool {
        if self.is_unused() {
            self.closed = true;
        }
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn room_is_counted_in_channels_and_reservations() {
        let mut o = Occupancy::new(4, 2);
        assert!(o.try_pin(Room::HalfFree));
        assert!(o.try_pin(Room::HalfFree), "2 of 4 taken");
        assert!(!o.try_pin(Room::HalfFree), "no longer half free");
        assert!(o.try_pin(Room::Any));
        o.channels = 1;
        assert!(!o.try_pin(Room::Any), "3 reserved + 1 in use");
        o.unpin(1);
        assert_eq!(o.clients(), 2);
        o.closed = true;
        o.channels = 0;
        assert!(!o.try_pin(Room::Any), "a closed connection takes no one");
    }

    #[test]
    fn a_client_reserves_one_channel_then_what_it_lacks_of_its_guarantee() {
        let o = Occupancy::new(10, 3);
        assert_eq!(reservation(o.guaranteed(), false, 0), 1);
        assert_eq!(reservation(o.guaranteed(), true, 0), 3);
        assert_eq!(reservation(o.guaranteed(), true, 2), 1);
        assert_eq!(reservation(o.guaranteed(), true, 5), 0);
        assert_eq!(
            reservation(Occupancy::new(2, 8).guaranteed(), true, 0),
            2,
            "at most the capacity"
        );
        assert_eq!(
            reservation(Occupancy::new(2, 0).guaranteed(), true, 0),
            1,
            "at least one"
        );
    }

    #[test]
    fn crowded_when_half_is_taken_or_a_guarantee_would_not_fit() {
        let mut o = Occupancy::new(10, 3);
        assert!(o.try_pin(Room::Any));
        assert!(!o.is_crowded());
        o.channels = 3;
        assert!(!o.is_crowded(), "4 of 10 taken, counting the client itself");
        o.channels = 4;
        assert!(o.is_crowded(), "half of them");
        let mut tight = Occupancy::new(10, 8);
        assert!(tight.try_pin(Room::Any));
        tight.channels = 2;
        assert!(
            !tight.is_crowded(),
            "2 in use and a guarantee of 8 fit in 10"
        );
        tight.channels = 3;
        assert!(
            tight.is_crowded(),
            "half free, but a guarantee of 8 no longer fits"
        );
    }

    #[test]
    fn an_unused_connection_closes_in_the_same_step() {
        let mut o = Occupancy::new(4, 1);
        assert!(o.try_pin(Room::Any));
        assert!(!o.close_if_unused());
        o.unpin(1);
        assert!(o.close_if_unused());
        assert!(!o.try_pin(Room::Any));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Pin,
        Open(usize),
        Close(usize),
        Leave(usize),
    }

    /// A pinned client as its session tracks it.
    struct Client {
        held: usize,
        opened: bool,
        reserved: usize,
    }

    proptest! {
        /// Clients pinned, opening and closing channels in any order. What
        /// can be promised is in the accounting: reservations are made only
        /// with room for them, a client past its guarantee takes only
        /// channels nobody has reserved, and nothing but a client's first
        /// channel (its reservation grows to its guarantee) can promise
        /// more than the connection has; a client that then finds no
        /// channel was moved to a quieter connection if one was free (see
        /// `is_crowded`).
        #[test]
        fn channels_are_promised_only_with_room_for_them(
            capacity in 1usize..20,
            guaranteed in 1usize..6,
            ops in proptest::collection::vec(
                prop_oneof![
                    Just(Op::Pin),
                    any::<usize>().prop_map(Op::Open),
                    any::<usize>().prop_map(Op::Close),
                    any::<usize>().prop_map(Op::Leave),
                ],
                1..300,
            ),
        ) {
            let mut o = Occupancy::new(capacity, guaranteed);
            let mut clients: Vec<Client> = Vec::new();
            for op in ops {
                let promised = o.channels + o.reserved;
                let mut may_grow = false;
                match op {
                    Op::Pin => {
                        let room = promised < capacity;
                        prop_assert_eq!(o.try_pin(Room::Any), room);
                        if room {
                            clients.push(Client { held: 0, opened: false, reserved: 1 });
                        }
                    }
                    Op::Open(i) if !clients.is_empty() => {
                        let i = i % clients.len();
                        let beyond = reservation(o.guaranteed(), true, clients[i].held) == 0;
                        if beyond && !o.has_unreserved() {
                            prop_assert!(promised >= capacity);
                            continue;
                        }
                        if !beyond && o.channels == capacity {
                            prop_assert!(promised > capacity, "a reservation was taken");
                            continue;
                        }
                        let c = &mut clients[i];
                        may_grow = !c.opened;
                        o.channels += 1;
                        c.held += 1;
                        c.opened = true;
                        let wanted = reservation(o.guaranteed(), true, c.held);
                        o.reserve(c.reserved, wanted);
                        c.reserved = wanted;
                        if beyond {
                            prop_assert!(o.channels + o.reserved <= capacity);
                        }
                    }
                    Op::Close(i) if !clients.is_empty() => {
                        let i = i % clients.len();
                        let c = &mut clients[i];
                        if c.held > 0 {
                            c.held -= 1;
                            o.channels -= 1;
                            let wanted = reservation(o.guaranteed(), c.opened, c.held);
                            o.reserve(c.reserved, wanted);
                            c.reserved = wanted;
                        }
                    }
                    Op::Leave(i) if !clients.is_empty() => {
                        let c = clients.swap_remove(i % clients.len());
                        o.channels -= c.held;
                        o.unpin(c.reserved);
                    }
                    _ => {}
                }
                let now = o.channels + o.reserved;
                prop_assert!(may_grow || now <= promised.max(capacity), "{} > {}", now, promised);
                prop_assert_eq!(o.reserved, clients.iter().map(|c| c.reserved).sum::<usize>());
                prop_assert_eq!(o.clients(), clients.len());
            }
        }
    }
}
