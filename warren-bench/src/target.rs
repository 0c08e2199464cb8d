//! The warren under test: a child process on free loopback ports, with
//! what the benchmark reads of it (CPU time, RSS, its admin API).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::Result;

pub struct Warren {
    child: Child,
    pub addr: SocketAddr,
    http: SocketAddr,
}

fn free_port() -> Result<u16> {
    let socket = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(socket.local_addr().map_err(|e| e.to_string())?.port())
}

impl Warren {
    /// Starts `binary` in front of `broker` and waits until it accepts.
    pub async fn start(binary: &Path, broker: SocketAddr) -> Result<Self> {
        let (port, http_port) = (free_port()?, free_port()?);
        let child = Command::new(binary)
            .args(["--port", &port.to_string()])
            .args(["--http-port", &http_port.to_string()])
            .args(["--log-level", "warn", "--term-timeout", "0"])
            .arg(format!("amqp://{broker}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let warren = Warren {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(warren.http).await.is_err() {
            if Instant::now() > deadline {
                return Err(format!("{} did not start listening", binary.display()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(warren)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the process has used, summed over its threads, in
    /// nanoseconds (schedstat: finer than the 10 ms ticks of /proc/PID/stat).
    pub fn cpu_ns(&self) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// File descriptors the process has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |fds| fds.count())
    }

    /// Resident set size in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// RSS once it is back within 1 MiB of `baseline`, or after `limit`.
    pub async fn rss_settled(&self, baseline: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let rss = self.rss_bytes();
            if rss <= baseline + (1 << 20) || Instant::now() > deadline {
                return rss;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `/api/overview` as JSON.
    pub async fn overview(&self) -> Result<serde_json::Value> {
        let mut stream = TcpStream::connect(self.http)
            .await
            .map_err(|e| e.to_string())?;
        // The endpoint answers only requests that name it by address.
        let request = format!("GET /api/overview HTTP/1.0\r\nHost: {}\r\n\r\n", self.http);
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no HTTP body")?;
        serde_json::from_slice(&answer[split + 4..]).map_err(|e| e.to_string())
    }

    /// Waits (polling its API, up to `limit`) until warren counts `clients`.
    pub async fn wait_for_clients(&self, clients: u64, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.overview().await?["clients"]
                .as_u64()
                .unwrap_or(u64::MAX);
            if seen == clients {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("warren shows {seen} clients, expected {clients}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Warren {
    fn drop(&mut self) {
        // SIGTERM with --term-timeout 0: it closes its clients and exits.
        // SAFETY: kill only sends a signal to the child we started.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
