//! `TCP_NODELAY` on the Lambda runtime's own connections to the Runtime API.
//!
//! `lambda_runtime` 1.5 connects to the Runtime API with hyper's default connector, which
//! leaves Nagle's algorithm on, and offers no way to pass another connector. A streamed
//! answer is POSTed to the Runtime API as many small writes; with Nagle on, each waits for
//! the ACK of the previous one, which the Runtime API delays by ~40 ms: the first token of
//! an answer Dify sends at once arrived ~42 ms late (tests/benches/RESULTS.md, finding B).
//!
//! So as each response starts streaming, every TCP socket of this process that was not
//! seen before gets `TCP_NODELAY`. The process reaches its own sockets through
//! `pidfd_getfd` (Linux ≥ 5.6; always permitted on one's own process): it returns a
//! duplicate descriptor of the same socket, the option is set on it, and the duplicate is
//! closed. Only `TCP_NODELAY`
//! is ever changed, which every other client in this process (reqwest, the AWS SDK)
//! already sets on its sockets. If the kernel refuses, it is logged once and the runtime
//! keeps serving as before.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::net::AddressFamily;
use rustix::net::sockopt;
use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

/// The process's TCP sockets, with `TCP_NODELAY` set once on each.
pub struct TcpNoDelay {
    pidfd: Option<OwnedFd>,
    /// Inodes of the sockets already handled, pruned to the ones still open.
    seen: Mutex<HashSet<u64>>,
    /// Set after the first refusal, so a kernel without `pidfd_getfd` costs one log line.
    off: AtomicBool,
}

impl TcpNoDelay {
    pub fn new() -> TcpNoDelay {
        let pidfd = pidfd_open(getpid(), PidfdFlags::empty());
        if let Err(e) = &pidfd {
            refused("pidfd_open", &io::Error::from(*e));
        }
        TcpNoDelay {
            off: AtomicBool::new(pidfd.is_err()),
            pidfd: pidfd.ok(),
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// Sets `TCP_NODELAY` on every TCP socket opened since the last call; returns how many
    /// were set. Cheap when nothing is new: one directory listing of `/proc/self/fd`.
    pub fn apply(&self) -> usize {
        if self.off.load(Ordering::Relaxed) {
            return 0;
        }
        let Some(pidfd) = &self.pidfd else { return 0 };
        match self.scan(pidfd) {
            Ok(set) => set,
            Err((call, e)) => {
                self.off.store(true, Ordering::Relaxed);
                refused(call, &e);
                0
            }
        }
    }

    fn scan(&self, pidfd: &OwnedFd) -> Result<usize, (&'static str, io::Error)> {
        let entries = std::fs::read_dir("/proc/self/fd").map_err(|e| ("/proc/self/fd", e))?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut open = HashSet::with_capacity(seen.len());
        let mut set = 0;
        for entry in entries.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // "socket:[INODE]" for a socket; anything else is not ours to look at.
            let Some(inode) = std::fs::read_link(entry.path()).ok().and_then(|target| {
                let target = target.to_str()?;
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            }) else {
                continue;
            };
            open.insert(inode);
            if seen.contains(&inode) {
                continue;
            }
            let socket = match pidfd_getfd(pidfd, fd, PidfdGetfdFlags::empty()) {
                Ok(socket) => socket,
                // Closed since the listing: nothing to do.
                Err(rustix::io::Errno::BADF) => continue,
                Err(e) => return Err(("pidfd_getfd", e.into())),
            };
            if is_tcp(&socket) && sockopt::set_tcp_nodelay(&socket, true).is_ok() {
                set += 1;
            }
        }
        *seen = open;
        Ok(set)
    }
}

impl Default for TcpNoDelay {
    fn default() -> Self {
        TcpNoDelay::new()
    }
}

fn is_tcp(socket: &OwnedFd) -> bool {
    let stream = sockopt::socket_type(socket).is_ok_and(|t| t == rustix::net::SocketType::STREAM);
    let inet = sockopt::socket_domain(socket)
        .is_ok_and(|d| d == AddressFamily::INET || d == AddressFamily::INET6);
    stream && inet
}

fn refused(call: &str, error: &io::Error) {
    tracing::warn!(
        "cannot set TCP_NODELAY on the Lambda runtime's connections ({call}: {error}); \
         streamed tokens may reach the client up to ~40 ms late"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn sets_nodelay_once_on_each_new_tcp_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(!client.nodelay().unwrap() && !server.nodelay().unwrap());

        let sockets = TcpNoDelay::new();
        // Other tests of this binary may open sockets meanwhile: at least these three.
        assert!(sockets.apply() >= 3, "listener, client and server sockets");
        assert!(client.nodelay().unwrap(), "the client socket");
        assert!(server.nodelay().unwrap(), "the accepted socket");

        // Already handled: a second pass leaves them alone; new sockets get it.
        client.set_nodelay(false).unwrap();
        let later = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (later_server, _) = listener.accept().unwrap();
        assert!(sockets.apply() >= 2, "the new client and its accepted peer");
        assert!(later.nodelay().unwrap() && later_server.nodelay().unwrap());
        assert!(!client.nodelay().unwrap(), "seen before, left alone");
    }
}
