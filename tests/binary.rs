//! The real `opendify` binary in local mode: startup validation, startup failures, and
//! what it logs while serving.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{FakeDify, Scenario};

const APP_KEY: &str = "app-binarytest00000000x9f3a";
const PROXY_KEY: &str = "sk-binary-proxy-key-77";
const PROMPT: &str = "my secret prompt about quarterly numbers";

fn command(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opendify"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

/// Kills the child (by its own PID) when the test ends, however it ends.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
    url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// Starts the binary on a free port and waits for its "listening on" line.
fn start(vars: &[(&str, &str)]) -> Running {
    let mut all = vec![("SERVER_PORT", "0")];
    all.extend_from_slice(vars);
    let mut child = command(&all).spawn().unwrap();
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
    let url = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no listening line; log:\n{}", log.lock().unwrap()));
    Running { child, log, url }
}

fn valid_vars(dify: &FakeDify) -> Vec<(&'static str, String)> {
    vec![
        ("DIFY_API_BASE", dify.base_url()),
        ("MODEL_CONFIG", format!(r#"{{"my-app":"{APP_KEY}"}}"#)),
        ("PROXY_API_KEYS", PROXY_KEY.to_string()),
    ]
}

fn refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, s)| (*k, s.as_str())).collect()
}

#[test]
fn broken_config_lists_every_problem_and_never_serves() {
    let started = Instant::now();
    let out = command(&[
        ("DIFY_API_BASE", "dify.example.com/v1"),
        ("MODEL_CONFIG", r#"{"a": "sk-notanappkey12345678"}"#),
        ("DIFY_TIMEOUT_SECONDS", "-3"),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("opendify cannot start: configuration is invalid (4 problems):"),
        "{stderr}"
    );
    for needle in [
        "DIFY_API_BASE is \"dify.example.com/v1\"",
        "does not look like a Dify app key",
        "PROXY_API_KEYS is not set",
        "DIFY_TIMEOUT_SECONDS is \"-3\"",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("notanappkey"), "a key leaked:\n{stderr}");
    assert!(!stderr.contains("listening"));
}

#[test]
fn port_in_use_is_reported_plainly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = command(&[
        ("DIFY_API_BASE", "http://127.0.0.1:9/v1"),
        ("MODEL_CONFIG", r#"{"m":"app-xxxxxxxxxxxxxxxxxxxx"}"#),
        ("ALLOW_UNAUTHENTICATED", "true"),
        ("SERVER_PORT", &port),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("could not listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("Address already in use"), "{stderr}");
}

async fn exercise(url: &str, dify: &FakeDify) {
    let client = reqwest::Client::new();
    let chat = format!("{url}/v1/chat/completions");
    dify.set(APP_KEY, Scenario::replay("chat-app-stream.sse"));
    for stream in [false, true] {
        let r = client
            .post(&chat)
            .bearer_auth(PROXY_KEY)
            .json(&json!({"model":"my-app","stream":stream,"messages":[{"role":"system","content":PROMPT},{"role":"user","content":PROMPT}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.text().await;
    }
    // Errors of every kind, including a wrong key that looks almost right.
    let wrong = client
        .get(format!("{url}/v1/models"))
        .bearer_auth(format!("{PROXY_KEY}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    dify.set(APP_KEY, Scenario::error(400, "invalid_param", PROMPT));
    let r = client
        .post(&chat)
        .bearer_auth(PROXY_KEY)
        .json(&json!({"model":"my-app","messages":[{"role":"user","content":PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    dify.set(APP_KEY, Scenario::replay("chat-error-midstream.sse"));
    let r = client
        .post(&chat)
        .bearer_auth(PROXY_KEY)
        .json(
            &json!({"model":"my-app","stream":true,"messages":[{"role":"user","content":PROMPT}]}),
        )
        .send()
        .await
        .unwrap();
    let _ = r.text().await;
}

#[tokio::test]
async fn logs_name_models_but_never_secrets_or_prompts() {
    for level in [None, Some("debug")] {
        let dify = FakeDify::start().await;
        let vars = valid_vars(&dify);
        let mut vars = refs(&vars);
        if let Some(l) = level {
            vars.push(("RUST_LOG", l));
        }
        let running = start(&vars);
        exercise(&running.url, &dify).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = running.log();
        assert!(log.contains("models loaded: my-app"), "{log}");
        assert!(log.contains("auth: 1 proxy key(s) required"), "{log}");
        assert!(
            log.contains("path=\"/v1/chat/completions\" status=200"),
            "{log}"
        );
        for secret in [
            APP_KEY,
            PROXY_KEY,
            "binarytest",
            PROMPT,
            "quarterly",
            "Bearer",
        ] {
            assert!(
                !log.contains(secret),
                "level {level:?}: {secret:?} appears in the log:\n{log}"
            );
        }
    }
}

#[test]
fn stdout_stays_clean() {
    // Nothing but logs on stderr: stdout carries nothing a wrapper would have to filter.
    let mut child = command(&[("MODEL_CONFIG", "{}")]).spawn().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(!child.wait().unwrap().success());
    assert!(out.is_empty(), "{out}");
}
