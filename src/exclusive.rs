//! Exclusive queues on a shared upstream connection.
//!
//! RabbitMQ ties an exclusive queue to the connection that declared it: no
//! other connection may use it (405 RESOURCE_LOCKED), and it is deleted
//! when that connection closes. Many clients share one upstream connection,
//! so the broker sees them as one; this table keeps the rule per client.
//!
//! A claim is made when warren forwards an exclusive declare that names its
//! queue (with or without no-wait), not when Declare-Ok comes back: from
//! that moment no other client's request for the name may reach the broker
//! ahead of it. It is confirmed by a Declare-Ok; a no-wait declare's claim
//! never is, and stays. A server-named queue is claimed at its Declare-Ok,
//! the first moment its name exists. A claim ends when its client deletes
//! the queue, when the broker refuses the declare that made it (a claim
//! still awaiting its Declare-Ok is withdrawn), when the broker says a
//! confirmed claim's queue is gone (it expired), or when the client leaves;
//! what a departing client still claims is deleted with an identity check
//! (see [`crate::protocol::method::queue_redeclare_exclusive`]), never by name alone.
//!
//! Pure: the upstream connection holds one behind a lock.

use std::collections::HashMap;

use bytes::Bytes;

use crate::link::ClientId;

/// Who may use a queue name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// Exclusive to another client: 405, as from another connection.
    Locked,
}

/// What is known of the declare behind a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// Sent; its Declare-Ok (or a refusal) is awaited.
    Awaiting,
    /// Declare-Ok came: the broker made the queue.
    Confirmed,
    /// Sent with no-wait: nothing will say when, or whether, it ran.
    NoWait,
}

#[derive(Debug, Clone)]
struct Claim {
    owner: ClientId,
    declared: Declared,
    /// The arguments of the Queue.Declare that made the queue, to check its
    /// identity before deleting it.
    declare: Bytes,
}

/// Exclusive queues by name, with the client that declared each.
#[derive(Debug, Default)]
pub struct ExclusiveQueues {
    claims: HashMap<String, Claim>,
}

impl ExclusiveQueues {
    /// Whether `client` may name `queue` in a request.
    pub fn access(&self, queue: &str, client: ClientId) -> Access {
        match self.claims.get(queue) {
            Some(claim) if claim.owner != client => Access::Locked,
            _ => Access::Granted,
        }
    }

    /// `client` declares `queue` exclusive with these `declare` arguments:
    /// it becomes the client's unless another client's already.
    pub fn claim(
        &mut self,
        queue: &str,
        client: ClientId,
        declare: Bytes,
        declared: Declared,
    ) -> Access {
        match self.claims.get_mut(queue) {
            Some(claim) if claim.owner != client => Access::Locked,
            Some(claim) => {
                // What is known only grows: confirmed stays confirmed, and a
                // no-wait declare can no longer be told refused.
                claim.declared = match (claim.declared, declared) {
                    (Declared::Confirmed, _) | (_, Declared::Confirmed) => Declared::Confirmed,
                    (Declared::NoWait, _) | (_, Declared::NoWait) => Declared::NoWait,
                    _ => Declared::Awaiting,
                };
                Access::Granted
            }
            None => {
                let claim = Claim {
                    owner: client,
                    declared,
                    declare,
                };
                self.claims.insert(queue.to_string(), claim);
                Access::Granted
            }
        }
    }

    /// The broker refused `client`'s declare of `queue`: a claim it made
    /// ends, one an earlier declare confirmed stays.
    pub fn withdraw(&mut self, queue: &str, client: ClientId) {
        if self
            .claims
            .get(queue)
            .is_some_and(|c| c.owner == client && c.declared == Declared::Awaiting)
        {
            self.claims.remove(queue);
        }
    }

    /// Whether `queue`'s claim is confirmed: only then may asking the
    /// broker whether it exists tell that it has gone (a declare still on
    /// its way could run after the question, on another channel).
    pub fn is_confirmed(&self, queue: &str) -> bool {
        self.claims
            .get(queue)
            .is_some_and(|c| c.declared == Declared::Confirmed)
    }

    /// `client`'s queue is gone (deleted, or its declare refused).
    pub fn release(&mut self, queue: &str, client: ClientId) {
        if self.claims.get(queue).is_some_and(|c| c.owner == client) {
            self.claims.remove(queue);
        }
    }

    /// `queue` is gone, whoever claimed it (it expired: the broker said so).
    pub fn forget(&mut self, queue: &str) {
        self.claims.remove(queue);
    }

    /// Whether `client` claims any queue.
    pub fn owns_any(&self, client: ClientId) -> bool {
        self.claims.values().any(|claim| claim.owner == client)
    }

    /// `client` leaves: its claims end, and come back (name and declare
    /// arguments) for deletion.
    pub fn leave(&mut self, client: ClientId) -> Vec<(String, Bytes)> {
        let names: Vec<String> = self
            .claims
            .iter()
            .filter(|(_, claim)| claim.owner == client)
            .map(|(name, _)| name.clone())
            .collect();
        names
            .into_iter()
            .filter_map(|name| {
                let claim = self.claims.remove(&name)?;
                Some((name, claim.declare))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const A: ClientId = 1;
    const B: ClientId = 2;

    fn args() -> Bytes {
        Bytes::from_static(b"declare")
    }

    #[test]
    fn a_claimed_name_is_locked_for_everyone_else() {
        let mut queues = ExclusiveQueues::default();
        assert_eq!(
            queues.claim("q", A, args(), Declared::Awaiting),
            Access::Granted
        );
        assert_eq!(
            queues.claim("q", A, args(), Declared::Awaiting),
            Access::Granted
        );
        assert_eq!(
            queues.claim("q", B, args(), Declared::Awaiting),
            Access::Locked
        );
        assert_eq!(queues.access("q", B), Access::Locked);
        assert_eq!(queues.access("q", A), Access::Granted);
        assert_eq!(queues.access("other", B), Access::Granted);
    }

    #[test]
    fn only_the_owner_releases_and_leaving_returns_what_it_still_owns() {
        let mut queues = ExclusiveQueues::default();
        queues.claim("kept", A, args(), Declared::Confirmed);
        queues.claim("deleted", A, args(), Declared::Confirmed);
        queues.claim("theirs", B, args(), Declared::Confirmed);
        queues.release("theirs", A);
        queues.release("deleted", A);
        assert_eq!(queues.access("deleted", B), Access::Granted);
        let left: Vec<String> = queues.leave(A).into_iter().map(|(n, _)| n).collect();
        assert_eq!(left, ["kept"]);
        assert_eq!(queues.access("kept", B), Access::Granted);
        assert_eq!(queues.access("theirs", A), Access::Locked);
    }

    #[test]
    fn a_refused_declare_withdraws_only_the_claim_it_made() {
        let mut queues = ExclusiveQueues::default();
        queues.claim("refused", A, args(), Declared::Awaiting);
        queues.withdraw("refused", A);
        assert_eq!(queues.access("refused", B), Access::Granted);
        queues.claim("made", A, args(), Declared::Awaiting);
        queues.claim("made", A, args(), Declared::Confirmed);
        queues.claim("made", A, args(), Declared::Awaiting);
        queues.withdraw("made", A);
        assert_eq!(queues.access("made", B), Access::Locked);
        assert!(queues.is_confirmed("made"));
        queues.claim("silent", A, args(), Declared::NoWait);
        queues.withdraw("silent", A);
        assert_eq!(queues.access("silent", B), Access::Locked);
        assert!(!queues.is_confirmed("silent"));
        queues.forget("silent");
        assert_eq!(queues.access("silent", B), Access::Granted);
    }

    /// What the clients of one upstream connection do with a few names,
    /// and what the broker answers.
    #[derive(Debug, Clone)]
    enum Op {
        /// An exclusive declare goes upstream: waiting, no-wait, or (a
        /// server-named queue) claimed at its Declare-Ok.
        Declare(ClientId, u8, Declared),
        /// Its Declare-Ok comes back.
        DeclareOk(ClientId, u8),
        /// The broker closes the channel before the Declare-Ok.
        Refused(ClientId, u8),
        Use(ClientId, u8),
        Delete(ClientId, u8),
        /// The queue expires; the broker tells whoever asks.
        Expire(u8),
        Leave(ClientId),
    }

    fn op() -> impl Strategy<Value = Op> {
        let client = 1..4u64;
        let name = 0..4u8;
        let declared = prop_oneof![
            Just(Declared::Awaiting),
            Just(Declared::NoWait),
            Just(Declared::Confirmed)
        ];
        prop_oneof![
            (client.clone(), name.clone(), declared).prop_map(|(c, n, d)| Op::Declare(c, n, d)),
            (client.clone(), name.clone()).prop_map(|(c, n)| Op::DeclareOk(c, n)),
            (client.clone(), name.clone()).prop_map(|(c, n)| Op::Refused(c, n)),
            (client.clone(), name.clone()).prop_map(|(c, n)| Op::Use(c, n)),
            (client.clone(), name.clone()).prop_map(|(c, n)| Op::Delete(c, n)),
            name.prop_map(Op::Expire),
            client.prop_map(Op::Leave),
        ]
    }

    proptest! {
        /// Against RabbitMQ's rule with a connection per client: a name
        /// belongs to the first client that declares it exclusive until that
        /// client deletes it, the broker refuses the declare, the queue
        /// expires, or the client leaves; only the owner may use it; leaving
        /// hands back exactly the names the client still owns. What warren
        /// cannot know it keeps (a no-wait declare is never refused, an
        /// unconfirmed queue never seen to expire): it never lets a client at
        /// a name another client may still hold.
        #[test]
        fn the_table_follows_rabbitmqs_rule_for_any_interleaving(ops in proptest::collection::vec(op(), 1..96)) {
            let mut queues = ExclusiveQueues::default();
            let mut owner: HashMap<u8, (ClientId, Declared)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Declare(c, n, declared) => {
                        let expected = match owner.get(&n) {
                            Some((o, _)) if *o != c => Access::Locked,
                            _ => Access::Granted,
                        };
                        prop_assert_eq!(queues.claim(&n.to_string(), c, args(), declared), expected);
                        let entry = owner.entry(n).or_insert((c, declared));
                        if entry.0 == c && entry.1 != Declared::Confirmed && declared != Declared::Awaiting {
                            entry.1 = declared;
                        }
                    }
                    Op::DeclareOk(c, n) => {
                        if owner.get(&n).is_some_and(|(o, _)| *o == c) {
                            queues.claim(&n.to_string(), c, args(), Declared::Confirmed);
                            owner.insert(n, (c, Declared::Confirmed));
                        }
                    }
                    Op::Refused(c, n) => {
                        queues.withdraw(&n.to_string(), c);
                        if owner.get(&n) == Some(&(c, Declared::Awaiting)) {
                            owner.remove(&n);
                        }
                    }
                    Op::Use(c, n) => {
                        let locked = owner.get(&n).is_some_and(|(o, _)| *o != c);
                        prop_assert_eq!(queues.access(&n.to_string(), c) == Access::Locked, locked);
                    }
                    Op::Delete(c, n) => {
                        if owner.get(&n).is_some_and(|(o, _)| *o == c) {
                            owner.remove(&n);
                        }
                        queues.release(&n.to_string(), c);
                    }
                    Op::Expire(n) => {
                        let confirmed = owner.get(&n).is_some_and(|(_, d)| *d == Declared::Confirmed);
                        prop_assert_eq!(queues.is_confirmed(&n.to_string()), confirmed);
                        if confirmed {
                            queues.forget(&n.to_string());
                            owner.remove(&n);
                        }
                    }
                    Op::Leave(c) => {
                        let left: HashSet<String> = queues.leave(c).into_iter().map(|(n, _)| n).collect();
                        let owned: HashSet<String> = owner.iter().filter(|(_, (o, _))| *o == c).map(|(n, _)| n.to_string()).collect();
                        prop_assert_eq!(left, owned);
                        owner.retain(|_, (o, _)| *o != c);
                    }
                }
            }
        }
    }
}
