//! Quotas per user and per vhost (`[[quota]]`): how many clients, channels
//! and upstream connections each may hold, and how fast it may publish.
//!
//! Usage is counted for every user and vhost, quota or not, so a quota
//! added by a reload counts the clients already connected. A client holds a
//! [`QuotaPlace`] for its session: its share of the counts, given back on
//! drop. Counts are refused with RabbitMQ's code and words for the same
//! limit (530); a rate is never refused: the client is not read until it is
//! back within it ([`bucket`]). A quota in observe mode only logs and counts.

mod bucket;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bucket::Bucket;

use crate::config::{Quota, Scope};
use crate::logging::RateLimit;
use crate::protocol::method::Close;
use crate::protocol::reply::{self, NOT_ALLOWED};
use crate::untrusted::cut;

/// What one user, or one vhost, holds now.
#[derive(Default)]
struct Usage {
    clients: AtomicUsize,
    channels: AtomicUsize,
    rates: Mutex<Rates>,
    /// Time its clients were not read for a rate, microseconds.
    throttled_micros: AtomicU64,
}

/// A user's or vhost's rate buckets, one per meter: clients keep the rate
/// they came with, so after a reload that changes it old and new clients
/// are each held to their own instead of resetting one bucket in turn.
#[derive(Default)]
struct Rates {
    buckets: Vec<(Meter, Bucket)>,
}

/// What a bucket measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meter {
    bytes: bool,
    per_second: u64,
    /// Observe mode: the bucket measures, holds nothing back, and so
    /// carries no debt.
    observe: bool,
}

impl Rates {
    fn take(&mut self, meter: Meter, amount: u64, now: Instant) -> Option<Duration> {
        let index = match self.buckets.iter().position(|(m, _)| *m == meter) {
            Some(index) => index,
            None => {
                self.buckets
                    .push((meter, Bucket::new(meter.per_second, now)));
                self.buckets.len() - 1
            }
        };
        let bucket = &mut self.buckets[index].1;
        let wait = bucket.take(amount, now);
        if meter.observe {
            bucket.forgive();
        }
        wait
    }

    fn rested(&mut self, now: Instant) -> bool {
        self.buckets.iter_mut().all(|(_, b)| b.is_rested(now))
    }
}

/// A limit that was reached, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Exceeded {
    pub quota: String,
    pub limit: &'static str,
    pub enforced: bool,
}

/// Every quota, and the usage it is checked against.
pub struct Quotas {
    rules: RwLock<Arc<Vec<Quota>>>,
    usage: Mutex<HashMap<(Scope, String), Arc<Usage>>>,
    exceeded: Mutex<BTreeMap<Exceeded, u64>>,
}

/// One user's or vhost's usage under a quota, as the API shows it.
#[derive(Debug, Clone)]
pub struct QuotaUsage {
    pub quota: Quota,
    pub key: String,
    pub clients: usize,
    pub channels: usize,
    pub throttled_seconds: f64,
}

impl Quotas {
    pub fn new(rules: Vec<Quota>) -> Arc<Self> {
        Arc::new(Quotas {
            rules: RwLock::new(Arc::new(rules)),
            usage: Mutex::default(),
            exceeded: Mutex::default(),
        })
    }

    /// A reload: counts apply at once; rates to clients that connect from
    /// then on.
    pub fn set_rules(&self, rules: Vec<Quota>) {
        *self.rules.write().expect("quota rules") = Arc::new(rules);
    }

    pub fn rules(&self) -> Arc<Vec<Quota>> {
        self.rules.read().expect("quota rules").clone()
    }

    /// The quota of `scope` that covers `key`, if any (the first listed).
    fn rule(&self, scope: Scope, key: &str) -> Option<Quota> {
        self.rules()
            .iter()
            .find(|q| q.scope == scope && q.covers(key))
            .cloned()
    }

    fn usage_of(&self, scope: Scope, key: &str) -> Arc<Usage> {
        let mut usage = self.usage.lock().expect("quota usage");
        usage.entry((scope, key.to_string())).or_default().clone()
    }

    /// Counts a limit reached; logs it at most once a second.
    fn reached(&self, quota: &Quota, limit: &'static str, key: &str) {
        let enforced = !quota.observe;
        *self
            .exceeded
            .lock()
            .expect("quota counts")
            .entry(Exceeded {
                quota: quota.name.clone(),
                limit,
                enforced,
            })
            .or_default() += 1;
        static REACHED: RateLimit = RateLimit::new(Duration::from_secs(1));
        if let Some(suppressed) = REACHED.check() {
            let scope = quota.scope.as_str();
            match enforced {
                true => {
                    tracing::warn!(quota = %quota.name, limit, scope, key = cut(key), suppressed, "quota reached")
                }
                false => {
                    tracing::warn!(quota = %quota.name, limit, scope, key = cut(key), suppressed, "quota reached (observe only: not enforced)")
                }
            }
        }
    }

    /// Takes a client's place for its user and vhost, unless a quota's
    /// `max_clients` is reached.
    pub fn admit(self: &Arc<Self>, user: &str, vhost: &str) -> Result<QuotaPlace, Close> {
        let mut place = QuotaPlace {
            quotas: self.clone(),
            held: Vec::with_capacity(2),
            counted_channels: 0,
        };
        for (scope, key) in [(Scope::User, user), (Scope::Vhost, vhost)] {
            let usage = self.usage_of(scope, key);
            let rule = self.rule(scope, key);
            let limit = rule.as_ref().and_then(|q| q.max_clients);
            if !try_add(&usage.clients, limit) {
                let quota = rule.as_ref().expect("a limit has a rule");
                self.reached(quota, "clients", key);
                if !quota.observe {
                    let n = quota.max_clients.unwrap_or_default();
                    return Err(refusal(quota, match scope {
                        Scope::User => format!("connection refused for user '{user}': user connection limit ({n}) is reached"),
                        Scope::Vhost => format!("access to vhost '{vhost}' refused for user '{user}': connection limit ({n}) is reached"),
                    }));
                }
                usage.clients.fetch_add(1, Ordering::Relaxed);
            }
            let rate = rule.filter(Quota::limits_rate);
            place.held.push(Held {
                scope,
                key: key.to_string(),
                usage,
                rate,
            });
        }
        Ok(place)
    }

    /// Whether a pool of `user` on `vhost` may open one more upstream
    /// connection, given how many each has (`live`).
    pub fn upstream_room(
        &self,
        user: &str,
        vhost: &str,
        live: impl Fn(Scope, &str) -> usize,
    ) -> Result<(), Close> {
        for (scope, key) in [(Scope::User, user), (Scope::Vhost, vhost)] {
            let Some(quota) = self.rule(scope, key) else {
                continue;
            };
            let Some(n) = quota.max_upstream_connections else {
                continue;
            };
            if live(scope, key) >= n as usize {
                self.reached(&quota, "upstream_connections", key);
                if !quota.observe {
                    return Err(refusal(
                        &quota,
                        format!(
                            "{} '{key}' has all its {n} upstream connections in use",
                            scope.as_str()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Forgets users and vhosts that hold nothing and owe no rate.
    pub fn prune(&self) {
        let now = Instant::now();
        self.usage.lock().expect("quota usage").retain(|_, usage| {
            // Held by a client being admitted or leaving: kept, so its
            // counts never go to an entry the map no longer has.
            Arc::strong_count(usage) > 1
                || usage.clients.load(Ordering::Relaxed) > 0
                || usage.channels.load(Ordering::Relaxed) > 0
                || !usage.rates.lock().expect("quota rates").rested(now)
        });
    }

    /// Usage of every user and vhost a quota covers.
    pub fn report(&self) -> Vec<QuotaUsage> {
        let usage: Vec<((Scope, String), Arc<Usage>)> = self
            .usage
            .lock()
            .expect("quota usage")
            .iter()
            .map(|(k, u)| (k.clone(), u.clone()))
            .collect();
        let mut report: Vec<QuotaUsage> = usage
            .into_iter()
            .filter_map(|((scope, key), usage)| {
                Some(QuotaUsage {
                    quota: self.rule(scope, &key)?,
                    clients: usage.clients.load(Ordering::Relaxed),
                    channels: usage.channels.load(Ordering::Relaxed),
                    throttled_seconds: usage.throttled_micros.load(Ordering::Relaxed) as f64 / 1e6,
                    key,
                })
            })
            .collect();
        report.sort_by(|a, b| (&a.quota.name, &a.key).cmp(&(&b.quota.name, &b.key)));
        report
    }

    /// How often each limit was reached, by quota.
    pub fn exceeded(&self) -> BTreeMap<Exceeded, u64> {
        self.exceeded.lock().expect("quota counts").clone()
    }
}

/// Adds one to `count` unless it is at `limit`.
fn try_add(count: &AtomicUsize, limit: Option<u32>) -> bool {
    count
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            limit.is_none_or(|l| n < l as usize).then_some(n + 1)
        })
        .is_ok()
}

/// RabbitMQ's words for the same limit, and the quota that set it.
fn refusal(quota: &Quota, text: String) -> Close {
    reply::close(
        NOT_ALLOWED,
        format!("{text} (warren quota '{}')", quota.name),
    )
}

/// A client's place under its user's and its vhost's quotas.
pub struct QuotaPlace {
    quotas: Arc<Quotas>,
    held: Vec<Held>,
    /// Channels this client added to the counts.
    counted_channels: usize,
}

struct Held {
    scope: Scope,
    key: String,
    usage: Arc<Usage>,
    /// The quota that limits its rate, as it was when the client came.
    rate: Option<Quota>,
}

impl QuotaPlace {
    /// Counts one more channel, unless a quota's `max_channels` is reached
    /// (RabbitMQ closes the connection for its own channel limit, 530).
    pub fn open_channel(&mut self) -> Result<(), Close> {
        for (index, held) in self.held.iter().enumerate() {
            let rule = self.quotas.rule(held.scope, &held.key);
            let limit = rule.as_ref().and_then(|q| q.max_channels);
            if try_add(&held.usage.channels, limit) {
                continue;
            }
            let quota = rule.expect("a limit has a rule");
            self.quotas.reached(&quota, "channels", &held.key);
            if quota.observe {
                held.usage.channels.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            for counted in &self.held[..index] {
                counted.usage.channels.fetch_sub(1, Ordering::Relaxed);
            }
            let (n, key) = (quota.max_channels.unwrap_or_default(), &held.key);
            return Err(refusal(&quota, match held.scope {
                Scope::User => format!("number of channels opened for user '{key}' has reached the maximum allowed user limit of ({n})"),
                Scope::Vhost => format!("number of channels opened in vhost '{key}' has reached the maximum allowed limit of ({n})"),
            }));
        }
        self.counted_channels += 1;
        Ok(())
    }

    /// The client has `open` channels now (closes are counted here).
    pub fn set_channels(&mut self, open: usize) {
        if open < self.counted_channels {
            let closed = self.counted_channels - open;
            for held in &self.held {
                held.usage.channels.fetch_sub(closed, Ordering::Relaxed);
            }
            self.counted_channels = open;
        }
    }

    /// Whether a rate quota applies: if not, publishes are not charged.
    pub fn limits_rate(&self) -> bool {
        self.held.iter().any(|h| h.rate.is_some())
    }

    /// Charges a publish (`messages`, `bytes` of body) to the rate quotas;
    /// returns how long the client must not be read, if it went over.
    pub fn charge(&self, messages: u64, bytes: u64) -> Option<Duration> {
        let now = Instant::now();
        let mut longest: Option<Duration> = None;
        for held in &self.held {
            let Some(quota) = &held.rate else { continue };
            let wait = {
                let mut rates = held.usage.rates.lock().expect("quota rates");
                let mut charge = |bytes: bool, rate: Option<u64>, amount: u64| {
                    let per_second = rate.filter(|_| amount > 0)?;
                    let meter = Meter {
                        bytes,
                        per_second,
                        observe: quota.observe,
                    };
                    rates.take(meter, amount, now)
                };
                let by_count = charge(false, quota.max_publish_rate.map(u64::from), messages);
                let by_size = charge(true, quota.max_publish_bytes_rate, bytes);
                by_count.max(by_size)
            };
            let Some(wait) = wait else { continue };
            self.quotas.reached(quota, "publish_rate", &held.key);
            if !quota.observe {
                held.usage
                    .throttled_micros
                    .fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
                longest = longest.max(Some(wait));
            }
        }
        longest
    }

    /// The quota that is slowing the client down, for its Connection.Blocked.
    pub fn rate_quota_name(&self) -> Option<&str> {
        self.held
            .iter()
            .find_map(|h| h.rate.as_ref().map(|q| q.name.as_str()))
    }
}

impl QuotaPlace {
    /// Gives back the client's place and channels (it is leaving); nothing
    /// is charged to it after this.
    pub fn leave(&mut self) {
        for held in self.held.drain(..) {
            held.usage.clients.fetch_sub(1, Ordering::Relaxed);
            held.usage
                .channels
                .fetch_sub(self.counted_channels, Ordering::Relaxed);
        }
        self.counted_channels = 0;
    }
}

impl Drop for QuotaPlace {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pattern;

    fn quota(name: &str, scope: Scope, pattern: &str) -> Quota {
        Quota {
            name: name.into(),
            scope,
            patterns: vec![Pattern::new(pattern)],
            max_clients: None,
            max_channels: None,
            max_upstream_connections: None,
            max_publish_rate: None,
            max_publish_bytes_rate: None,
            observe: false,
        }
    }

    #[test]
    fn clients_over_a_user_quota_are_refused_with_rabbitmqs_words() {
        let quotas = Quotas::new(vec![Quota {
            max_clients: Some(2),
            ..quota("apps", Scope::User, "app-*")
        }]);
        let first = quotas.admit("app-1", "/").unwrap();
        let _second = quotas.admit("app-1", "/").unwrap();
        let refused = quotas.admit("app-1", "/").err().unwrap();
        assert_eq!(refused.code, 530);
        assert!(
            refused.text.starts_with("NOT_ALLOWED - connection refused for user 'app-1': user connection limit (2) is reached")
                && refused.text.contains("warren quota 'apps'"),
            "{}",
            refused.text
        );
        // Another user, and a user no quota covers, are not counted against it.
        assert!(quotas.admit("app-2", "/").is_ok());
        assert!(quotas.admit("ops", "/").is_ok());
        drop(first);
        assert!(quotas.admit("app-1", "/").is_ok());
    }

    #[test]
    fn a_refused_channel_takes_nothing_and_closes_give_back() {
        let quotas = Quotas::new(vec![Quota {
            max_channels: Some(2),
            ..quota("v", Scope::Vhost, "*")
        }]);
        let mut a = quotas.admit("u", "/x").unwrap();
        let mut b = quotas.admit("u", "/x").unwrap();
        a.open_channel().unwrap();
        b.open_channel().unwrap();
        let refused = a.open_channel().err().unwrap();
        assert!(refused.text.contains("vhost '/x'"), "{}", refused.text);
        b.set_channels(0);
        a.open_channel().unwrap();
        drop(a);
        let mut c = quotas.admit("u", "/x").unwrap();
        c.open_channel().unwrap();
        c.open_channel().unwrap();
    }

    #[test]
    fn observe_mode_counts_and_lets_through() {
        let quotas = Quotas::new(vec![Quota {
            max_clients: Some(1),
            observe: true,
            ..quota("watch", Scope::User, "*")
        }]);
        let _a = quotas.admit("u", "/").unwrap();
        let _b = quotas.admit("u", "/").unwrap();
        let exceeded = quotas.exceeded();
        let key = Exceeded {
            quota: "watch".into(),
            limit: "clients",
            enforced: false,
        };
        assert_eq!(exceeded.get(&key), Some(&1));
        assert_eq!(quotas.report()[0].clients, 2);
    }

    #[test]
    fn a_rate_is_charged_to_the_user_across_its_clients() {
        let quotas = Quotas::new(vec![Quota {
            max_publish_rate: Some(100),
            ..quota("slow", Scope::User, "*")
        }]);
        let a = quotas.admit("u", "/").unwrap();
        let b = quotas.admit("u", "/").unwrap();
        assert!(a.limits_rate() && a.rate_quota_name() == Some("slow"));
        // The burst (a tenth of a second's worth) is shared.
        let waits = (0..11)
            .filter_map(|i| [&a, &b][i % 2].charge(1, 16))
            .count();
        assert_eq!(waits, 1);
        let unlimited = Quotas::new(Vec::new()).admit("u", "/").unwrap();
        assert!(!unlimited.limits_rate());
    }

    #[test]
    fn observing_a_rate_holds_nothing_back_and_owes_nothing_later() {
        let observed = Quotas::new(vec![Quota {
            max_publish_rate: Some(10),
            observe: true,
            ..quota("watch", Scope::User, "*")
        }]);
        let client = observed.admit("u", "/").unwrap();
        assert!((0..1000).all(|_| client.charge(1, 0).is_none()));
        let over = observed.exceeded().values().sum::<u64>();
        assert!(over >= 990, "{over}");
        // Enforced from now on: no debt left from the observed burst.
        observed.set_rules(vec![Quota {
            max_publish_rate: Some(10),
            ..quota("watch", Scope::User, "*")
        }]);
        let enforced = observed.admit("u", "/").unwrap();
        assert_eq!(enforced.charge(1, 0), None);
    }

    #[test]
    fn upstream_connections_are_limited_per_vhost() {
        let quotas = Quotas::new(vec![Quota {
            max_upstream_connections: Some(1),
            ..quota("v", Scope::Vhost, "/x")
        }]);
        assert!(quotas.upstream_room("u", "/x", |_, _| 0).is_ok());
        assert!(quotas
            .upstream_room("u", "/x", |s, _| usize::from(s == Scope::Vhost))
            .is_err());
        assert!(quotas.upstream_room("u", "/y", |_, _| 5).is_ok());
    }
}
