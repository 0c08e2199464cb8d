//! A node's Connection.Start, without logging in. It proves a broker is
//! there (readiness: a port that accepts TCP but is not a working broker is
//! not ready; a banned node is taken back once it answers) and carries the
//! broker's server properties, which clients are shown as their own
//! broker's (see `client::server_properties`). It needs no credentials, so
//! warren learns them at start, before any client logs in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::Nodes;
use crate::protocol::frame::{FrameReader, PROTOCOL_HEADER};
use crate::protocol::ids;
use crate::protocol::method::Start;

/// Connection.Start comes before any frame_max is agreed; its server
/// properties are well under this.
const START_FRAME_MAX: u32 = 1 << 20;
/// A node that takes longer than this to say hello is taken to be down.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Between rounds of asking every node, while none has answered.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often banned nodes are looked at (each is probed once its ban time
/// is over).
const PROBE_TICK: Duration = Duration::from_secs(1);

/// Asks `node` for its Connection.Start and records its server properties.
pub async fn hello(nodes: &Nodes, node: usize) -> Result<(), String> {
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
    let start = Start::decode(start.method_args())
        .map_err(|e| format!("unreadable connection.start: {e}"))?;
    nodes.heard_from(node, start.server_properties);
    Ok(())
}

/// Until some node has told its server properties (here, or by a login),
/// asks the nodes `current` returns (the latest after a reload) in turn.
pub async fn learn_broker_properties(current: impl Fn() -> Arc<Nodes>) {
    let mut wait = RETRY_FIRST;
    loop {
        let nodes = current();
        if nodes.broker_properties().is_some() {
            return;
        }
        for node in 0..nodes.addrs().len() {
            if let Ok(Ok(())) = tokio::time::timeout(HELLO_TIMEOUT, hello(&nodes, node)).await {
                return;
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// Probes the banned nodes of every route `current` returns, each once its
/// ban time is over: one that answers is taken back, one that does not is
/// banned again. Clients are never the ones to find out.
pub async fn probe_banned(current: impl Fn() -> Vec<Arc<Nodes>>) {
    let mut tick = tokio::time::interval(PROBE_TICK);
    loop {
        tick.tick().await;
        for nodes in current() {
            probe_due(&nodes).await;
        }
    }
}

async fn probe_due(nodes: &Nodes) {
    for node in nodes.due_for_probe(Instant::now()) {
        let addr = &nodes.addrs()[node];
        match tokio::time::timeout(HELLO_TIMEOUT, hello(nodes, node)).await {
            Ok(Ok(())) => {
                nodes.succeeded(node);
                tracing::info!(node = %addr, "broker node answers again; it takes clients");
            }
            Ok(Err(why)) => {
                let ban = nodes.failed(node, Instant::now());
                tracing::debug!(node = %addr, error = why, ban = ?ban, "banned broker node still fails");
            }
            Err(_) => {
                let ban = nodes.failed(node, Instant::now());
                tracing::debug!(node = %addr, ban = ?ban, "banned broker node still silent");
            }
        }
    }
}
