//! A pool's connections and the choice of one for a client, as a pure type
//! over anything that can be pinned: `Upstream` in warren, a model in the
//! tests below. The first connection that takes the client gets it; a new
//! one is opened only when none does and the pool is under
//! `--max-upstream-connections`.

use std::time::{Duration, Instant};

use crate::upstream::{Room, Upstream};

/// A connection as the choice sees it.
pub trait Candidate: Clone {
    fn is_closed(&self) -> bool;
    /// Past `--upstream-max-lifetime`: takes no new clients, does not count
    /// against the limit.
    fn is_retired(&self) -> bool;
    /// Takes one more client if it is open, not retired and has `room`
    /// (in one step for the connection, see `Occupancy::try_pin`).
    fn try_pin(&self, room: Room) -> bool;
    /// Closed because the broker went away or the network failed, not by
    /// warren.
    fn was_lost(&self) -> bool;
}

impl Candidate for Upstream {
    fn is_closed(&self) -> bool {
        Upstream::is_closed(self)
    }
    fn is_retired(&self) -> bool {
        Upstream::is_retired(self)
    }
    fn try_pin(&self, room: Room) -> bool {
        Upstream::try_pin(self, room)
    }
    fn was_lost(&self) -> bool {
        Upstream::was_lost(self)
    }
}

/// A pool's connections, oldest first.
#[derive(Debug)]
pub struct Connections<C> {
    list: Vec<C>,
    /// When the broker last accepted the pool's credentials and vhost (a
    /// connection was adopted).
    verified_at: Option<Instant>,
    /// When a lost connection of the pool was last noticed.
    lost_at: Option<Instant>,
}

impl<C> Default for Connections<C> {
    fn default() -> Self {
        Connections {
            list: Vec::new(),
            verified_at: None,
            lost_at: None,
        }
    }
}

impl<C: Candidate> Connections<C> {
    /// Forgets closed connections and pins the client to the first that
    /// takes it, oldest first (older connections fill up, newer ones empty
    /// out and close when idle).
    pub fn pin(&mut self, room: Room) -> Option<C> {
        self.forget_closed();
        self.list.iter().find(|c| c.try_pin(room)).cloned()
    }

    /// Connections that count against the limit: retired ones are on
    /// their way out.
    pub fn current(&self) -> usize {
        self.list
            .iter()
            .filter(|c| !c.is_closed() && !c.is_retired())
            .count()
    }

    /// Whether `limit` (0: none) allows one more connection, with `beside`
    /// more the pool holds elsewhere.
    pub fn may_open(&self, limit: usize, beside: usize) -> bool {
        limit == 0 || self.current() + beside < limit
    }

    /// Adds a new connection, already pinned by its first client.
    pub fn adopt(&mut self, connection: C, now: Instant) {
        self.list.push(connection);
        self.verified_at = Some(now);
    }

    /// The pool stands in for an unreachable broker: it has no live
    /// connection, lost one less than `hold` ago, and the broker accepted
    /// its credentials less than `revocation` ago (`None`: no limit). Its
    /// new clients are admitted and held (see `Pools::authenticate`).
    pub fn vouches_through_outage(
        &mut self,
        revocation: Option<Duration>,
        hold: Duration,
        now: Instant,
    ) -> bool {
        self.forget_closed_at(now);
        let within = |at: Option<Instant>, limit: Option<Duration>| {
            at.is_some_and(|at| limit.is_none_or(|limit| now.saturating_duration_since(at) < limit))
        };
        self.list.is_empty()
            && within(self.lost_at, Some(hold))
            && within(self.verified_at, revocation)
    }

    pub fn is_empty(&mut self) -> bool {
        self.forget_closed();
        self.list.is_empty()
    }

    /// The connections not closed.
    pub fn live(&self) -> impl Iterator<Item = &C> {
        self.list.iter().filter(|c| !c.is_closed())
    }

    fn forget_closed(&mut self) {
        self.forget_closed_at(Instant::now());
    }

    fn forget_closed_at(&mut self, now: Instant) {
        if self.list.iter().any(|c| c.is_closed() && c.was_lost()) {
            self.lost_at = Some(now);
        }
        self.list.retain(|c| !c.is_closed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Occupancy;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex};

    /// A connection with the real occupancy accounting and no socket.
    #[derive(Clone)]
    struct Model {
        id: usize,
        occupancy: Arc<Mutex<Occupancy>>,
        retired: Arc<Mutex<bool>>,
        lost: Arc<Mutex<bool>>,
    }

    impl Model {
        fn new(id: usize, capacity: usize) -> Self {
            Model {
                id,
                occupancy: Arc::new(Mutex::new(Occupancy::new(capacity, 1))),
                retired: Arc::default(),
                lost: Arc::default(),
            }
        }
        fn has_room(&self) -> bool {
            self.occupancy.lock().unwrap().has_unreserved()
        }
    }

    impl Candidate for Model {
        fn is_closed(&self) -> bool {
            self.occupancy.lock().unwrap().closed
        }
        fn is_retired(&self) -> bool {
            *self.retired.lock().unwrap()
        }
        fn try_pin(&self, room: Room) -> bool {
            !self.is_retired() && self.occupancy.lock().unwrap().try_pin(room)
        }
        fn was_lost(&self) -> bool {
            *self.lost.lock().unwrap()
        }
    }

    #[test]
    fn a_pool_vouches_through_an_outage_only_soon_after_losing_a_verified_connection() {
        let (hold, revocation) = (Duration::from_secs(60), Some(Duration::from_secs(3600)));
        let start = Instant::now();
        let later = |secs| start + Duration::from_secs(secs);
        let mut pool = Connections::default();
        let idle = Model::new(1, 4);
        pool.adopt(idle.clone(), start);
        assert!(
            !pool.vouches_through_outage(revocation, hold, later(1)),
            "it is live"
        );
        idle.occupancy.lock().unwrap().closed = true;
        assert!(
            !pool.vouches_through_outage(revocation, hold, later(2)),
            "closed by warren (idle), not lost"
        );
        let lost = Model::new(2, 4);
        pool.adopt(lost.clone(), later(3000));
        *lost.lost.lock().unwrap() = true;
        lost.occupancy.lock().unwrap().closed = true;
        assert!(pool.vouches_through_outage(revocation, hold, later(3010)));
        assert!(pool.vouches_through_outage(revocation, hold, later(3069)));
        assert!(
            !pool.vouches_through_outage(revocation, hold, later(3071)),
            "the hold time after the loss is over"
        );
        let mut old = Connections::default();
        let verified_long_ago = Model::new(3, 4);
        old.adopt(verified_long_ago.clone(), start);
        *verified_long_ago.lost.lock().unwrap() = true;
        verified_long_ago.occupancy.lock().unwrap().closed = true;
        assert!(
            !old.vouches_through_outage(revocation, hold, later(3601)),
            "the broker accepted the password too long ago"
        );
        assert!(
            old.vouches_through_outage(None, hold, later(3601)),
            "no revocation limit"
        );
    }

    #[test]
    fn the_oldest_connection_with_room_takes_the_client() {
        let mut pool = Connections::default();
        let (a, b) = (Model::new(1, 1), Model::new(2, 4));
        pool.adopt(a.clone(), Instant::now());
        pool.adopt(b.clone(), Instant::now());
        assert_eq!(pool.pin(Room::Any).map(|c| c.id), Some(1));
        assert_eq!(pool.pin(Room::Any).map(|c| c.id), Some(2), "1 is full");
        assert_eq!(pool.pin(Room::HalfFree).map(|c| c.id), Some(2));
        assert_eq!(
            pool.pin(Room::HalfFree).map(|c| c.id),
            None,
            "2 of 4 taken: not half free any more"
        );
        *b.retired.lock().unwrap() = true;
        assert_eq!(
            pool.pin(Room::Any).map(|c| c.id),
            None,
            "a retired one takes no one"
        );
        assert_eq!(pool.current(), 1);
        assert!(pool.may_open(2, 0) && !pool.may_open(1, 0) && pool.may_open(0, 0));
        assert!(!pool.may_open(2, 1));
        a.occupancy.lock().unwrap().closed = true;
        assert_eq!(pool.live().count(), 1);
        assert!(!pool.is_empty(), "the retired one still serves its clients");
        b.occupancy.lock().unwrap().closed = true;
        assert!(pool.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Arrive,
        Leave(usize),
        Lose(usize),
        Retire(usize),
    }

    proptest! {
        /// Clients arriving and leaving while connections are lost and
        /// retired: a client goes to a live connection with room when there
        /// is one, a new connection is opened only when there is none, and
        /// the pool never holds more current connections than the limit.
        #[test]
        fn a_connection_is_opened_only_when_none_has_room(
            capacity in 1usize..4,
            limit in 0usize..4,
            ops in proptest::collection::vec(
                prop_oneof![
                    3 => Just(Op::Arrive),
                    2 => any::<usize>().prop_map(Op::Leave),
                    1 => any::<usize>().prop_map(Op::Lose),
                    1 => any::<usize>().prop_map(Op::Retire),
                ],
                1..200,
            ),
        ) {
            let mut pool: Connections<Model> = Connections::default();
            let mut opened = 0;
            let mut clients: Vec<Model> = Vec::new();
            for op in ops {
                match op {
                    Op::Arrive => {
                        let room_somewhere = pool
                            .live()
                            .any(|c| !c.is_retired() && c.has_room());
                        match pool.pin(Room::Any) {
                            Some(connection) => {
                                prop_assert!(!connection.is_closed() && !connection.is_retired());
                                clients.push(connection);
                            }
                            None => {
                                prop_assert!(!room_somewhere, "a connection with room was passed over");
                                if pool.may_open(limit, 0) {
                                    opened += 1;
                                    let fresh = Model::new(opened, capacity);
                                    prop_assert!(fresh.try_pin(Room::Any));
                                    pool.adopt(fresh.clone(), Instant::now());
                                    clients.push(fresh);
                                }
                            }
                        }
                    }
                    Op::Leave(i) if !clients.is_empty() => {
                        let left = clients.swap_remove(i % clients.len());
                        let mut occupancy = left.occupancy.lock().unwrap();
                        occupancy.unpin(1);
                        occupancy.close_if_unused();
                    }
                    Op::Lose(i) if opened > 0 => {
                        if let Some(lost) = pool.live().nth(i % opened).cloned() {
                            lost.occupancy.lock().unwrap().closed = true;
                            clients.retain(|c| c.id != lost.id);
                        }
                    }
                    Op::Retire(i) if opened > 0 => {
                        if let Some(old) = pool.live().nth(i % opened) {
                            *old.retired.lock().unwrap() = true;
                        }
                    }
                    _ => {}
                }
                prop_assert!(limit == 0 || pool.current() <= limit);
                prop_assert!(clients.iter().all(|c| !c.is_closed()));
            }
        }
    }
}
