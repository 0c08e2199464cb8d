//! One run of each scenario against one address (the broker, or warren in
//! front of it). Every loop is bounded by a deadline or a count.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::{watch, Semaphore};

use crate::amqp::{self, FrameReader};
use crate::client::{self, Connection, Login, Result};

/// Unacknowledged publishes a confirming publisher allows itself.
const CONFIRM_WINDOW: usize = 1024;
/// Queues used for publishing keep at most this many messages (the oldest
/// are dropped), so long runs hold no memory in the broker.
const QUEUE_BOUND: i64 = 1000;
/// Consumer prefetch and how many acks are written at once.
const PREFETCH: u16 = 200;
const ACK_BATCH: usize = 32;
/// Parallel connects while opening idle clients.
const CONNECT_PARALLELISM: usize = 64;
/// The longest any single wait for the broker may take.
const STEP_LIMIT: Duration = Duration::from_secs(30);

impl Login {
    /// Connects and logs in, within the step limit.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Connection> {
        bounded(Connection::open(addr, self)).await
    }
}

async fn bounded<T>(step: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(STEP_LIMIT, step)
        .await
        .map_err(|_| format!("no answer within {STEP_LIMIT:?}"))?
}

/// Declares (or empties) the bounded queue `queue` on the broker.
pub async fn prepare_queue(login: &Login, broker: SocketAddr, queue: &str) -> Result<()> {
    let mut conn = login.connect(broker).await?;
    let channel = conn.open_channel().await?;
    conn.declare_queue(channel, queue, Some(QUEUE_BOUND))
        .await?;
    conn.purge(channel, queue).await?;
    conn.close().await
}

pub async fn delete_queue(login: &Login, broker: SocketAddr, queue: &str) -> Result<()> {
    let mut conn = login.connect(broker).await?;
    let channel = conn.open_channel().await?;
    conn.delete_queue(channel, queue).await?;
    conn.close().await
}

/// Messages per second, and how many were published in the run.
pub struct Throughput {
    pub per_second: f64,
    pub messages: u64,
}

/// `publishers` connections publish `size`-byte messages (each to its own
/// queue, `queue-N`) as fast as they can for `duration`; with `confirms`
/// each waits for the broker's confirms, keeping a bounded window. The run
/// ends when the broker has everything (a round trip after the last
/// publish, or the last confirm).
pub async fn publish(
    login: &Login,
    addr: SocketAddr,
    queues: &[String],
    size: usize,
    confirms: bool,
    duration: Duration,
) -> Result<Throughput> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut runs = tokio::task::JoinSet::new();
    for queue in queues {
        let (login, queue) = (login.clone(), queue.clone());
        runs.spawn(async move {
            let conn = login.connect(addr).await?;
            publish_one(conn, &queue, size, confirms, deadline).await
        });
    }
    let messages = sum_of(runs).await?;
    Ok(Throughput {
        per_second: messages as f64 / started.elapsed().as_secs_f64(),
        messages,
    })
}

async fn publish_one(
    mut conn: Connection,
    queue: &str,
    size: usize,
    confirms: bool,
    deadline: Instant,
) -> Result<u64> {
    let channel = conn.open_channel().await?;
    if confirms {
        conn.confirm_select(channel).await?;
    }
    // The same message, encoded once, repeated to fill about 16 KiB per write.
    let message = conn.publish(channel, queue, &vec![b'x'; size]);
    let per_write = (16384 / message.len()).clamp(1, 64);
    let mut batch = BytesMut::new();
    for _ in 0..per_write {
        batch.extend_from_slice(&message);
    }
    let per_write = per_write as u64;
    if !confirms {
        let mut published = 0;
        while Instant::now() < deadline {
            bounded(conn.send(&batch)).await?;
            published += per_write;
        }
        bounded(conn.message_count(channel, queue)).await?;
        conn.close().await?;
        return Ok(published);
    }
    let window = Arc::new(Semaphore::new(CONFIRM_WINDOW));
    let (published, published_seen) = watch::channel(None);
    let Connection { reader, writer, .. } = conn;
    let mut acks = AckReader {
        reader,
        window: window.clone(),
        published: published_seen,
    };
    let confirmed = tokio::spawn(async move { acks.run().await });
    let mut writer = writer;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        let permits = bounded(async {
            window
                .acquire_many(per_write as u32)
                .await
                .map_err(|e| e.to_string())
        })
        .await?;
        permits.forget();
        tokio::io::AsyncWriteExt::write_all(&mut writer, &batch)
            .await
            .map_err(|e| e.to_string())?;
        sent += per_write;
    }
    let _ = published.send(Some(sent));
    let confirmed = bounded(async { confirmed.await.map_err(|e| e.to_string())? }).await?;
    Ok(confirmed)
}

/// Waits for every task and adds up what they counted; the first failure
/// fails the sum.
async fn sum_of(mut tasks: tokio::task::JoinSet<Result<u64>>) -> Result<u64> {
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done.map_err(|e| e.to_string())??;
    }
    Ok(total)
}

/// Reads confirms, gives their window back, and returns once every publish
/// is confirmed.
struct AckReader {
    reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    window: Arc<Semaphore>,
    /// How many were published, once the publisher is done.
    published: watch::Receiver<Option<u64>>,
}

impl AckReader {
    async fn run(&mut self) -> Result<u64> {
        let mut confirmed = 0u64;
        loop {
            if self
                .published
                .borrow()
                .is_some_and(|total| confirmed >= total)
            {
                return Ok(confirmed);
            }
            let frame = tokio::select! {
                frame = self.reader.read_frame() => frame.map_err(|e| e.to_string())?,
                changed = self.published.changed() => {
                    changed.map_err(|_| "the publisher stopped")?;
                    continue;
                }
            };
            match frame.method_id() {
                Some(amqp::BASIC_ACK | amqp::BASIC_NACK) => {
                    let now = client::confirmed_through(&frame, confirmed).ok_or("bad ack")?;
                    self.window.add_permits((now - confirmed) as usize);
                    confirmed = now;
                }
                Some(amqp::CHANNEL_CLOSE) => {
                    return Err("the channel was closed while publishing".into());
                }
                _ => {}
            }
        }
    }
}

/// Fills `queue` with `messages` messages directly on the broker, then
/// consumes them through `addr` with manual acks and a prefetch. Returns
/// messages per second from the first delivery to the last.
pub async fn consume(
    login: &Login,
    broker: SocketAddr,
    addr: SocketAddr,
    queue: &str,
    messages: u64,
) -> Result<f64> {
    fill(login, broker, queue, messages).await?;
    let mut conn = login.connect(addr).await?;
    let channel = conn.open_channel().await?;
    conn.qos(channel, PREFETCH).await?;
    conn.consume(channel, queue, false).await?;
    let mut received = 0;
    let mut acks = BytesMut::new();
    let mut pending_acks = 0;
    let mut started = None;
    let deadline = Instant::now() + STEP_LIMIT;
    while received < messages {
        if Instant::now() > deadline {
            return Err(format!("only {received} of {messages} deliveries arrived"));
        }
        let frame = bounded(conn.read()).await?;
        if frame.method_id() != Some(amqp::BASIC_DELIVER) {
            continue;
        }
        started.get_or_insert_with(Instant::now);
        received += 1;
        acks.extend_from_slice(&client::ack(
            channel,
            client::deliver_tag(&frame).ok_or("bad deliver")?,
        ));
        pending_acks += 1;
        if pending_acks == ACK_BATCH || received == messages {
            bounded(conn.send(&acks)).await?;
            acks.clear();
            pending_acks = 0;
        }
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    conn.close().await?;
    Ok(messages as f64 / elapsed.as_secs_f64().max(1e-9))
}

async fn fill(login: &Login, broker: SocketAddr, queue: &str, messages: u64) -> Result<()> {
    let mut conn = login.connect(broker).await?;
    let channel = conn.open_channel().await?;
    conn.declare_queue(channel, queue, None).await?;
    conn.purge(channel, queue).await?;
    // Confirmed, so the count below is final (a queue counts publishes
    // asynchronously from the channel that routed them).
    conn.confirm_select(channel).await?;
    let message = conn.publish(channel, queue, b"0123456789abcdef");
    let mut batch = BytesMut::new();
    for _ in 0..messages {
        batch.extend_from_slice(&message);
        if batch.len() > 65536 {
            bounded(conn.send(&batch)).await?;
            batch.clear();
        }
    }
    bounded(conn.send(&batch)).await?;
    let mut confirmed = 0;
    while confirmed < messages {
        let frame = bounded(conn.read()).await?;
        match frame.method_id() {
            Some(amqp::BASIC_ACK) => {
                confirmed = client::confirmed_through(&frame, confirmed).ok_or("bad ack")?;
            }
            Some(amqp::BASIC_NACK) => {
                return Err("the broker refused a message while filling the queue".into());
            }
            _ => {}
        }
    }
    let count = bounded(conn.message_count(channel, queue)).await?;
    if u64::from(count) != messages {
        return Err(format!("queue holds {count} messages, expected {messages}"));
    }
    conn.close().await
}

/// Publishes `rate` messages per second for `duration` and measures each
/// one's trip to a consumer on another connection (both through `addr`).
/// Returns the latencies in nanoseconds.
pub async fn latency(
    login: &Login,
    addr: SocketAddr,
    queue: &str,
    rate: u32,
    duration: Duration,
) -> Result<Vec<u64>> {
    let epoch = Instant::now();
    let mut consumer = login.connect(addr).await?;
    let consumer_channel = consumer.open_channel().await?;
    consumer.consume(consumer_channel, queue, true).await?;
    let mut publisher = login.connect(addr).await?;
    let channel = publisher.open_channel().await?;
    let count = (f64::from(rate) * duration.as_secs_f64()) as usize;
    let receiving = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(count);
        while latencies.len() < count {
            let frame = bounded(consumer.read()).await?;
            if let Some(body) = client::body(&frame) {
                let sent = u64::from_be_bytes(body[..8].try_into().map_err(|_| "short body")?);
                latencies.push(epoch.elapsed().as_nanos() as u64 - sent);
            }
        }
        consumer.close().await?;
        Ok::<_, String>(latencies)
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut body = [0u8; 16];
    for _ in 0..count {
        tick.tick().await;
        body[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
        let message = publisher.publish(channel, queue, &body);
        bounded(publisher.send(&message)).await?;
    }
    let latencies = bounded(async { receiving.await.map_err(|e| e.to_string())? }).await?;
    publisher.close().await?;
    Ok(latencies)
}

/// Connect, open a channel, publish one message, close the channel and the
/// connection: `parallel` loops of it for `duration`. Returns cycles per
/// second.
pub async fn churn(
    login: &Login,
    addr: SocketAddr,
    queue: &str,
    parallel: usize,
    duration: Duration,
) -> Result<f64> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..parallel {
        let (login, queue) = (login.clone(), queue.to_string());
        loops.spawn(async move {
            let mut cycles = 0u64;
            while Instant::now() < deadline {
                let mut conn = login.connect(addr).await?;
                let channel = conn.open_channel().await?;
                let message = conn.publish(channel, &queue, b"churn");
                conn.send(&message).await?;
                conn.send(&amqp::close(channel, "done")).await?;
                bounded(conn.expect(channel, amqp::CHANNEL_CLOSE_OK)).await?;
                bounded(conn.close()).await?;
                cycles += 1;
            }
            Ok::<_, String>(cycles)
        });
    }
    let cycles = sum_of(loops).await?;
    Ok(cycles as f64 / started.elapsed().as_secs_f64())
}

/// Opens `count` client connections with a channel each and keeps them
/// open (idle) until the returned connections are dropped or closed.
pub async fn open_idle(login: &Login, addr: SocketAddr, count: usize) -> Result<Vec<Connection>> {
    let mut clients = Vec::with_capacity(count);
    let mut opening = tokio::task::JoinSet::new();
    let mut started = 0;
    while clients.len() < count {
        while started < count && opening.len() < CONNECT_PARALLELISM {
            let login = login.clone();
            opening.spawn(async move {
                let mut conn = login.connect(addr).await?;
                conn.open_channel().await?;
                Ok::<_, String>(conn)
            });
            started += 1;
        }
        match opening.join_next().await {
            Some(done) => clients.push(done.map_err(|e| e.to_string())??),
            None => break,
        }
    }
    Ok(clients)
}

/// Closes every connection cleanly, a few at a time.
pub async fn close_all(clients: Vec<Connection>) -> Result<()> {
    let mut closing = tokio::task::JoinSet::new();
    for conn in clients {
        if closing.len() >= CONNECT_PARALLELISM {
            if let Some(done) = closing.join_next().await {
                done.map_err(|e| e.to_string())??;
            }
        }
        closing.spawn(bounded(conn.close()));
    }
    while let Some(done) = closing.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    Ok(())
}
