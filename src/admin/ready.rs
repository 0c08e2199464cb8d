//! Whether a broker node answers, for `/readyz` when no upstream connection
//! is open to prove it.
//!
//! The probe sends the AMQP protocol header and waits for Connection.Start:
//! a port that accepts TCP but is not a working broker (still booting,
//! another service) is not ready. It goes no further, so it needs no
//! credentials. Results are shared for a second, so a burst of probes (or a
//! misconfigured scraper) costs the broker one connection.

use crate::protocol::ids;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::protocol::frame::{FrameReader, PROTOCOL_HEADER};
use crate::upstream::Nodes;

/// How long one probe result stands.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// A node that takes longer than this to say hello is not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connection.Start comes before any frame_max is agreed; its server
/// properties are well under this.
const START_FRAME_MAX: u32 = 1 << 20;

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
                match tokio::time::timeout(PROBE_TIMEOUT, says_hello(&nodes, node)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(why)) => Err(format!("broker {addr}: {why}")),
                    Err(_) => Err(format!(
                        "broker {addr} did not answer within {PROBE_TIMEOUT:?}"
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

async fn says_hello(nodes: &Nodes, node: usize) -> Result<(), String> {
    let (read, mut write) = nodes.dial(node).await?;
    write
        .write_all(PROTOCOL_HEADER)
        .await
        .map_err(|e| e.to_string())?;
    let start = FrameReader::new(read, START_FRAME_MAX)
        .read_frame()
        .await
        .map_err(|e| format!("no connection.start: {e}"))?;
    if start.method_id() != Some(ids::CONNECTION_START) {
        return Err("it does not speak AMQP 0-9-1".into());
    }
    Ok(())
}
