//! File descriptors: each client is one, and a limit of 1024 (a common soft
//! default, in containers too) would make `accept` fail long before
//! `--max-clients`. Like Go's runtime, warren raises its soft limit to the
//! hard one at start, and says so when even that is too low.

/// Descriptors besides clients': listeners, upstream connections, the HTTP
/// endpoint, logs.
const OVERHEAD: u64 = 256;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit now.
pub fn raise() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// Logs a warning when `max_clients` (0: no limit) cannot all have a socket.
pub fn check(available: Option<u64>, max_clients: usize) {
    let Some(available) = available else {
        return;
    };
    let needed = max_clients as u64 + OVERHEAD;
    if max_clients > 0 && available < needed {
        tracing::warn!(
            open_files_limit = available,
            max_clients,
            "the open files limit is below --max-clients plus {OVERHEAD}: accept will fail before --max-clients is reached; raise LimitNOFILE / ulimit -n or lower --max-clients"
        );
    }
}
