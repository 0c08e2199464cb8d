//! Telling systemd how warren is doing (the sd_notify protocol): READY=1
//! once the listeners are bound and published, RELOADING=1 and READY=1
//! around a SIGHUP reload, STOPPING=1 when the drain starts, and a
//! WATCHDOG=1 ping when the unit sets `WatchdogSec=`. Without
//! `$NOTIFY_SOCKET` (not under systemd, or not `Type=notify`) it does
//! nothing.
//!
//! The protocol is one datagram per message to the socket systemd names,
//! so it is written here rather than linked from libsystemd (a C library
//! to match at build and run time).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends one state change; failures are logged, never fatal (systemd then
/// times the start out, which says more than warren could).
fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let address = match path.as_bytes().strip_prefix(b"@") {
            // Linux's abstract namespace.
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        socket.send_to_addr(state.as_bytes(), &address)
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

/// The listeners are bound: clients can connect.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// A SIGHUP reload starts; [`ready`] follows when it is done.
pub fn reloading() {
    notify("RELOADING=1");
}

/// The drain starts: new connections go to a successor, clients are let go.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=draining");
}

/// How often systemd wants a watchdog ping, if the unit sets
/// `WatchdogSec=` for this process: half its timeout, as sd_watchdog_enabled
/// advises.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = match std::env::var("WATCHDOG_PID") {
        Ok(pid) => pid.parse() == Ok(std::process::id()),
        Err(_) => true,
    };
    (for_us && usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pings the watchdog from the runtime for as long as the process runs: a
/// runtime that stops scheduling tasks stops the pings, and systemd
/// restarts warren.
pub async fn keep_watchdog_fed() {
    let Some(every) = watchdog_interval() else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    // After a stall, one ping rather than a burst of the missed ones.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        notify("WATCHDOG=1");
    }
}
