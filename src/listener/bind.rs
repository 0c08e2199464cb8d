//! Binding sockets: TCP with SO_REUSEPORT, and a Unix socket put in place by
//! rename so the path always leads to a listening socket.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpSocket, UnixListener};

use super::handover;

/// Pending connections per listener.
const BACKLOG: u32 = 1024;

/// Binds like `TcpListener::bind` (each address `host` resolves to, in
/// turn), with SO_REUSEPORT when `reuse_port`.
pub async fn tcp(host: &str, port: u16, reuse_port: bool) -> io::Result<TcpListener> {
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(reuse_port)?;
        match socket.bind(addr).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => {
                if reuse_port {
                    handover::clear(&listener);
                }
                return Ok(listener);
            }
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// A Unix socket bound in a private directory next to its path, moved to
/// the path by [`UnixSocket::publish`] once warren is otherwise ready (so a
/// warren that fails to start never replaces a working one's socket).
pub struct UnixSocket {
    pub listener: UnixListener,
    path: PathBuf,
    /// The private directory while unpublished.
    staging: Option<PathBuf>,
    /// The published socket's inode: at exit the path is removed only if it
    /// still holds this socket, not a successor's.
    inode: Option<u64>,
}

impl UnixSocket {
    /// Binds with permissions `mode`. Refuses a path that exists and is not
    /// a socket (a typo must not replace a file).
    pub fn bind(path: &Path, mode: u32) -> io::Result<Self> {
        if let Ok(existing) = std::fs::symlink_metadata(path) {
            if !existing.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket",
                ));
            }
        }
        let parent = path.parent().unwrap_or(Path::new("/"));
        let name = path.file_name().unwrap_or_default();
        let staging = parent.join(format!(".warren-{}.new", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        // Owner-only until renamed: nobody can connect to the socket before
        // its mode is set, whatever the umask.
        std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
        let staged = staging.join(name);
        let bound = UnixListener::bind(&staged).and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
            Ok(listener)
        });
        match bound {
            Ok(listener) => Ok(UnixSocket {
                listener,
                path: path.to_path_buf(),
                staging: Some(staging),
                inode: None,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the socket to its path, replacing an older warren's atomically.
    pub fn publish(&mut self) -> io::Result<()> {
        let Some(staging) = self.staging.take() else {
            return Ok(());
        };
        let staged = staging.join(self.path.file_name().unwrap_or_default());
        let moved = std::fs::rename(&staged, &self.path);
        let _ = std::fs::remove_dir_all(&staging);
        moved?;
        self.inode = Some(std::fs::metadata(&self.path)?.ino());
        Ok(())
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        if let Some(staging) = &self.staging {
            let _ = std::fs::remove_dir_all(staging);
        }
        if let Some(inode) = self.inode {
            if std::fs::metadata(&self.path).is_ok_and(|meta| meta.ino() == inode) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}
