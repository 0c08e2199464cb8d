//! Memory warren holds for clients, against a budget all clients share:
//! partly received publishes (`--max-held-publish-mib`, see
//! [`crate::content`]) and large messages queued for slow consumers
//! (`--max-held-delivery-mib`, see [`crate::link`]). One client cannot
//! exhaust warren's memory by itself, and many together cannot either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes held for all clients together, and their bound.
#[derive(Debug)]
pub struct HeldBytes {
    used: AtomicU64,
    limit: AtomicU64,
}

impl HeldBytes {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(HeldBytes {
            used: AtomicU64::new(0),
            limit: AtomicU64::new(limit),
        })
    }

    /// A reload: applies to the next bytes taken.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes counted now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget in bytes.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Counts `bytes` if they fit under the limit; whether they did.
    pub fn take(&self, bytes: u64) -> bool {
        let total = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total > self.limit() {
            self.give(bytes);
            return false;
        }
        true
    }

    /// Counts `bytes` whether or not they fit: for what is already held
    /// when it is counted (the caller stops taking more once
    /// [`HeldBytes::is_full`]).
    pub fn charge(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn is_full(&self) -> bool {
        self.used() >= self.limit()
    }

    pub fn give(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// `bytes` taken for as long as the share lives, if they fit.
    pub fn share(self: &Arc<Self>, bytes: u64) -> Option<HeldShare> {
        self.take(bytes).then(|| HeldShare {
            budget: self.clone(),
            bytes,
        })
    }
}

/// Bytes taken from a [`HeldBytes`], given back when dropped.
#[derive(Debug)]
pub struct HeldShare {
    budget: Arc<HeldBytes>,
    bytes: u64,
}

impl Drop for HeldShare {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// Bytes charged to two budgets at once, whatever they hold: the shared one
/// and one client's share. Given back when dropped.
#[derive(Debug)]
pub struct Charges {
    all: Arc<HeldBytes>,
    client: Arc<HeldBytes>,
    bytes: u64,
}

impl Charges {
    pub fn new(all: Arc<HeldBytes>, client: Arc<HeldBytes>) -> Self {
        Charges {
            all,
            client,
            bytes: 0,
        }
    }

    pub fn add(&mut self, bytes: usize) {
        let bytes = bytes as u64;
        self.all.charge(bytes);
        self.client.charge(bytes);
        self.bytes += bytes;
    }

    pub fn remove(&mut self, bytes: usize) {
        let bytes = (bytes as u64).min(self.bytes);
        self.all.give(bytes);
        self.client.give(bytes);
        self.bytes -= bytes;
    }
}

impl Drop for Charges {
    fn drop(&mut self) {
        self.remove(self.bytes as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_fit_under_the_limit_and_come_back_when_dropped() {
        let budget = HeldBytes::new(100);
        let first = budget.share(60).expect("fits");
        assert!(budget.share(41).is_none());
        assert_eq!(budget.used(), 60);
        let second = budget.share(40).expect("fits exactly");
        drop(first);
        assert_eq!(budget.used(), 40);
        budget.set_limit(30);
        assert!(budget.share(1).is_none());
        drop(second);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn charges_count_in_both_budgets_until_dropped() {
        let (all, client) = (HeldBytes::new(100), HeldBytes::new(10));
        let mut charges = Charges::new(all.clone(), client.clone());
        charges.add(30);
        assert!(client.is_full() && !all.is_full(), "over the client's share");
        charges.remove(25);
        assert_eq!((all.used(), client.used()), (5, 5));
        drop(charges);
        assert_eq!((all.used(), client.used()), (0, 0));
    }
}
