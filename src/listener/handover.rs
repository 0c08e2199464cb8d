//! Handing a port over to a successor warren on SIGTERM, so a rolling
//! restart refuses nobody.
//!
//! Both warrens' listeners are in the port's SO_REUSEPORT group and the
//! kernel picks one per new connection. Closing a listener resets the
//! connections waiting in its backlog, so the old warren first steers new
//! connections to the other socket, keeps accepting what was already queued
//! to it, and only then closes.
//!
//! Steering is a one-instruction classic BPF program attached to the group:
//! "pick socket N". The group numbers its sockets in the order they joined,
//! and a closing socket's place is taken by the last one, so the draining
//! warren does not know its own number. It finds out: it answers 1, opens a
//! probe connection to its own port, and if the probe comes back to itself
//! (it is socket 1, or alone) it answers 0 instead. An answer past the end
//! of the group is ignored by the kernel, which then picks as usual.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::net::{TcpListener, TcpStream};

use crate::net::set_option;

/// A connection to our own port, to see where the kernel sends it.
pub struct Probe {
    /// Which listener it probes (index into the caller's list).
    pub listener: usize,
    /// The probe's own address: the peer address it is accepted with.
    pub from: SocketAddr,
    _stream: TcpStream,
}

/// Steers `listener`'s group to socket 1 and probes where that lands.
pub async fn steer_away(listener: &TcpListener, index: usize) -> Option<Probe> {
    if let Err(e) = steer(listener, 1) {
        tracing::debug!(error = %e, "cannot steer connections to a successor");
        return None;
    }
    let target = reachable(listener.local_addr().ok()?);
    let stream = TcpStream::connect(target).await.ok()?;
    Some(Probe {
        listener: index,
        from: stream.local_addr().ok()?,
        _stream: stream,
    })
}

/// Our own probe came back: we are socket 1 (or alone), so the successor,
/// if any, is socket 0.
pub fn probe_returned(listener: &TcpListener) {
    if let Err(e) = steer(listener, 0) {
        tracing::debug!(error = %e, "cannot steer connections to a successor");
    }
}

/// A fresh listener starts without the program a predecessor attached to
/// the group (it would point at a fixed socket number forever).
pub fn clear(listener: &TcpListener) {
    let unused: libc::c_int = 0;
    // ENOENT (nothing attached) is the common, harmless answer.
    let _ = set_option(
        listener.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_DETACH_REUSEPORT_BPF,
        &unused,
    );
}

fn steer(listener: &TcpListener, socket: u32) -> io::Result<()> {
    let mut pick = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: socket,
    }];
    let program = libc::sock_fprog {
        len: 1,
        filter: pick.as_mut_ptr(),
    };
    // The kernel copies the program (`pick`, alive here) during the call.
    set_option(
        listener.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_ATTACH_REUSEPORT_CBPF,
        &program,
    )
}

/// Where to connect to reach a listener bound to `addr` from this host.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}
