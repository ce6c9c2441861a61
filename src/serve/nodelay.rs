//! `TCP_NODELAY` on the Lambda runtime's own connections to the Runtime API (Linux only).
//!
//! `lambda_runtime` 1.5 connects to the Runtime API with hyper's default connector, which
//! leaves Nagle's algorithm on, and offers no way to pass another connector. A streamed
//! answer is POSTed to the Runtime API as many small writes; with Nagle on, each waits for
//! the ACK of the previous one, which the Runtime API delays by ~40 ms: the first token of
//! an answer Dify sends at once arrived ~42 ms late (tests/benches/RESULTS.md, finding B).
//! The upstream fix described there would make this module unnecessary.
//!
//! The process reaches its own sockets through `pidfd_getfd` (Linux ≥ 5.6; always
//! permitted on one's own process): it returns a duplicate descriptor of the same socket,
//! `TCP_NODELAY` is set on it, and the duplicate is closed. Only `TCP_NODELAY` is ever
//! changed, which every other client in this process (reqwest, the AWS SDK) already sets
//! on its sockets.
//!
//! Design, so that nothing here can hurt a response:
//! - **Probe in a child process, once, at start.** A sandbox may answer a syscall it
//!   forbids with a kill (seccomp `SIGSYS`) rather than an error. So before this process
//!   makes any of these calls, the binary runs itself again with [`PROBE_VAR`] set and
//!   nothing else in its environment; that child does exactly what a scan does on a
//!   socket of its own and reports. Only if it exits normally with success is the fix
//!   enabled; a kill, an error or a hang costs one warning, worded by its cause.
//! - **Off the async threads.** A response only sets a flag and wakes one dedicated
//!   thread ([`TcpNoDelay::wake`]: no lock, no syscall beyond a futex wake). That thread
//!   lists `/proc/self/fd` and does the real work (duplicate, check, set) once per socket
//!   it has not seen, that is once per new Runtime API connection. Wake-ups that arrive
//!   while it scans fold into one more scan. Setting `TCP_NODELAY` also pushes out
//!   whatever Nagle holds at that moment, so a scan that lands just after the first frame
//!   was written still releases it.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketType, sockopt};
use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

/// Set (to `1`) in the environment of the probe child; [`probe_child`] looks for it.
pub const PROBE_VAR: &str = "OPENDIFY_TCP_NODELAY_PROBE";

/// The start of every log line of this module, so one search finds them all.
const SUBJECT: &str = "TCP_NODELAY on the Lambda runtime's connections";
/// What a user loses when the fix is not applied.
const CONSEQUENCE: &str = "streamed tokens may reach the client up to ~40 ms late";
/// A probe child that has not exited by then is killed and the fix stays off.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);

const PROBING: u8 = 0;
const ENABLED: u8 = 1;
const DISABLED: u8 = 2;

/// Starts the thread that sets `TCP_NODELAY` on the runtime's new connections (after the
/// start-up probe); returns what a response calls as it starts streaming, or `None` if
/// the thread could not start (logged).
pub fn start() -> Option<impl Fn() + Clone + Send + Sync + 'static> {
    TcpNoDelay::start().map(|sockets| move || sockets.wake())
}

/// The handle responses use: wakes the thread that sets `TCP_NODELAY` on new sockets.
#[derive(Clone)]
struct TcpNoDelay {
    shared: Arc<Shared>,
    thread: Thread,
}

struct Shared {
    state: AtomicU8,
    /// A response started since the last scan.
    pending: AtomicBool,
}

impl TcpNoDelay {
    /// Starts the thread, which first runs the probe child (this binary again), then
    /// waits for wake-ups. `None` if even the thread could not start (logged).
    fn start() -> Option<TcpNoDelay> {
        // Detached: the thread lives as long as the process.
        TcpNoDelay::start_with(|| match std::env::current_exe() {
            Ok(exe) => run_probe_child(&exe),
            Err(e) => Err(format!(
                "could not find this program's file to run the start-up probe ({e})"
            )),
        })
        .map(|(sockets, _thread)| sockets)
    }

    /// [`start`](Self::start) with another probe (tests cannot re-run their own binary as
    /// the probe child), also returning the thread's handle.
    fn start_with(
        probe: impl FnOnce() -> Result<Duration, String> + Send + 'static,
    ) -> Option<(TcpNoDelay, JoinHandle<()>)> {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(PROBING),
            pending: AtomicBool::new(false),
        });
        let worker = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("opendify-nodelay".into())
            .spawn(move || run(&worker, probe));
        match spawned {
            Ok(handle) => Some((
                TcpNoDelay {
                    shared,
                    thread: handle.thread().clone(),
                },
                handle,
            )),
            Err(e) => {
                disabled(&format!("could not start its thread ({e})"));
                None
            }
        }
    }

    /// Asks for a scan soon; returns at once. Called as each response starts streaming:
    /// by then the runtime has the connection it streams the response on.
    fn wake(&self) {
        if self.shared.state.load(Ordering::Relaxed) == DISABLED {
            return;
        }
        self.shared.pending.store(true, Ordering::Release);
        self.thread.unpark();
    }

    #[cfg(test)]
    fn state(&self) -> u8 {
        self.shared.state.load(Ordering::Acquire)
    }

    /// Ends the thread after its current scan, if any.
    #[cfg(test)]
    fn stop(&self, thread: JoinHandle<()>) {
        self.shared.state.store(DISABLED, Ordering::Release);
        self.thread.unpark();
        thread.join().unwrap();
    }
}

/// The thread: probe, then one scan per batch of wake-ups until a scan fails.
fn run(shared: &Shared, probe: impl FnOnce() -> Result<Duration, String>) {
    match probe() {
        Ok(took) => tracing::info!(
            "{SUBJECT}: enabled (start-up probe passed in {:.1} ms)",
            took.as_secs_f64() * 1000.0
        ),
        Err(cause) => {
            shared.state.store(DISABLED, Ordering::Release);
            disabled(&cause);
            return;
        }
    }
    let mut scanner = match Scanner::new() {
        Ok(scanner) => scanner,
        Err(failure) => {
            shared.state.store(DISABLED, Ordering::Release);
            disabled(&failure.cause());
            return;
        }
    };
    shared.state.store(ENABLED, Ordering::Release);
    loop {
        if shared.state.load(Ordering::Acquire) == DISABLED {
            return;
        }
        if !shared.pending.swap(false, Ordering::AcqRel) {
            // Returns at once if `wake` ran since the swap (its unpark token).
            std::thread::park();
            continue;
        }
        match scanner.scan() {
            Ok(0) => {}
            Ok(set) => tracing::debug!("{SUBJECT}: set on {set} new socket(s)"),
            Err(failure) => {
                shared.state.store(DISABLED, Ordering::Release);
                tracing::warn!("{SUBJECT}: stopped, {}; {CONSEQUENCE}", failure.cause());
                return;
            }
        }
    }
}

fn disabled(cause: &str) {
    tracing::warn!(
        "{SUBJECT}: disabled, {cause}; {CONSEQUENCE} (LAMBDA_TCP_NODELAY=off skips the probe)"
    );
}

/// A failed call, for a warning worded by its cause.
#[derive(Debug)]
struct Failure {
    call: &'static str,
    error: io::Error,
}

impl Failure {
    fn new(call: &'static str, error: impl Into<io::Error>) -> Failure {
        Failure {
            call,
            error: error.into(),
        }
    }

    /// What went wrong, as a user can act on it: not permitted (a sandbox rule), missing
    /// (an old kernel), or anything else as the system says it.
    fn cause(&self) -> String {
        let call = self.call;
        let error = &self.error;
        match self.error.raw_os_error().map(Errno::from_raw_os_error) {
            Some(Errno::PERM | Errno::ACCESS) => format!("{call} is not permitted here ({error})"),
            Some(Errno::NOSYS) => {
                format!("this kernel does not have {call} (Linux 5.6 or later has it: {error})")
            }
            _ => format!("{call} failed ({error})"),
        }
    }
}

/// The process's TCP sockets, with `TCP_NODELAY` set once on each.
struct Scanner {
    pidfd: OwnedFd,
    /// Inodes of the sockets already handled, pruned to the ones still open.
    seen: HashSet<u64>,
}

impl Scanner {
    fn new() -> Result<Scanner, Failure> {
        let pidfd =
            pidfd_open(getpid(), PidfdFlags::empty()).map_err(|e| Failure::new("pidfd_open", e))?;
        Ok(Scanner {
            pidfd,
            seen: HashSet::new(),
        })
    }

    /// Sets `TCP_NODELAY` on every TCP socket opened since the last scan that has it off;
    /// returns how many were set. When nothing is new: one listing of `/proc/self/fd` and
    /// one `readlink` per open descriptor.
    fn scan(&mut self) -> Result<usize, Failure> {
        let entries =
            std::fs::read_dir("/proc/self/fd").map_err(|e| Failure::new("/proc/self/fd", e))?;
        let mut open = HashSet::with_capacity(self.seen.len());
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
            if self.seen.contains(&inode) {
                continue;
            }
            let socket = match pidfd_getfd(&self.pidfd, fd, PidfdGetfdFlags::empty()) {
                Ok(socket) => socket,
                // Closed since the listing: nothing to do.
                Err(Errno::BADF) => continue,
                Err(e) => return Err(Failure::new("pidfd_getfd", e)),
            };
            if is_tcp(&socket) && !sockopt::tcp_nodelay(&socket).unwrap_or(true) {
                sockopt::set_tcp_nodelay(&socket, true)
                    .map_err(|e| Failure::new("setsockopt(TCP_NODELAY)", e))?;
                set += 1;
            }
        }
        self.seen = open;
        Ok(set)
    }
}

fn is_tcp(socket: &OwnedFd) -> bool {
    let stream = sockopt::socket_type(socket).is_ok_and(|t| t == SocketType::STREAM);
    let inet = sockopt::socket_domain(socket)
        .is_ok_and(|d| d == AddressFamily::INET || d == AddressFamily::INET6);
    stream && inet
}

/// What the probe child does: a scan, exactly as the fix runs it, over a TCP socket of
/// its own. `Ok` only if that socket then has `TCP_NODELAY`.
fn probe() -> Result<(), Failure> {
    let socket = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None)
        .map_err(|e| Failure::new("socket", e))?;
    Scanner::new()?.scan()?;
    match sockopt::tcp_nodelay(&socket) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Failure::new(
            "the scan",
            io::Error::other("it left a new socket without TCP_NODELAY"),
        )),
        Err(e) => Err(Failure::new("getsockopt(TCP_NODELAY)", e)),
    }
}

/// In the probe child (the binary started with [`PROBE_VAR`]=1): runs the probe, writes
/// `ok` or `refused <call> <errno>` on stdout and returns the exit code. `None` in the
/// normal program.
pub fn probe_child() -> Option<ExitCode> {
    if std::env::var_os(PROBE_VAR).is_none_or(|v| v != "1") {
        return None;
    }
    let (line, code) = match probe() {
        Ok(()) => ("ok".to_string(), ExitCode::SUCCESS),
        Err(f) => (
            format!(
                "refused {} {}",
                f.call.replace(' ', "_"),
                f.error.raw_os_error().unwrap_or(0)
            ),
            ExitCode::FAILURE,
        ),
    };
    let _ = writeln!(io::stdout(), "{line}");
    Some(code)
}

/// Runs `exe` as the probe child and waits for it (up to [`PROBE_DEADLINE`]). Its
/// environment is only [`PROBE_VAR`]: no secret reaches it, and should it somehow start
/// as the server, it has no configuration and no Runtime API to poll.
fn run_probe_child(exe: &Path) -> Result<Duration, String> {
    let started = Instant::now();
    let mut child = Command::new(exe)
        .env_clear()
        .env(PROBE_VAR, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not start the start-up probe ({e})"))?;
    // Polled on this thread (no async runtime here); backs off to 20 ms, so a probe that
    // takes a few ms is seen at once and a stuck one costs few wake-ups.
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < PROBE_DEADLINE => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the start-up probe did not finish within {} s",
                    PROBE_DEADLINE.as_secs()
                ));
            }
            Err(e) => return Err(format!("could not wait for the start-up probe ({e})")),
        }
    };
    let took = started.elapsed();
    let mut report = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut report);
    }
    probe_outcome(status, &report).map(|()| took)
}

/// The probe child's exit status and report, as `Ok` or the cause of the refusal.
fn probe_outcome(status: ExitStatus, report: &str) -> Result<(), String> {
    if let Some(signal) = status.signal() {
        let name = match signal {
            31 => " (SIGSYS: a seccomp filter forbids one of its system calls)",
            9 => " (SIGKILL)",
            11 => " (SIGSEGV)",
            6 => " (SIGABRT)",
            _ => "",
        };
        return Err(format!(
            "the start-up probe was killed by signal {signal}{name}"
        ));
    }
    let report = report.trim();
    if status.success() && report == "ok" {
        return Ok(());
    }
    let mut words = report.split(' ');
    if let (Some("refused"), Some(call), Some(errno), None) =
        (words.next(), words.next(), words.next(), words.next())
        && let Ok(errno) = errno.parse::<i32>()
        && errno > 0
        && !status.success()
    {
        // Only the calls `probe` names: the report is not trusted to supply text.
        let call = [
            "socket",
            "pidfd_open",
            "pidfd_getfd",
            "/proc/self/fd",
            "setsockopt(TCP_NODELAY)",
            "getsockopt(TCP_NODELAY)",
        ]
        .into_iter()
        .find(|known| known.replace(' ', "_") == call)
        .unwrap_or("a system call");
        return Err(Failure::new(call, io::Error::from_raw_os_error(errno)).cause());
    }
    Err(format!(
        "the start-up probe ended with {status} and reported {:?}",
        report.chars().take(80).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Mutex, MutexGuard};

    /// Every scan touches all sockets of the process: the tests that scan or check a
    /// socket's option take turns.
    fn one_at_a_time() -> MutexGuard<'static, ()> {
        static SOCKETS: Mutex<()> = Mutex::new(());
        SOCKETS.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tcp_pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_scan_sets_nodelay_once_on_each_new_tcp_socket() {
        let _turn = one_at_a_time();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (client, server) = tcp_pair(&listener);
        assert!(!client.nodelay().unwrap() && !server.nodelay().unwrap());

        let mut scanner = Scanner::new().unwrap();
        // Other tests of this binary may open sockets meanwhile: at least these three.
        assert!(scanner.scan().unwrap() >= 3, "listener, client and server");
        assert!(client.nodelay().unwrap(), "the client socket");
        assert!(server.nodelay().unwrap(), "the accepted socket");

        // Already handled: a second scan leaves them alone; new sockets get it. (A new
        // listener: an accepted socket inherits TCP_NODELAY from its listener.)
        client.set_nodelay(false).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (later, later_server) = tcp_pair(&listener);
        assert!(
            scanner.scan().unwrap() >= 3,
            "the new listener, client and peer"
        );
        assert!(later.nodelay().unwrap() && later_server.nodelay().unwrap());
        assert!(!client.nodelay().unwrap(), "seen before, left alone");
    }

    #[test]
    fn the_probe_passes_where_pidfd_getfd_works() {
        let _turn = one_at_a_time();
        probe().unwrap();
    }

    /// Polls `done` until `WAIT`; the thread under test runs on its own schedule.
    fn eventually(done: impl Fn() -> bool) -> bool {
        const WAIT: Duration = Duration::from_secs(30);
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        done()
    }

    #[test]
    fn a_wake_up_gets_new_sockets_set_by_the_thread_once_the_probe_passed() {
        let _turn = one_at_a_time();
        let (sockets, thread) = TcpNoDelay::start_with(|| Ok(Duration::ZERO)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (client, server) = tcp_pair(&listener);
        sockets.wake();
        assert!(
            eventually(|| client.nodelay().unwrap() && server.nodelay().unwrap()),
            "both ends of the new connection"
        );
        assert_eq!(sockets.state(), ENABLED);

        // Each later wake-up covers the sockets opened since.
        let (later, _later_server) = tcp_pair(&listener);
        sockets.wake();
        assert!(eventually(|| later.nodelay().unwrap()));
        sockets.stop(thread);
    }

    #[test]
    fn a_failed_probe_leaves_every_socket_alone() {
        let _turn = one_at_a_time();
        let (sockets, thread) = TcpNoDelay::start_with(|| Err("refused in a test".into())).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (client, _server) = tcp_pair(&listener);
        sockets.wake();
        // The thread returns after the probe, without a scan: nothing set the option.
        thread.join().unwrap();
        assert_eq!(sockets.state(), DISABLED);
        sockets.wake();
        assert!(!client.nodelay().unwrap());
    }

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn the_probe_outcome_names_the_cause() {
        assert_eq!(probe_outcome(exited(0), "ok\n"), Ok(()));
        let cases = [
            (
                ExitStatus::from_raw(31),
                "",
                "the start-up probe was killed by signal 31 (SIGSYS: a seccomp filter forbids one of its system calls)",
            ),
            (
                exited(1),
                "refused pidfd_getfd 1\n",
                "pidfd_getfd is not permitted here (Operation not permitted (os error 1))",
            ),
            (
                exited(1),
                "refused pidfd_open 38\n",
                "this kernel does not have pidfd_open (Linux 5.6 or later has it: Function not implemented (os error 38))",
            ),
            (
                exited(1),
                "refused setsockopt(TCP_NODELAY) 22\n",
                "setsockopt(TCP_NODELAY) failed (Invalid argument (os error 22))",
            ),
            (
                exited(1),
                "refused something_else 13\n",
                "a system call is not permitted here (Permission denied (os error 13))",
            ),
            (
                exited(0),
                "",
                "the start-up probe ended with exit status: 0 and reported \"\"",
            ),
            (
                exited(101),
                "thread 'main' panicked",
                "the start-up probe ended with exit status: 101 and reported \"thread 'main' panicked\"",
            ),
        ];
        for (status, report, cause) in cases {
            assert_eq!(
                probe_outcome(status, report),
                Err(cause.to_string()),
                "{report:?}"
            );
        }
    }
}
