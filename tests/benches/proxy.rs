//! The real `opendify` binary (release build, local mode) against a fake Dify, compared
//! with the same requests sent straight to that fake Dify in the same run.
//!
//! `cargo bench --bench proxy` runs every section; name sections after `--` to run only
//! those: `cargo bench --bench proxy -- latency load lambda watch concurrency coldstart`.
//! `BENCH_RUNS` (default 30) sets the paced runs per arm (half as many realistic ones),
//! `BENCH_LOAD_SECS` (default 5) the measured seconds per load level. `watch` needs
//! cargo-lambda on PATH (`.venv-tools/bin`), `coldstart` moto_server. `TOKIO_WORKER_THREADS` and `RUST_LOG`, when set, are passed to the proxy.
//!
//! Processes, all on 127.0.0.1:
//! - **fake Dify**: this bench binary re-executed with `OPENDIFY_BENCH_ROLE=fake-dify`, so
//!   `tests/support/fake_dify.rs` runs in its own process and tokio runtime (2 worker
//!   threads) and never shares the proxy's threads. It exits when its stdin closes, i.e.
//!   when this process ends, however it ends.
//! - **proxy**: `target/release/opendify` (or the binary named by `OPENDIFY_BENCH_BIN`,
//!   to measure a candidate fix with the same bench), started with `SERVER_PORT=0`, ready when it logs
//!   `listening on`. A fresh one per section and per load level, so peak RSS (`VmHWM`) and
//!   CPU time (`/proc/PID/stat` utime+stime) belong to that section only.
//! - **client**: this process (tokio, 2 worker threads, reqwest with keep-alive).
//!
//! Answers:
//! - `paced`: 500 characters in 80 `message` frames (orjson framing, as Dify ≥ 1.8 writes
//!   them) plus `message_end`, each frame written after a pause of 10–30 ms (a fixed
//!   pseudo-random sequence, so both arms wait the same): ~1.6 s per answer.
//! - `realistic`: the same frames as an LLM behind Dify sends them: the first 150 ms after
//!   the request, then 20–50 ms apart (~3 s per answer).
//! - `fast`: the same frames without pauses (one write per frame): what the proxy costs
//!   when it is the bottleneck.
//!
//! Sections:
//! - `latency`: `paced` answers one at a time, direct and through the proxy alternately
//!   (ABBA order); TTFT (request sent → first answer word received) and total time
//!   (→ end of body), medians. Also the proxy's CPU time per answer against its CPU time
//!   while idle during the direct runs (same wall time), and its peak RSS under one stream.
//!   Then the same with `fast` answers (200 runs per arm), which has no timer noise.
//! - `load`: closed loop, `fast` answers, 8 / 64 / 256 concurrent streams, direct vs proxy.
//! - `lambda`: three arms in rotating order — Dify direct, the proxy in local mode, the
//!   proxy in Lambda mode behind the fake Runtime API of `tests/support/lambda_runtime.rs`
//!   (in this process) — for `fast`, `paced` and `realistic` answers. Lambda-mode times run
//!   from the moment `/next` hands out a function-URL event to the arrival of the response
//!   body frames the function streams back; read them against local mode.
//! - `watch`: local mode against `cargo lambda watch --release` (its Runtime API and
//!   function-URL emulation), `fast` and `paced` answers, alternating.
//! - `concurrency`: paced answers queued at once in Lambda mode: 16 with
//!   `AWS_LAMBDA_MAX_CONCURRENCY` unset (one at a time, classic Lambda), 64 with it at 64
//!   (Lambda Managed Instances): wall time, most in flight, TTFT, peak RSS, CPU.
//! - `responses`: the proxy's `POST /v1/responses` against its `POST /v1/chat/completions`
//!   for the same `paced` and `fast` answers (ABBA): TTFT and total, as ratios.
//! - `coldstart`: process start → `listening on` → first `GET /v1/models` answered → first
//!   streamed chat answered, with `CONVERSATION_TABLE` on a local `moto_server` (its own
//!   process, started here, stopped at the end); also with the in-memory store. Baselines:
//!   `/bin/true` start → exit, and the binary with an invalid configuration start → exit.
//!   Also the size of the binary, and Lambda init: a fresh process behind a fresh fake
//!   Runtime API with two events already queued, start → first invocation answered, with
//!   secrets in the environment or from SSM (moto) and the memory or DynamoDB store.
//!
//! The machine has 2 cores shared by all three processes (and whatever else runs): the
//! ratios against the direct arm are the figures to read, not the absolute numbers.

#[allow(dead_code, unused_imports)]
#[path = "../support/fake_dify.rs"]
mod fake_dify;
#[allow(dead_code)]
#[path = "../support/lambda_runtime.rs"]
mod lambda_runtime;
#[allow(dead_code)]
#[path = "../support/moto.rs"]
mod moto;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fake_dify::{FakeDify, Scenario};
use serde_json::json;

const ROLE_VAR: &str = "OPENDIFY_BENCH_ROLE";
const KEY_PACED: &str = "app-bench-paced-00000000000001";
const KEY_REALISTIC: &str = "app-bench-realistic-000000003";
const KEY_FAST: &str = "app-bench-fast-000000000000002";
const PROXY_KEY: &str = "sk-bench-proxy-key-0001";
const FIRST_WORD: &str = "Benchmarking";
const ANSWER_CHARS: usize = 500;
const ANSWER_EVENTS: usize = 80;
const FAST_RUNS: usize = 200;
const COLD_RUNS: usize = 20;
const LOAD_LEVELS: [usize; 3] = [8, 64, 256];
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    if std::env::var(ROLE_VAR).as_deref() == Ok("fake-dify") {
        fake_dify_process();
        return;
    }
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |s: &str| sections.is_empty() || sections.iter().any(|x| x == s);
    let runs: usize = env_num("BENCH_RUNS", 30);
    let load_secs: u64 = env_num("BENCH_LOAD_SECS", 5);

    add_tools_to_path();
    machine_header();
    let fake = FakeProcess::start();
    eprintln!("fake Dify: pid {} at {}", fake.pid(), fake.base);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = Vec::new();
    if wants("latency") {
        rt.block_on(latency(&fake, runs, &mut report));
    }
    if wants("load") {
        rt.block_on(load(&fake, load_secs, &mut report));
    }
    if wants("lambda") {
        rt.block_on(lambda(&fake, runs, &mut report));
    }
    if wants("watch") {
        rt.block_on(watch(&fake, runs, &mut report));
    }
    if wants("concurrency") {
        rt.block_on(concurrency(&fake, &mut report));
    }
    if wants("responses") {
        rt.block_on(responses(&fake, runs, &mut report));
    }
    if wants("coldstart") {
        coldstart(&fake, &rt, &mut report);
    }
    println!("\n== proxy summary ==");
    for line in &report {
        println!("{line}");
    }
    drop(fake);
}

/// `moto_server` lives in `.venv-tools/bin` (see `.ci/run`); the moto helper finds it on
/// PATH.
fn add_tools_to_path() {
    let tools = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-tools/bin");
    let path = std::env::var("PATH").unwrap_or_default();
    if std::path::Path::new(tools).join("moto_server").is_file()
        && !path.split(':').any(|d| d == tools)
    {
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe { std::env::set_var("PATH", format!("{tools}:{path}")) };
    }
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn machine_header() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {cpus} CPUs, {model}; load average at start: {}",
        load.trim()
    );
    println!("proxy binary: {}", proxy_bin());
}

// ---------------------------------------------------------------------------
// The answers

/// 80 pieces, 500 characters in all: the first word, then words with their leading space
/// (lengths 2–11 in a fixed pseudo-random order).
fn answer_pieces() -> Vec<String> {
    const BY_LEN: [&[&str]; 10] = [
        &["a", "I"],
        &["to", "of", "in", "by"],
        &["the", "and", "for", "new"],
        &["data", "team", "risk", "cost"],
        &["model", "cloud", "price", "sales"],
        &["report", "stream", "answer", "market"],
        &["revenue", "because", "quarter", "support"],
        &["increase", "research", "strategy", "customer"],
        &["important", "customers", "operating", "analytics"],
        &["investment", "efficiency", "throughput", "management"],
    ];
    let mut rng = Lcg(0x5eed_0001);
    let rest = ANSWER_EVENTS - 1;
    let mut lens: Vec<usize> = (0..rest).map(|_| 2 + rng.next() % 10).collect();
    let want = ANSWER_CHARS - FIRST_WORD.len();
    let mut i = 0;
    while lens.iter().sum::<usize>() != want {
        let sum: usize = lens.iter().sum();
        if sum < want && lens[i] < 11 {
            lens[i] += 1;
        } else if sum > want && lens[i] > 2 {
            lens[i] -= 1;
        }
        i = (i + 7) % rest;
    }
    let mut pieces = vec![FIRST_WORD.to_string()];
    for (n, len) in lens.into_iter().enumerate() {
        let words = BY_LEN[len - 2];
        pieces.push(format!(" {}", words[n % words.len()]));
    }
    pieces
}

/// A fixed pseudo-random sequence (no `rand` dependency needed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
}

const HEAD: &str = r#"{"event":"message","conversation_id":"7d2f9a61-3b4e-4c8a-b1d5-0e6f2a9c4b37","message_id":"a3e1c7f2-6d4b-4e9a-8c5f-1b2d3e4f5a6b","created_at":1784212345,"task_id":"5c4a1e3b-8f0d-4f6b-9a2e-3d7c1b0e9f11","id":"a3e1c7f2-6d4b-4e9a-8c5f-1b2d3e4f5a6b","answer":"#;
const END: &str = r#"data: {"event":"message_end","conversation_id":"7d2f9a61-3b4e-4c8a-b1d5-0e6f2a9c4b37","message_id":"a3e1c7f2-6d4b-4e9a-8c5f-1b2d3e4f5a6b","created_at":1784212345,"task_id":"5c4a1e3b-8f0d-4f6b-9a2e-3d7c1b0e9f11","id":"a3e1c7f2-6d4b-4e9a-8c5f-1b2d3e4f5a6b","metadata":{"annotation_reply":null,"retriever_resources":[],"usage":{"prompt_tokens":11,"prompt_unit_price":"0.15","prompt_price_unit":"0.000001","prompt_price":"0.0000017","completion_tokens":80,"completion_unit_price":"0.6","completion_price_unit":"0.000001","completion_price":"0.0000480","total_tokens":91,"total_price":"0.0000497","currency":"USD","latency":1.62,"time_to_first_token":null,"time_to_generate":null}},"files":null}"#;

/// How Dify sends the answer.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// All frames at once.
    Fast,
    /// 10–30 ms before every frame.
    Paced,
    /// As an LLM behind Dify does: the first word 150 ms after the request, then 20–50 ms
    /// between frames (~3 s per answer).
    Realistic,
}

impl Answer {
    fn name(self) -> &'static str {
        match self {
            Answer::Fast => "fast",
            Answer::Paced => "paced",
            Answer::Realistic => "realistic",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Answer::Fast => KEY_FAST,
            Answer::Paced => KEY_PACED,
            Answer::Realistic => KEY_REALISTIC,
        }
    }
}

/// The Dify frames of the answer, each with the pause before it.
fn answer_parts(answer: Answer) -> Vec<(Bytes, Duration)> {
    let mut rng = Lcg(0xdead_beef);
    let mut first = true;
    let mut pause = move || {
        let ms = match answer {
            Answer::Fast => 0,
            Answer::Paced => 10 + (rng.next() % 21) as u64,
            Answer::Realistic if first => 150,
            Answer::Realistic => 20 + (rng.next() % 31) as u64,
        };
        first = false;
        Duration::from_millis(ms)
    };
    let mut parts: Vec<(Bytes, Duration)> = answer_pieces()
        .iter()
        .map(|p| {
            let frame = format!(
                "data: {HEAD}{},\"from_variable_selector\":null}}\n\n",
                json!(p)
            );
            (Bytes::from(frame), pause())
        })
        .collect();
    parts.push((Bytes::from(format!("{END}\n\n")), pause()));
    parts
}

// ---------------------------------------------------------------------------
// The fake Dify process

fn fake_dify_process() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fake = FakeDify::start().await;
        for answer in [Answer::Fast, Answer::Paced, Answer::Realistic] {
            fake.set(
                answer.key(),
                Scenario::Raw {
                    parts: answer_parts(answer),
                },
            );
        }
        println!("READY {}", fake.base_url());
        let _ = std::io::stdout().flush();
        // Until the bench process closes our stdin (it exits, or is killed): bounded by
        // its lifetime, and by an hour at most.
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        });
        let _ = tokio::time::timeout(Duration::from_secs(3600), stdin_closed).await;
        drop(fake);
    });
    // The blocking stdin reader may still be parked; exit without waiting for it.
    std::process::exit(0);
}

struct FakeProcess {
    child: Child,
    base: String,
}

impl FakeProcess {
    fn start() -> FakeProcess {
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .env(ROLE_VAR, "fake-dify")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the fake Dify process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("fake Dify said nothing");
        let base = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("fake Dify said {line:?}"))
            .trim()
            .to_string();
        FakeProcess { child, base }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
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

// ---------------------------------------------------------------------------
// The proxy process

struct Proxy {
    child: Child,
    url: String,
    log: Arc<Mutex<Log>>,
    spawned: Instant,
    listening: Instant,
}

#[derive(Default)]
struct Log {
    tail: VecDeque<String>,
    warnings: usize,
}

/// The binary under test: this package's release build, or `OPENDIFY_BENCH_BIN` (to
/// compare a candidate fix against it with the same bench).
fn proxy_bin() -> String {
    std::env::var("OPENDIFY_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_opendify").to_string())
}

fn proxy_command(vars: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(proxy_bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Knobs worth trying on the proxy without rebuilding it.
    for knob in ["TOKIO_WORKER_THREADS", "RUST_LOG"] {
        if let Ok(v) = std::env::var(knob) {
            cmd.env(knob, v);
        }
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    // Without a table, memory as before the SQLite default: the figures stay comparable,
    // and no chat id is carried from one run to the next in ./data/opendify.db.
    if !vars.iter().any(|(k, _)| *k == "CONVERSATION_TABLE") {
        cmd.env("CONVERSATION_STORE", "memory");
    }
    cmd
}

fn proxy_vars(fake: &FakeProcess) -> Vec<(&'static str, String)> {
    vec![
        ("DIFY_API_BASE", fake.base.clone()),
        (
            "MODEL_CONFIG",
            json!({"paced": KEY_PACED, "fast": KEY_FAST, "realistic": KEY_REALISTIC}).to_string(),
        ),
        ("PROXY_API_KEYS", PROXY_KEY.to_string()),
        ("SERVER_PORT", "0".to_string()),
    ]
}

impl Proxy {
    fn start(vars: &[(&str, String)]) -> Proxy {
        let spawned = Instant::now();
        let mut child = proxy_command(vars).spawn().expect("start opendify");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on http://") {
                    let _ = tx.send((Instant::now(), line[i + 13..].trim().to_string()));
                }
                let mut l = sink.lock().unwrap();
                if line.contains("WARN") || line.contains("ERROR") {
                    l.warnings += 1;
                }
                l.tail.push_back(line);
                if l.tail.len() > 40 {
                    l.tail.pop_front();
                }
            }
        });
        let (listening, url) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "opendify did not start; log:\n{}",
                    log.lock()
                        .unwrap()
                        .tail
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            });
        Proxy {
            child,
            url,
            log,
            spawned,
            listening,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn warnings(&self) -> usize {
        self.log.lock().unwrap().warnings
    }

    fn log_tail(&self) -> String {
        let l = self.log.lock().unwrap();
        l.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// /proc readings

/// utime + stime of the whole process (all threads, living and exited), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    num(11) + num(12)
}

/// Nanoseconds on CPU of the living threads (`/proc/PID/task/*/schedstat`): finer than
/// ticks; misses threads that exited in between (the thread count is reported).
fn cpu_ns(pid: u32) -> (u64, usize) {
    let mut total = 0;
    let mut threads = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat"))
                && let Some(ns) = s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            {
                total += ns;
                threads += 1;
            }
        }
    }
    (total, threads)
}

fn clock_tick_ms() -> f64 {
    // CLK_TCK is 100 on every Linux we target; /proc/self/stat has no way to ask.
    10.0
}

/// A field of /proc/PID/status in kB (VmHWM, VmRSS).
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[derive(Clone, Copy)]
struct Cpu {
    ticks: u64,
    ns: u64,
    threads: usize,
}

fn cpu(pid: u32) -> Cpu {
    let (ns, threads) = cpu_ns(pid);
    Cpu {
        ticks: cpu_ticks(pid),
        ns,
        threads,
    }
}

impl Cpu {
    /// (ms from ticks, ms from schedstat) since `earlier`.
    fn since(&self, earlier: &Cpu) -> (f64, f64) {
        (
            (self.ticks - earlier.ticks) as f64 * clock_tick_ms(),
            self.ns.saturating_sub(earlier.ns) as f64 / 1e6,
        )
    }
}

// ---------------------------------------------------------------------------
// Requests

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
    Direct,
    Proxy,
    /// The proxy's Responses API (`POST /v1/responses`).
    Responses,
}

struct Target {
    arm: Arm,
    url: String,
    client: reqwest::Client,
    /// Sent as `X-OpenWebUI-Chat-Id` (proxy arm): every request continues one chat.
    chat_id: Option<String>,
}

impl Target {
    fn new(arm: Arm, base: &str) -> Target {
        let url = match arm {
            Arm::Direct => format!("{base}/chat-messages"),
            Arm::Proxy => format!("{base}/v1/chat/completions"),
            Arm::Responses => format!("{base}/v1/responses"),
        };
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .expect("client");
        Target {
            arm,
            url,
            client,
            chat_id: None,
        }
    }

    fn body(&self, answer: Answer) -> serde_json::Value {
        let query = "Summarise the quarterly report in a few sentences.";
        match self.arm {
            Arm::Direct => json!({
                "inputs": {}, "query": query, "response_mode": "streaming", "user": "bench"
            }),
            Arm::Proxy => json!({
                "model": answer.name(),
                "stream": true,
                "messages": [{"role": "user", "content": query}]
            }),
            Arm::Responses => json!({
                "model": answer.name(),
                "stream": true,
                "input": query
            }),
        }
    }

    fn key(&self, answer: Answer) -> &'static str {
        match self.arm {
            Arm::Proxy | Arm::Responses => PROXY_KEY,
            Arm::Direct => answer.key(),
        }
    }

    /// One streamed answer: time to the first answer word and to the end of the body.
    async fn run(&self, answer: Answer) -> Result<Sample, String> {
        let body = self.body(answer);
        let started = Instant::now();
        let mut request = self.client.post(&self.url).bearer_auth(self.key(answer));
        if let Some(chat_id) = &self.chat_id {
            request = request.header("x-openwebui-chat-id", chat_id);
        }
        let mut response = request
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("send: {e}"))?;
        if response.status() != 200 {
            return Err(format!("HTTP {}", response.status()));
        }
        let mut received = Vec::with_capacity(32 * 1024);
        let mut ttft = None;
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("body: {e}"))? {
            let from = received.len().saturating_sub(FIRST_WORD.len());
            received.extend_from_slice(&chunk);
            if ttft.is_none()
                && received[from..]
                    .windows(FIRST_WORD.len())
                    .any(|w| w == FIRST_WORD.as_bytes())
            {
                ttft = Some(started.elapsed());
            }
        }
        let total = started.elapsed();
        let complete = match self.arm {
            Arm::Direct => received.ends_with(b"\"files\":null}\n\n"),
            Arm::Proxy => received.ends_with(b"data: [DONE]\n\n"),
            // The terminal event, then the end of the body (no `[DONE]` in this API).
            Arm::Responses => received
                .windows(b"event: response.completed\n".len())
                .any(|w| w == b"event: response.completed\n"),
        };
        if !complete {
            return Err(format!(
                "incomplete body ({} bytes): ...{}",
                received.len(),
                String::from_utf8_lossy(&received[received.len().saturating_sub(200)..])
            ));
        }
        Ok(Sample {
            ttft: ttft.ok_or("no first word")?,
            total,
            bytes: received.len(),
        })
    }
}

#[derive(Clone, Copy)]
struct Sample {
    ttft: Duration,
    total: Duration,
    bytes: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn median(v: &[f64]) -> f64 {
    let s = sorted(v.to_vec());
    if s.is_empty() {
        return f64::NAN;
    }
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------
// Section: latency, CPU per request, RSS under one stream

async fn latency(fake: &FakeProcess, runs: usize, report: &mut Vec<String>) {
    println!("\n== latency: one stream at a time, direct vs through the proxy ==");
    let proxy = Proxy::start(&proxy_vars(fake));
    let pid = proxy.pid();
    let hwm_ready = status_kb(pid, "VmHWM");
    let direct = Target::new(Arm::Direct, &fake.base);
    let via = Target::new(Arm::Proxy, &proxy.url);
    // Warm both connection pools (client → proxy → fake, client → fake).
    for _ in 0..3 {
        for t in [&direct, &via] {
            t.run(Answer::Fast).await.expect("warm-up");
        }
    }
    for answer in [Answer::Paced, Answer::Fast] {
        let paced = answer == Answer::Paced;
        let n = if paced { runs } else { FAST_RUNS };
        let name = answer.name();
        let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        // The proxy's CPU while it serves (proxy arm) and while it idles (direct arm).
        let mut cpu_ms: [(f64, f64); 2] = [(0.0, 0.0); 2];
        let mut wall: [f64; 2] = [0.0; 2];
        let mut errors = 0;
        let threads_before = cpu(pid).threads;
        for i in 0..n {
            // ABBA: direct, proxy, proxy, direct, ...
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for a in order {
                let t = if a == 0 { &direct } else { &via };
                let before = cpu(pid);
                let t0 = Instant::now();
                let r = t.run(answer).await;
                wall[a] += t0.elapsed().as_secs_f64() * 1e3;
                let (ticks, ns) = cpu(pid).since(&before);
                cpu_ms[a].0 += ticks;
                cpu_ms[a].1 += ns;
                match r {
                    Ok(s) => samples[a].push(s),
                    Err(e) => {
                        errors += 1;
                        eprintln!("{name} {:?}: {e}", t.arm);
                    }
                }
            }
        }
        let threads_after = cpu(pid).threads;
        let med = |a: usize, f: fn(&Sample) -> Duration| {
            median(&samples[a].iter().map(|s| ms(f(s))).collect::<Vec<_>>())
        };
        let (d_ttft, p_ttft) = (med(0, |s| s.ttft), med(1, |s| s.ttft));
        let (d_total, p_total) = (med(0, |s| s.total), med(1, |s| s.total));
        // Paired differences (run i of each arm ran back to back).
        let pairs = samples[0].len().min(samples[1].len());
        let diff = |f: fn(&Sample) -> Duration| {
            median(
                &(0..pairs)
                    .map(|i| ms(f(&samples[1][i])) - ms(f(&samples[0][i])))
                    .collect::<Vec<_>>(),
            )
        };
        let out_bytes = samples[1].first().map_or(0, |s| s.bytes);
        let in_bytes = samples[0].first().map_or(0, |s| s.bytes);
        println!(
            "{name}: {n} runs per arm, errors {errors}; Dify body {in_bytes} B, OpenAI body {out_bytes} B"
        );
        println!(
            "  TTFT median: direct {d_ttft:.2} ms, proxy {p_ttft:.2} ms, +{:.2} ms (paired median +{:.2} ms)",
            p_ttft - d_ttft,
            diff(|s| s.ttft)
        );
        println!(
            "  total median: direct {d_total:.2} ms, proxy {p_total:.2} ms, +{:.2} ms = {:+.2} % (paired median +{:.2} ms)",
            p_total - d_total,
            (p_total / d_total - 1.0) * 100.0,
            diff(|s| s.total)
        );
        let per = |a: usize| (cpu_ms[a].0 / n as f64, cpu_ms[a].1 / n as f64);
        let (busy_t, busy_ns) = per(1);
        let (idle_t, idle_ns) = per(0);
        println!(
            "  proxy CPU per answer: {busy_ns:.3} ms (schedstat; utime+stime ticks: {busy_t:.2} ms) over {:.0} ms wall; idle baseline over {:.0} ms wall: {idle_ns:.3} ms (ticks {idle_t:.2} ms); threads {threads_before}→{threads_after}",
            wall[1] / n as f64,
            wall[0] / n as f64,
        );
        report.push(format!(
            "latency/{name} (n={n}, errors={errors}): TTFT direct {d_ttft:.2} ms, proxy {p_ttft:.2} ms, diff {:+.2} ms (paired {:+.2}); total direct {d_total:.1} ms, proxy {p_total:.1} ms, diff {:+.2} ms = {:+.3} % (paired {:+.2} ms)",
            p_ttft - d_ttft,
            diff(|s| s.ttft),
            p_total - d_total,
            (p_total / d_total - 1.0) * 100.0,
            diff(|s| s.total),
        ));
        report.push(format!(
            "cpu/{name}: proxy {busy_ns:.3} ms CPU per answer (ticks {busy_t:.2} ms), {:.3} % of its {:.0} ms wall; idle over the same wall: {idle_ns:.3} ms (ticks {idle_t:.2} ms); difference {:.3} ms",
            busy_ns / (wall[1] / n as f64) * 100.0,
            wall[1] / n as f64,
            busy_ns - idle_ns,
        ));
    }
    let hwm = status_kb(pid, "VmHWM");
    let rss = status_kb(pid, "VmRSS");
    println!(
        "proxy memory: VmHWM at ready {hwm_ready} kB, after the single-stream runs {hwm} kB (VmRSS now {rss} kB); warnings in log: {}",
        proxy.warnings()
    );
    report.push(format!(
        "rss/one-stream: peak {:.1} MB (VmHWM; idle at ready {:.1} MB, +{:.1} MB)",
        hwm as f64 / 1024.0,
        hwm_ready as f64 / 1024.0,
        (hwm - hwm_ready) as f64 / 1024.0
    ));
}

// ---------------------------------------------------------------------------
// Section: the Responses API against chat completions, same proxy, same answers

/// Chat completions and the Responses API on one proxy, alternately (ABBA), for the same
/// paced and fast answers: time to the first answer word and to the end of the body.
/// The Responses stream carries more events and bytes per answer (lifecycle events, the
/// text repeated in the done events); what it costs shows here.
async fn responses(fake: &FakeProcess, runs: usize, report: &mut Vec<String>) {
    println!("\n== responses: POST /v1/responses vs POST /v1/chat/completions, one proxy ==");
    let proxy = Proxy::start(&proxy_vars(fake));
    let chat = Target::new(Arm::Proxy, &proxy.url);
    let resp = Target::new(Arm::Responses, &proxy.url);
    for _ in 0..3 {
        for t in [&chat, &resp] {
            t.run(Answer::Fast).await.expect("warm-up");
        }
    }
    for answer in [Answer::Paced, Answer::Fast] {
        let n = if answer == Answer::Fast {
            FAST_RUNS
        } else {
            runs
        };
        let name = answer.name();
        let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        let mut errors = 0;
        for i in 0..n {
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for a in order {
                let t = if a == 0 { &chat } else { &resp };
                match t.run(answer).await {
                    Ok(s) => samples[a].push(s),
                    Err(e) => {
                        errors += 1;
                        eprintln!("{name} {:?}: {e}", t.arm);
                    }
                }
            }
        }
        let med = |a: usize, f: fn(&Sample) -> Duration| {
            median(&samples[a].iter().map(|s| ms(f(s))).collect::<Vec<_>>())
        };
        let (c_ttft, r_ttft) = (med(0, |s| s.ttft), med(1, |s| s.ttft));
        let (c_total, r_total) = (med(0, |s| s.total), med(1, |s| s.total));
        let bytes = |a: usize| samples[a].first().map_or(0, |s| s.bytes);
        let line = format!(
            "responses/{name} (n={n}, errors={errors}): TTFT chat {c_ttft:.2} ms, responses {r_ttft:.2} ms = {:.3}x; total chat {c_total:.1} ms, responses {r_total:.1} ms = {:.3}x; body {} B vs {} B",
            r_ttft / c_ttft,
            r_total / c_total,
            bytes(0),
            bytes(1),
        );
        println!("{line}");
        report.push(line);
    }
}

// ---------------------------------------------------------------------------
// Section: the same comparison in Lambda mode

fn function_url_event(answer: Answer) -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/events/chat-streaming.json");
    let mut event: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("events/chat-streaming.json"))
            .expect("event JSON");
    event["headers"]["authorization"] = json!(format!("Bearer {PROXY_KEY}"));
    event["body"] = json!(
        json!({
            "model": answer.name(),
            "stream": true,
            "messages": [{"role": "user", "content": "Summarise the quarterly report."}]
        })
        .to_string()
    );
    event
}

/// One invocation: (TTFT, total) from the event's hand-out by `/next`.
async fn lambda_run(
    rt: &lambda_runtime::FakeRuntime,
    event: &serde_json::Value,
) -> Result<Sample, String> {
    let id = rt.invoke_json(event);
    let inv = rt.wait_for_response(&id, REQUEST_TIMEOUT).await?;
    if inv.status != 200 || !inv.body.ends_with(b"data: [DONE]\n\n") {
        return Err(format!("HTTP {}: {}", inv.status, inv.body_text()));
    }
    let offset = inv
        .body
        .windows(FIRST_WORD.len())
        .position(|w| w == FIRST_WORD.as_bytes())
        .ok_or("no first word")?;
    let first = inv.arrival_of(offset).ok_or("no arrival time")?;
    let finished = inv.raw.finished.ok_or("not finished")?;
    Ok(Sample {
        ttft: first.saturating_duration_since(inv.delivered),
        total: finished.saturating_duration_since(inv.delivered),
        bytes: inv.body.len(),
    })
}

/// Three arms in rotating order: Dify direct, the proxy in local mode, the proxy in Lambda
/// mode behind the fake Runtime API. The Lambda figures are read against local mode.
async fn lambda(fake: &FakeProcess, runs: usize, report: &mut Vec<String>) {
    println!("\n== lambda: one stream at a time, direct vs local mode vs Lambda mode ==");
    let runtime = lambda_runtime::FakeRuntime::start().await;
    let mut vars = proxy_vars(fake);
    vars.extend([
        ("AWS_LAMBDA_RUNTIME_API", runtime.runtime_api()),
        ("AWS_LAMBDA_FUNCTION_NAME", "opendify".to_string()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_string()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]);
    let mut cmd = proxy_command(&vars);
    cmd.stderr(Stdio::null());
    let _function = KillOnDrop(cmd.spawn().expect("start opendify"));
    if !runtime.wait_for_polls(1, Duration::from_secs(30)).await {
        println!("lambda: the function never polled /next; skipped");
        return;
    }
    let local_proxy = Proxy::start(&proxy_vars(fake));
    let direct = Target::new(Arm::Direct, &fake.base);
    let local = Target::new(Arm::Proxy, &local_proxy.url);
    for answer in [Answer::Fast, Answer::Paced, Answer::Realistic] {
        let event = function_url_event(answer);
        for _ in 0..3 {
            let _ = lambda_run(&runtime, &event).await;
            let _ = direct.run(answer).await;
            let _ = local.run(answer).await;
        }
        let n = match answer {
            Answer::Fast => FAST_RUNS / 2,
            Answer::Paced => runs,
            Answer::Realistic => runs.div_ceil(2),
        };
        let name = answer.name();
        let mut samples: [Vec<Sample>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        let mut errors = 0;
        for i in 0..n {
            for k in 0..3 {
                let a = (i + k) % 3;
                let r = match a {
                    0 => direct.run(answer).await,
                    1 => local.run(answer).await,
                    _ => lambda_run(&runtime, &event).await,
                };
                match r {
                    Ok(s) => samples[a].push(s),
                    Err(e) => {
                        errors += 1;
                        eprintln!("lambda {name} arm {a}: {e}");
                    }
                }
            }
        }
        let med = |a: usize, f: fn(&Sample) -> Duration| {
            median(&samples[a].iter().map(|s| ms(f(s))).collect::<Vec<_>>())
        };
        let [d_ttft, h_ttft, l_ttft] = [0, 1, 2].map(|a| med(a, |s| s.ttft));
        let [d_total, h_total, l_total] = [0, 1, 2].map(|a| med(a, |s| s.total));
        let line = format!(
            "lambda/{name} (n={n}, errors={errors}): TTFT direct {d_ttft:.2}, local {h_ttft:.2}, Lambda {l_ttft:.2} ms: \
             Lambda - local {:+.2} ms (local - direct {:+.2}); total direct {d_total:.1}, local {h_total:.1}, Lambda {l_total:.1} ms: \
             Lambda / local {:+.3} %",
            l_ttft - h_ttft,
            h_ttft - d_ttft,
            (l_total / h_total - 1.0) * 100.0
        );
        println!("{line}");
        report.push(line);
    }
}

/// Starts the function in Lambda mode behind `runtime`: `base` (e.g. [`proxy_vars`]) plus
/// the variables Lambda sets, plus `more`.
fn lambda_function(
    base: Vec<(&'static str, String)>,
    runtime: &lambda_runtime::FakeRuntime,
    more: &[(&'static str, String)],
) -> KillOnDrop {
    let mut vars = base;
    vars.extend([
        ("AWS_LAMBDA_RUNTIME_API", runtime.runtime_api()),
        ("AWS_LAMBDA_FUNCTION_NAME", "opendify".to_string()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_string()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]);
    vars.extend(more.iter().cloned());
    let mut cmd = proxy_command(&vars);
    cmd.stderr(Stdio::null());
    KillOnDrop(cmd.spawn().expect("start opendify"))
}

/// `count` paced answers queued at once; (wall time, most in flight at one moment, TTFTs).
async fn queued_at_once(
    runtime: &lambda_runtime::FakeRuntime,
    count: usize,
) -> Result<(Duration, usize, Vec<f64>), String> {
    let event = function_url_event(Answer::Paced);
    let started = Instant::now();
    let ids: Vec<String> = (0..count).map(|_| runtime.invoke_json(&event)).collect();
    let mut edges = Vec::new();
    let mut ttfts = Vec::new();
    for id in &ids {
        let inv = runtime.wait_for_response(id, REQUEST_TIMEOUT).await?;
        if inv.status != 200 || !inv.body.ends_with(b"data: [DONE]\n\n") {
            return Err(format!("HTTP {}: {}", inv.status, inv.body_text()));
        }
        let offset = inv
            .body
            .windows(FIRST_WORD.len())
            .position(|w| w == FIRST_WORD.as_bytes())
            .ok_or("no first word")?;
        let first = inv.arrival_of(offset).ok_or("no arrival time")?;
        ttfts.push(ms(first.saturating_duration_since(inv.delivered)));
        edges.push((inv.delivered, 1i32));
        edges.push((inv.raw.finished.ok_or("not finished")?, -1i32));
    }
    let wall = started.elapsed();
    edges.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        max = max.max(now);
    }
    Ok((wall, max as usize, ttfts))
}

/// Lambda Managed Instances: paced answers queued at once, one at a time
/// (`AWS_LAMBDA_MAX_CONCURRENCY` unset, classic Lambda) against 64 at once in one process
/// (`AWS_LAMBDA_MAX_CONCURRENCY=64`): wall time, most in flight, TTFT, peak RSS, CPU.
async fn concurrency(fake: &FakeProcess, report: &mut Vec<String>) {
    println!("\n== concurrency: paced answers queued at once, Lambda mode ==");
    for (queued, max) in [(16usize, None), (64, Some(64usize))] {
        let runtime = lambda_runtime::FakeRuntime::start().await;
        let more: Vec<(&'static str, String)> = max
            .map(|m| vec![("AWS_LAMBDA_MAX_CONCURRENCY", m.to_string())])
            .unwrap_or_default();
        let function = lambda_function(proxy_vars(fake), &runtime, &more);
        let pid = function.0.id();
        if !runtime
            .wait_for_polls(max.unwrap_or(1), Duration::from_secs(30))
            .await
        {
            println!("concurrency: the function never polled /next; skipped");
            return;
        }
        // One answer first, so the peak below is the load's, not the start's.
        let _ = queued_at_once(&runtime, 1).await;
        let hwm_ready = status_kb(pid, "VmHWM");
        let before = cpu(pid);
        let line = match queued_at_once(&runtime, queued).await {
            Ok((wall, in_flight, ttfts)) => {
                let (cpu_ms, _) = cpu(pid).since(&before);
                let ttfts = sorted(ttfts);
                format!(
                    "concurrency/{queued} queued, AWS_LAMBDA_MAX_CONCURRENCY={}: wall {:.2} s, at most {in_flight} at once; \
                     TTFT p50 {:.1} ms, p99 {:.1} ms; peak RSS {:.1} MB (after one answer {:.1} MB); CPU {cpu_ms:.0} ms = {:.2} ms per answer",
                    max.map_or("unset".to_string(), |m| m.to_string()),
                    wall.as_secs_f64(),
                    pct(&ttfts, 50.0),
                    pct(&ttfts, 99.0),
                    status_kb(pid, "VmHWM") as f64 / 1024.0,
                    hwm_ready as f64 / 1024.0,
                    cpu_ms / queued as f64,
                )
            }
            Err(e) => format!("concurrency/{queued}: error {e}"),
        };
        println!("{line}");
        report.push(line);
    }
}

/// `cargo lambda watch --release` in its own process group (the function runs in one more
/// group that watch names in its log); both are ended by their ids when dropped.
struct WatchProcess {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl WatchProcess {
    fn start(fake: &FakeProcess, port: u16) -> WatchProcess {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args([
            "lambda",
            "watch",
            "--release",
            "--ignore-changes",
            "--disable-cors",
        ])
        .args(["-A", "127.0.0.1", "-P", &port.to_string()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for knob in [
            "CARGO_TARGET_DIR",
            "RUSTUP_HOME",
            "CARGO_HOME",
            "RUSTUP_TOOLCHAIN",
        ] {
            if let Ok(v) = std::env::var(knob) {
                cmd.env(knob, v);
            }
        }
        for (k, v) in proxy_vars(fake) {
            if k != "SERVER_PORT" {
                cmd.env(k, v);
            }
        }
        cmd.env("AWS_EC2_METADATA_DISABLED", "true");
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("start cargo lambda watch");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                if l.len() < 1 << 20 {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        WatchProcess { child, log }
    }
}

fn kill_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), "--".into(), format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for WatchProcess {
    fn drop(&mut self) {
        let watch = self.child.id();
        kill_group(watch, "TERM");
        std::thread::sleep(Duration::from_millis(500));
        kill_group(watch, "KILL");
        let _ = self.child.wait();
        let log = self.log.lock().unwrap().clone();
        for group in log
            .lines()
            .filter_map(|l| l.split("process group spawned pgid=").nth(1))
            .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        {
            kill_group(group, "KILL");
        }
    }
}

/// The `lambda` comparison through `cargo lambda watch` (its Runtime API and function-URL
/// emulation, release build of the function) against local mode in the same run.
async fn watch(fake: &FakeProcess, runs: usize, report: &mut Vec<String>) {
    println!("\n== watch: one stream at a time, local mode vs cargo lambda watch ==");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut watch = WatchProcess::start(fake, port);
    let local_proxy = Proxy::start(&proxy_vars(fake));
    let local = Target::new(Arm::Proxy, &local_proxy.url);
    let through = Target::new(
        Arm::Proxy,
        &format!("http://127.0.0.1:{port}/lambda-url/opendify"),
    );
    // The first request starts the function (`cargo run --release`, already built).
    let ready = Instant::now();
    while through.run(Answer::Fast).await.is_err() {
        if ready.elapsed() > Duration::from_secs(300) || !matches!(watch.child.try_wait(), Ok(None))
        {
            println!(
                "watch: the function never answered (is cargo-lambda on PATH?); skipped\n{}",
                watch.log.lock().unwrap()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for answer in [Answer::Fast, Answer::Paced] {
        for _ in 0..3 {
            let _ = local.run(answer).await;
            let _ = through.run(answer).await;
        }
        let n = if answer == Answer::Fast {
            FAST_RUNS / 2
        } else {
            runs
        };
        let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        let mut errors = 0;
        for i in 0..n {
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for a in order {
                let r = if a == 0 {
                    local.run(answer).await
                } else {
                    through.run(answer).await
                };
                match r {
                    Ok(s) => samples[a].push(s),
                    Err(e) => {
                        errors += 1;
                        eprintln!("watch {} arm {a}: {e}", answer.name());
                    }
                }
            }
        }
        let med = |a: usize, f: fn(&Sample) -> Duration| {
            median(&samples[a].iter().map(|s| ms(f(s))).collect::<Vec<_>>())
        };
        let (h_ttft, w_ttft) = (med(0, |s| s.ttft), med(1, |s| s.ttft));
        let (h_total, w_total) = (med(0, |s| s.total), med(1, |s| s.total));
        let line = format!(
            "watch/{} (n={n}, errors={errors}): TTFT local {h_ttft:.2}, watch {w_ttft:.2} ms, diff {:+.2} ms; total local {h_total:.1}, watch {w_total:.1} ms, {:+.3} %",
            answer.name(),
            w_ttft - h_ttft,
            (w_total / h_total - 1.0) * 100.0
        );
        println!("{line}");
        report.push(line);
    }
}

/// Kills a child process (by its own PID) when dropped, however the section ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------
// Section: throughput and tail latency under concurrency

struct LoadResult {
    ok: usize,
    errors: usize,
    secs: f64,
    totals: Vec<f64>,
    ttfts: Vec<f64>,
    first_error: Option<String>,
}

async fn run_load(target: Arc<Target>, concurrency: usize, secs: f64) -> LoadResult {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let t = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = (Vec::new(), 0usize, None::<String>);
            while Instant::now() < deadline {
                match t.run(Answer::Fast).await {
                    Ok(s) => out.0.push(s),
                    Err(e) => {
                        out.1 += 1;
                        out.2.get_or_insert(e);
                    }
                }
            }
            out
        }));
    }
    let mut r = LoadResult {
        ok: 0,
        errors: 0,
        secs: 0.0,
        totals: Vec::new(),
        ttfts: Vec::new(),
        first_error: None,
    };
    for task in tasks {
        let (samples, errors, first) = task.await.expect("load task");
        r.ok += samples.len();
        r.errors += errors;
        if r.first_error.is_none() {
            r.first_error = first;
        }
        r.totals.extend(samples.iter().map(|s| ms(s.total)));
        r.ttfts.extend(samples.iter().map(|s| ms(s.ttft)));
    }
    r.secs = started.elapsed().as_secs_f64();
    r.totals = sorted(r.totals);
    r.ttfts = sorted(r.ttfts);
    r
}

async fn load(fake: &FakeProcess, secs: u64, report: &mut Vec<String>) {
    println!("\n== load: closed loop, `fast` answers (81 frames, no pauses) ==");
    for &c in &LOAD_LEVELS {
        let proxy = Proxy::start(&proxy_vars(fake));
        let pid = proxy.pid();
        let hwm_ready = status_kb(pid, "VmHWM");
        let mut rows = Vec::new();
        for arm in [Arm::Direct, Arm::Proxy] {
            let base = if arm == Arm::Direct {
                &fake.base
            } else {
                &proxy.url
            };
            let target = Arc::new(Target::new(arm, base));
            // Warm-up: opens the connections at this concurrency on both hops.
            let _ = run_load(target.clone(), c, 1.0).await;
            let (p0, f0) = (cpu(pid), cpu(fake.pid()));
            let r = run_load(target, c, secs as f64).await;
            let (p_ticks, p_ns) = cpu(pid).since(&p0);
            let (f_ticks, f_ns) = cpu(fake.pid()).since(&f0);
            let rps = r.ok as f64 / r.secs;
            println!(
                "c={c:>3} {arm:?}: {} ok, {} errors, {rps:.0} req/s; total p50 {:.1} ms p99 {:.1} ms; TTFT p50 {:.1} ms p99 {:.1} ms; CPU per request: proxy {:.3} ms (ticks {:.2}), fake {:.3} ms (ticks {:.2})",
                r.ok,
                r.errors,
                pct(&r.totals, 50.0),
                pct(&r.totals, 99.0),
                pct(&r.ttfts, 50.0),
                pct(&r.ttfts, 99.0),
                p_ns / r.ok.max(1) as f64,
                p_ticks / r.ok.max(1) as f64,
                f_ns / r.ok.max(1) as f64,
                f_ticks / r.ok.max(1) as f64,
            );
            if let Some(e) = &r.first_error {
                println!("  first error: {e}");
            }
            rows.push(r);
        }
        let hwm = status_kb(pid, "VmHWM");
        let (d, p) = (&rows[0], &rows[1]);
        let (drps, prps) = (d.ok as f64 / d.secs, p.ok as f64 / p.secs);
        println!(
            "c={c:>3}: proxy/direct throughput {:.2}x; p50 {:.2}x, p99 {:.2}x; proxy VmHWM {hwm} kB (at ready {hwm_ready} kB); log warnings {}",
            prps / drps,
            pct(&p.totals, 50.0) / pct(&d.totals, 50.0),
            pct(&p.totals, 99.0) / pct(&d.totals, 99.0),
            proxy.warnings()
        );
        if proxy.warnings() > 0 {
            println!("proxy log tail:\n{}", proxy.log_tail());
        }
        report.push(format!(
            "load/c={c}: direct {drps:.0} req/s p50 {:.1} p99 {:.1} ms errors {}; proxy {prps:.0} req/s p50 {:.1} p99 {:.1} ms errors {}; throughput ratio {:.2}, p50 ratio {:.2}, p99 ratio {:.2}; proxy peak RSS {:.1} MB",
            pct(&d.totals, 50.0),
            pct(&d.totals, 99.0),
            d.errors,
            pct(&p.totals, 50.0),
            pct(&p.totals, 99.0),
            p.errors,
            prps / drps,
            pct(&p.totals, 50.0) / pct(&d.totals, 50.0),
            pct(&p.totals, 99.0) / pct(&d.totals, 99.0),
            hwm as f64 / 1024.0
        ));
    }
}

// ---------------------------------------------------------------------------
// Section: cold start

/// One HTTP/1.1 exchange on a fresh connection, read to the end: (status, body bytes).
fn http(url: &str, request: &str) -> Result<(u16, Vec<u8>), String> {
    let addr = url.strip_prefix("http://").unwrap_or(url);
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).ok();
    s.write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
    let status = std::str::from_utf8(&out[..out.len().min(12)])
        .ok()
        .and_then(|l| l.get(9..12))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, out))
}

fn models_request() -> String {
    format!(
        "GET /v1/models HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {PROXY_KEY}\r\nConnection: close\r\n\r\n"
    )
}

fn chat_request(chat_id: &str) -> String {
    let body = json!({
        "model": "fast", "stream": true,
        "messages": [{"role": "user", "content": "Summarise the quarterly report."}]
    })
    .to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {PROXY_KEY}\r\nContent-Type: application/json\r\nX-OpenWebUI-Chat-Id: {chat_id}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

struct Cold {
    listening: Vec<f64>,
    models: Vec<f64>,
    chat: Vec<f64>,
    hwm_kb: Vec<f64>,
    warnings: usize,
}

fn cold_runs(vars: &[(&str, String)], tag: &str) -> Result<Cold, String> {
    let mut c = Cold {
        listening: Vec::new(),
        models: Vec::new(),
        chat: Vec::new(),
        hwm_kb: Vec::new(),
        warnings: 0,
    };
    for i in 0..COLD_RUNS {
        let proxy = Proxy::start(vars);
        let t_listen = proxy.listening - proxy.spawned;
        let (status, _) = http(&proxy.url, &models_request())?;
        let t_models = proxy.spawned.elapsed();
        if status != 200 {
            return Err(format!("models: HTTP {status}\n{}", proxy.log_tail()));
        }
        let (status, body) = http(&proxy.url, &chat_request(&format!("{tag}-{i}")))?;
        let t_chat = proxy.spawned.elapsed();
        if status != 200 || !body.windows(12).any(|w| w == b"data: [DONE]") {
            return Err(format!("chat: HTTP {status}\n{}", proxy.log_tail()));
        }
        c.hwm_kb.push(status_kb(proxy.pid(), "VmHWM") as f64);
        c.warnings += proxy.warnings();
        c.listening.push(ms(t_listen));
        c.models.push(ms(t_models));
        c.chat.push(ms(t_chat));
        if i == 0 && proxy.warnings() > 0 {
            println!("{tag}: warnings in the log:\n{}", proxy.log_tail());
        }
    }
    Ok(c)
}

/// Start → exit of each command, interleaved run by run so drift hits all alike.
fn exit_times(commands: &mut [&mut dyn FnMut() -> Command]) -> Vec<Vec<f64>> {
    let mut out = vec![Vec::new(); commands.len()];
    for _ in 0..COLD_RUNS {
        for (make, times) in commands.iter_mut().zip(out.iter_mut()) {
            let mut cmd = make();
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let t0 = Instant::now();
            if let Ok(mut child) = cmd.spawn() {
                let _ = child.wait();
            }
            times.push(ms(t0.elapsed()));
        }
    }
    out
}

fn coldstart(fake: &FakeProcess, rt: &tokio::runtime::Runtime, report: &mut Vec<String>) {
    println!("\n== cold start: process start → ready, {COLD_RUNS} runs each (medians) ==");
    let bin_path = proxy_bin();
    let bin = std::path::Path::new(&bin_path);
    let size = std::fs::metadata(bin).map_or(0, |m| m.len());
    println!(
        "binary size: {size} bytes ({:.1} MiB)",
        size as f64 / 1048576.0
    );
    report.push(format!(
        "binary: {} ({:.1} MiB, release profile as configured)",
        bin.display(),
        size as f64 / 1048576.0
    ));

    let mut truth_cmd = || Command::new("/bin/true");
    // MODEL_CONFIG and PROXY_API_KEYS missing: exits right after validation.
    let mut invalid_cmd =
        || proxy_command(&[("DIFY_API_BASE", "http://127.0.0.1:9/v1".to_string())]);
    let mut times = exit_times(&mut [&mut truth_cmd, &mut invalid_cmd]);
    let invalid = times.pop().unwrap_or_default();
    let truth = times.pop().unwrap_or_default();
    println!(
        "baselines: /bin/true start→exit {:.2} ms; opendify with an invalid config start→exit {:.2} ms",
        median(&truth),
        median(&invalid)
    );

    let memory = match cold_runs(&proxy_vars(fake), "memory") {
        Ok(c) => c,
        Err(e) => {
            println!("cold start (memory store) failed: {e}");
            return;
        }
    };
    let print = |name: &str, c: &Cold| {
        println!(
            "{name}: listening {:.2} ms, first /v1/models answered {:.2} ms, first streamed chat answered {:.2} ms (max {:.2}); VmHWM {:.1} MB; warnings {}",
            median(&c.listening),
            median(&c.models),
            median(&c.chat),
            sorted(c.chat.clone()).last().copied().unwrap_or(f64::NAN),
            median(&c.hwm_kb) / 1024.0,
            c.warnings
        );
    };
    print("memory store", &memory);

    // DynamoDB on a local moto_server (its own process; stopped by PID when dropped).
    let dynamo = rt.block_on(async {
        if !has_moto() {
            return Err("moto_server not found (PATH or .venv-tools/bin)".to_string());
        }
        let moto = moto::Moto::start_owned().await;
        let table = moto.fresh_table().await;
        let mut vars = proxy_vars(fake);
        vars.push(("CONVERSATION_TABLE", table));
        vars.extend(moto.env_vars());
        let r = cold_runs(&vars, "dynamo");
        let warm = warm_store(&proxy_vars(fake), &vars).await;
        moto.stop().await;
        r.map(|c| (c, warm))
    });
    let dynamo = match dynamo {
        Ok((c, (memory_ttft, dynamo_ttft))) => {
            let line = format!(
                "store/warm (n={WARM_RUNS}, one chat id continued, `fast` answers): TTFT median memory store {:.2} ms, DynamoDB store (moto) {:.2} ms, diff {:+.2} ms",
                median(&memory_ttft),
                median(&dynamo_ttft),
                median(&dynamo_ttft) - median(&memory_ttft)
            );
            println!("{line}");
            report.push(line);
            Ok(c)
        }
        Err(e) => Err(e),
    };
    match &dynamo {
        Ok(c) => print("DynamoDB store (moto)", c),
        Err(e) => println!("cold start with DynamoDB skipped: {e}"),
    }
    rt.block_on(lambda_init(fake, report));
    let base = median(&invalid);
    report.push(format!(
        "coldstart baselines: /bin/true {:.2} ms, invalid-config exit {base:.2} ms",
        median(&truth)
    ));
    for (name, c) in [
        ("memory", Some(&memory)),
        ("dynamodb", dynamo.as_ref().ok()),
    ] {
        let Some(c) = c else { continue };
        report.push(format!(
            "coldstart/{name}: listening {:.2} ms, first /v1/models {:.2} ms (= invalid-config exit + {:.2} ms, {:.1}x /bin/true), first streamed chat {:.2} ms; peak RSS {:.1} MB",
            median(&c.listening),
            median(&c.models),
            median(&c.models) - base,
            median(&c.models) / median(&truth),
            median(&c.chat),
            median(&c.hwm_kb) / 1024.0,
        ));
    }
}

/// `events/models.json` with the bench's proxy key.
fn models_event() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/events/models.json");
    let mut event: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("events/models.json"))
            .expect("event JSON");
    event["headers"]["authorization"] = json!(format!("Bearer {PROXY_KEY}"));
    event
}

/// Lambda init, as Lambda sees it: a fresh process behind a fresh fake Runtime API with a
/// `GET /v1/models` and a streamed chat already queued. Per run: process start → the first
/// invocation's response complete, → the second's, and peak RSS.
async fn lambda_init_runs(
    base: &[(&'static str, String)],
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>), String> {
    let (mut first, mut chat, mut hwm) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..COLD_RUNS {
        let runtime = lambda_runtime::FakeRuntime::start().await;
        let models = runtime.invoke_json(&models_event());
        let streamed = runtime.invoke_json(&function_url_event(Answer::Fast));
        let started = Instant::now();
        let function = lambda_function(base.to_vec(), &runtime, &[]);
        let m = runtime.wait_for_response(&models, REQUEST_TIMEOUT).await?;
        let c = runtime
            .wait_for_response(&streamed, REQUEST_TIMEOUT)
            .await?;
        if m.status != 200 || c.status != 200 || !c.body.ends_with(b"data: [DONE]\n\n") {
            return Err(format!(
                "HTTP {} / {}: {}",
                m.status,
                c.status,
                c.body_text()
            ));
        }
        let done = |r: &lambda_runtime::Invocation| {
            ms(r.raw
                .finished
                .unwrap_or(r.delivered)
                .saturating_duration_since(started))
        };
        first.push(done(&m));
        chat.push(done(&c));
        hwm.push(status_kb(function.0.id(), "VmHWM") as f64 / 1024.0);
    }
    Ok((first, chat, hwm))
}

async fn put_ssm_parameter(moto: &moto::Moto, name: &str, value: &str) -> Result<(), String> {
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new(moto::REGION))
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .endpoint_url(moto.endpoint())
        .build();
    aws_sdk_ssm::Client::from_conf(config)
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| format!("put_parameter: {e}"))
}

/// Lambda init with secrets in the environment and the memory store; with the DynamoDB
/// store; with secrets from SSM and the DynamoDB store (moto for both).
async fn lambda_init(fake: &FakeProcess, report: &mut Vec<String>) {
    println!(
        "\n== Lambda init: process start → first invocation answered, {COLD_RUNS} runs each =="
    );
    if !has_moto() {
        println!("Lambda init skipped: moto_server not found");
        return;
    }
    let moto = moto::Moto::start_owned().await;
    let table = moto.fresh_table().await;
    let models_json =
        json!({"paced": KEY_PACED, "fast": KEY_FAST, "realistic": KEY_REALISTIC}).to_string();
    let ssm = async {
        put_ssm_parameter(&moto, "/bench/models", &models_json).await?;
        put_ssm_parameter(&moto, "/bench/keys", PROXY_KEY).await
    };
    if let Err(e) = ssm.await {
        println!("Lambda init skipped: {e}");
        moto.stop().await;
        return;
    }
    let env_memory = proxy_vars(fake);
    let mut env_dynamo = proxy_vars(fake);
    env_dynamo.push(("CONVERSATION_TABLE", table.clone()));
    env_dynamo.extend(moto.env_vars());
    let mut ssm_dynamo: Vec<(&'static str, String)> = proxy_vars(fake)
        .into_iter()
        .filter(|(k, _)| *k != "MODEL_CONFIG" && *k != "PROXY_API_KEYS")
        .collect();
    ssm_dynamo.extend([
        ("MODEL_CONFIG_PARAMETER", "/bench/models".to_string()),
        ("PROXY_API_KEYS_PARAMETER", "/bench/keys".to_string()),
        ("CONVERSATION_TABLE", table),
        ("AWS_ENDPOINT_URL_SSM", moto.endpoint()),
    ]);
    ssm_dynamo.extend(moto.env_vars());
    for (name, vars) in [
        ("env secrets, memory store", env_memory),
        ("env secrets, DynamoDB store", env_dynamo),
        ("SSM secrets, DynamoDB store", ssm_dynamo),
    ] {
        let line = match lambda_init_runs(&vars).await {
            Ok((first, chat, hwm)) => format!(
                "lambda-init/{name}: start → first invocation (GET /v1/models) answered {:.2} ms (p90 {:.2}), → first streamed chat answered {:.2} ms; peak RSS {:.1} MB",
                median(&first),
                pct(&sorted(first.clone()), 90.0),
                median(&chat),
                median(&hwm),
            ),
            Err(e) => format!("lambda-init/{name}: error {e}"),
        };
        println!("{line}");
        report.push(line);
    }
    moto.stop().await;
}

const WARM_RUNS: usize = 30;

/// Warm requests that continue one chat (a GetItem, then a refresh write, per request),
/// memory store vs DynamoDB store, interleaved: the TTFT of each.
async fn warm_store(
    memory_vars: &[(&str, String)],
    dynamo_vars: &[(&str, String)],
) -> (Vec<f64>, Vec<f64>) {
    let proxies = [Proxy::start(memory_vars), Proxy::start(dynamo_vars)];
    let targets: Vec<Target> = proxies
        .iter()
        .map(|p| Target {
            chat_id: Some("bench-chat-1".to_string()),
            ..Target::new(Arm::Proxy, &p.url)
        })
        .collect();
    let mut ttft = [Vec::new(), Vec::new()];
    for i in 0..WARM_RUNS + 3 {
        for (t, out) in targets.iter().zip(ttft.iter_mut()) {
            match t.run(Answer::Fast).await {
                Ok(s) if i >= 3 => out.push(ms(s.ttft)),
                Ok(_) => {}
                Err(e) => eprintln!("warm store request: {e}"),
            }
        }
    }
    let [m, d] = ttft;
    (m, d)
}

fn has_moto() -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| std::path::Path::new(d).join("moto_server").is_file())
}
