//! Whether a broker node answers, for `/readyz` when no upstream connection
//! is open to prove it.
//!
//! The probe asks each node for its Connection.Start ([`hello`]), which
//! needs no credentials. Results are shared for a second, so a burst of
//! probes (or a misconfigured scraper) costs the broker one connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::upstream::{hello, Nodes, HELLO_TIMEOUT};

/// How long one probe result stands.
const FRESH_FOR: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// Ready when any of `nodes` says hello (warren fails over to it).
    /// All are asked at once, so a silent node does not hold up the answer.
    pub async fn probe(&self, nodes: Arc<Nodes>) -> Result<(), String> {
        // Held across the probe: concurrent callers wait for its result.
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return result.clone();
            }
        }
        let mut probes = JoinSet::new();
        for node in 0..nodes.addrs().len() {
            let nodes = nodes.clone();
            probes.spawn(async move {
                let addr = &nodes.addrs()[node];
                match tokio::time::timeout(HELLO_TIMEOUT, hello(&nodes, node)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(why)) => Err(format!("broker {addr}: {why}")),
                    Err(_) => Err(format!(
                        "broker {addr} did not answer within {HELLO_TIMEOUT:?}"
                    )),
                }
            });
        }
        let mut failures = Vec::new();
        let mut answered = false;
        while let Some(answer) = probes.join_next().await {
            match answer {
                Ok(Ok(())) => {
                    answered = true;
                    break;
                }
                Ok(Err(why)) => failures.push(why),
                Err(e) => failures.push(format!("probe failed: {e}")),
            }
        }
        let result = if answered {
            Ok(())
        } else {
            Err(failures.join("; "))
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }
}
