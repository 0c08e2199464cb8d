//! Whether a broker node answers, for `/readyz` when no upstream connection
//! is open to prove it.
//!
//! The probe sends the AMQP protocol header and waits for Connection.Start:
//! a port that accepts TCP but is not a working broker (still booting,
//! another service) is not ready. It goes no further, so it needs no
//! credentials. Results are shared for a second, so a burst of probes (or a
//! misconfigured scraper) costs the broker one connection.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::config::UpstreamAddr;
use crate::frame::{FrameReader, PROTOCOL_HEADER};
use crate::method;

/// How long one probe result stands.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// A node that takes longer than this to say hello is not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connection.Start comes before any frame_max is agreed; its server
/// properties are well under this.
const START_FRAME_MAX: u32 = 1 << 20;

pub struct Readiness {
    node: UpstreamAddr,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    pub fn new(node: UpstreamAddr) -> Self {
        Readiness {
            node,
            last: Mutex::new(None),
        }
    }

    pub async fn probe(&self) -> Result<(), String> {
        // Held across the probe: concurrent callers wait for its result.
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return result.clone();
            }
        }
        let result = match tokio::time::timeout(PROBE_TIMEOUT, says_hello(&self.node)).await {
            Ok(result) => result.map_err(|why| format!("broker {}: {why}", self.node)),
            Err(_) => Err(format!(
                "broker {} did not answer within {PROBE_TIMEOUT:?}",
                self.node
            )),
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }
}

async fn says_hello(node: &UpstreamAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect((node.host.as_str(), node.port))
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(PROTOCOL_HEADER)
        .await
        .map_err(|e| e.to_string())?;
    let start = FrameReader::new(stream, START_FRAME_MAX)
        .read_frame()
        .await
        .map_err(|e| format!("no connection.start: {e}"))?;
    if start.method_id() != Some(method::CONNECTION_START) {
        return Err("it does not speak AMQP 0-9-1".into());
    }
    Ok(())
}
