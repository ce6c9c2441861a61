//! The real `opendify` binary as a child process: spawned with a clean environment,
//! its stderr captured, killed by its own PID when the test ends.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The variables that choose a conversation store.
const STORE_VARS: [&str; 3] = [
    "CONVERSATION_STORE",
    "CONVERSATION_TABLE",
    "CONVERSATION_DB_PATH",
];

/// The binary with exactly these variables (plus PATH), stdout and stderr piped. It runs
/// in this package's directory, where the default store's file (data/opendify.db) would
/// carry chats from test to test and run to run: unless `vars` choose a store, it keeps
/// conversations in memory ([`command_in`] runs it elsewhere with the default store).
pub fn command(vars: &[(&str, &str)]) -> Command {
    let mut cmd = command_in(None, vars);
    if !vars.iter().any(|(k, _)| STORE_VARS.contains(k)) {
        cmd.env("CONVERSATION_STORE", "memory");
    }
    cmd
}

/// [`command`], run in `dir` if given, with no store chosen for it.
pub fn command_in(dir: Option<&Path>, vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opendify"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

/// Copies a child's pipe into `into` on a thread until the pipe closes, so the child
/// never blocks on a full pipe.
pub fn drain(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// Kills the child (by its own PID) when the test ends, however it ends.
pub struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
    pub url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// Starts the binary on a free port and waits for its "listening on" line.
pub fn start(vars: &[(&str, &str)]) -> Running {
    let mut all = vec![("SERVER_PORT", "0")];
    all.extend_from_slice(vars);
    spawn(command(&all))
}

/// [`start`] in `dir`, with the default conversation store (its file under `dir`) unless
/// `vars` choose one.
pub fn start_in(dir: &Path, vars: &[(&str, &str)]) -> Running {
    let mut all = vec![("SERVER_PORT", "0")];
    all.extend_from_slice(vars);
    spawn(command_in(Some(dir), &all))
}

fn spawn(mut command: Command) -> Running {
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("listening on http://") {
                let _ = tx.send(line[i + "listening on ".len()..].trim().to_string());
            }
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let url = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(url) => url,
        Err(_) => {
            // Never leave the process behind when the test fails here.
            let _ = child.kill();
            let _ = child.wait();
            panic!("no listening line; log:\n{}", log.lock().unwrap());
        }
    };
    Running { child, log, url }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (VmRSS) and its peak (VmHWM) in KiB, from /proc.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// Borrowed view of owned variables, for [`command`] and [`start`].
pub fn refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, s)| (*k, s.as_str())).collect()
}
