//! Vhosts an operator paused (`warren ctl pause`): their clients' publishes
//! and channel opens wait until `resume`, with no error. Everything else
//! (deliveries, acks already read, heartbeats from warren) goes on.
//!
//! Sessions ask for each Basic.Publish and Channel.Open whether their
//! vhost is paused; with nothing paused that is one relaxed load.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// What is paused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paused {
    /// Every vhost, including ones paused or not by name.
    pub all: bool,
    pub vhosts: BTreeSet<String>,
}

impl Paused {
    pub fn holds(&self, vhost: &str) -> bool {
        self.all || self.vhosts.contains(vhost)
    }

    fn is_empty(&self) -> bool {
        !self.all && self.vhosts.is_empty()
    }
}

#[derive(Debug)]
pub struct Pauses {
    state: watch::Sender<Paused>,
    /// Something is paused: the fast answer for every publish.
    any: AtomicBool,
}

impl Default for Pauses {
    fn default() -> Self {
        Pauses {
            state: watch::Sender::new(Paused::default()),
            any: AtomicBool::new(false),
        }
    }
}

impl Pauses {
    /// Pauses `vhost`, or every vhost for `None`. Whether it changed anything.
    pub fn pause(&self, vhost: Option<&str>) -> bool {
        self.change(|paused| match vhost {
            None => !std::mem::replace(&mut paused.all, true),
            Some(vhost) => paused.vhosts.insert(vhost.to_string()),
        })
    }

    /// Resumes `vhost`, or everything for `None` (every vhost paused by
    /// name too). Whether it changed anything.
    pub fn resume(&self, vhost: Option<&str>) -> bool {
        self.change(|paused| match vhost {
            None => {
                let was = !paused.is_empty();
                *paused = Paused::default();
                was
            }
            Some(vhost) => paused.vhosts.remove(vhost),
        })
    }

    fn change(&self, edit: impl FnOnce(&mut Paused) -> bool) -> bool {
        self.state.send_if_modified(|paused| {
            let changed = edit(paused);
            self.any.store(!paused.is_empty(), Ordering::Relaxed);
            changed
        })
    }

    pub fn holds(&self, vhost: &str) -> bool {
        self.any.load(Ordering::Relaxed) && self.state.borrow().holds(vhost)
    }

    pub fn current(&self) -> Paused {
        self.state.borrow().clone()
    }

    /// Waits until `vhost` is not paused.
    pub async fn resumed(&self, vhost: &str) {
        let mut changes = self.state.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = changes.wait_for(|paused| !paused.holds(vhost)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn by_name_and_all() {
        let pauses = Pauses::default();
        assert!(!pauses.holds("/"));
        assert!(pauses.pause(Some("orders")));
        assert!(!pauses.pause(Some("orders")));
        assert!(pauses.holds("orders") && !pauses.holds("/"));
        assert!(pauses.pause(None));
        assert!(pauses.holds("/"));
        // Resuming one vhost by name does not undo a pause of all.
        assert!(pauses.resume(Some("orders")));
        assert!(pauses.holds("orders"));
        assert!(pauses.resume(None));
        assert!(!pauses.holds("orders") && !pauses.resume(None));
        assert_eq!(pauses.current(), Paused::default());
    }

    #[tokio::test]
    async fn a_waiter_goes_on_when_its_vhost_resumes_not_on_other_changes() {
        let pauses = Arc::new(Pauses::default());
        pauses.pause(Some("a"));
        pauses.pause(Some("b"));
        let waiter = tokio::spawn({
            let pauses = pauses.clone();
            async move { pauses.resumed("a").await }
        });
        // The waiter subscribes on its first poll: let it, before anything changes.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        pauses.resume(Some("b"));
        pauses.pause(Some("c"));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "woken by a change to other vhosts");
        pauses.resume(Some("a"));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("resumed")
            .unwrap();
    }
}
