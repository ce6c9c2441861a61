//! The real `opendify` binary in local mode: startup validation, startup failures, and
//! what it logs while serving.

mod support;

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::json;
use support::process::{command, refs, start, start_in};
use support::tempdir::TempDir;
use support::{FakeDify, Scenario};

const APP_KEY: &str = "app-binarytest00000000x9f3a";
const PROXY_KEY: &str = "sk-binary-proxy-key-77";
const PROMPT: &str = "my secret prompt about quarterly numbers";

fn valid_vars(dify: &FakeDify) -> Vec<(&'static str, String)> {
    vec![
        ("DIFY_API_BASE", dify.base_url()),
        ("MODEL_CONFIG", format!(r#"{{"my-app":"{APP_KEY}"}}"#)),
        ("PROXY_API_KEYS", PROXY_KEY.to_string()),
    ]
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

/// The most verbose levels, as a plain level and as directives naming the HTTP crates:
/// still no key, no prompt and no answer text in the log.
#[tokio::test]
async fn at_trace_level_logs_hold_no_key_prompt_or_answer() {
    let answer = support::events::fixture_answer("chat-app-stream.sse");
    assert!(answer.len() > 20, "{answer}");
    for (var, level) in [
        ("RUST_LOG", "trace"),
        ("AWS_LAMBDA_LOG_LEVEL", "TRACE"),
        (
            "RUST_LOG",
            "trace,hyper=trace,reqwest=trace,axum=trace,tower_http=trace",
        ),
    ] {
        let dify = FakeDify::start().await;
        let vars = valid_vars(&dify);
        let mut vars = refs(&vars);
        vars.push((var, level));
        let running = start(&vars);
        exercise(&running.url, &dify).await;
        // The last request's line is written as its answer ends: wait for it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while running.log().matches("status=").count() < 5 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = running.log();
        // The level is in force: the request deadline is a debug line.
        assert!(
            log.contains("the request's time limit"),
            "{var}={level}:\n{log}"
        );
        for secret in [
            APP_KEY,
            PROXY_KEY,
            "binarytest",
            PROMPT,
            "quarterly",
            "Bearer",
            answer.as_str(),
        ] {
            assert!(
                !log.contains(secret),
                "{var}={level}: {secret:?} appears in the log:\n{log}"
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

/// How a request names its chat: Open WebUI's header, or `metadata.chat_id`.
#[derive(Clone, Copy)]
enum ChatId<'a> {
    Header(&'a str),
    Metadata(&'a str),
}

async fn ask(url: &str, messages: serde_json::Value, chat_id: &str) -> (u16, String) {
    ask_as(url, messages, ChatId::Header(chat_id), None).await
}

async fn ask_as(
    url: &str,
    messages: serde_json::Value,
    chat: ChatId<'_>,
    user: Option<&str>,
) -> (u16, String) {
    let mut body = json!({"model": "my-app", "messages": messages});
    if let Some(user) = user {
        body["user"] = json!(user);
    }
    let mut request = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(PROXY_KEY);
    match chat {
        ChatId::Header(id) => request = request.header("X-OpenWebUI-Chat-Id", id),
        ChatId::Metadata(id) => body["metadata"] = json!({"chat_id": id}),
    }
    let r = request.json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap();
    (
        status,
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn dynamo_vars(
    dify: &FakeDify,
    moto: &support::moto::Moto,
    table: &str,
) -> Vec<(&'static str, String)> {
    let mut vars = valid_vars(dify);
    vars.push(("CONVERSATION_TABLE", table.to_string()));
    vars.extend(moto.env_vars());
    vars
}

#[tokio::test]
async fn conversation_continues_across_a_cold_start() {
    let moto = support::moto::Moto::shared().await;
    let table = moto.fresh_table().await;
    let dify = FakeDify::start().await;
    dify.set(APP_KEY, Scenario::answer_with_conversations("Hello Ada."));
    let mut vars = dynamo_vars(&dify, moto, &table);
    // Only the chat id can carry the conversation across the restart.
    vars.push(("CONVERSATION_HISTORY_MATCHING", "false".to_string()));
    let chats = [
        ("by-header", ChatId::Header("cold-chat")),
        ("by-metadata", ChatId::Metadata("cold-meta")),
    ];

    let first = start(&refs(&vars));
    assert!(
        first
            .log()
            .contains(&format!("conversations: dynamodb table {table}")),
        "{}",
        first.log()
    );
    let mut answers = Vec::new();
    for (user, chat) in chats {
        let (status, a1) = ask_as(
            &first.url,
            json!([{"role":"user","content":"I am Ada."}]),
            chat,
            Some(user),
        )
        .await;
        assert_eq!(status, 200);
        answers.push(a1);
    }
    drop(first); // the instance goes away: a cold start follows

    let second = start(&refs(&vars));
    for ((user, chat), a1) in chats.into_iter().zip(answers) {
        let history = json!([{"role":"user","content":"I am Ada."},{"role":"assistant","content":a1},{"role":"user","content":"Who am I?"}]);
        let (status, _) = ask_as(&second.url, history, chat, Some(user)).await;
        assert_eq!(status, 200);
        // Dify knows the end user behind the key's tag.
        let dify_user = opendify::config::Tenant::of_key(PROXY_KEY).dify_user(user.to_string());
        let conversation = dify.conversation_ids(APP_KEY, &dify_user);
        assert_eq!(conversation.len(), 1, "{user}");
        let turn2 = dify
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.user() == Some(dify_user.as_str()))
            .unwrap();
        assert_eq!(
            turn2.conversation_id(),
            Some(conversation[0].as_str()),
            "{user}"
        );
        assert_eq!(turn2.query(), Some("Who am I?"), "{user}");
    }
}

/// A streamed turn, read to its end; the answer's text.
async fn ask_streamed(url: &str, messages: serde_json::Value, chat_id: &str, user: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(PROXY_KEY)
        .header("X-OpenWebUI-Chat-Id", chat_id)
        .json(&json!({"model": "my-app", "stream": true, "user": user, "messages": messages}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// Nothing configured but Dify and the keys, as a newcomer runs it: chats are kept in
/// data/opendify.db under the working directory, so a turn sent after the process was
/// killed (SIGKILL: no shutdown, no flush) right after the first answer ended continues
/// the same Dify conversation, streamed or not.
#[tokio::test]
async fn conversation_continues_after_a_kill_with_the_default_store() {
    let dir = TempDir::new("restart");
    let dify = FakeDify::start().await;
    dify.set(APP_KEY, Scenario::answer_with_conversations("Hello Ada."));
    let mut vars = valid_vars(&dify);
    // Only the chat id can carry the conversation across the restart.
    vars.push(("CONVERSATION_HISTORY_MATCHING", "false".to_string()));

    let first = start_in(dir.path(), &refs(&vars));
    assert!(
        first
            .log()
            .contains("conversations: sqlite file data/opendify.db"),
        "{}",
        first.log()
    );
    let turn1 = json!([{"role":"user","content":"I am Ada."}]);
    let (status, blocking) = ask_as(
        &first.url,
        turn1.clone(),
        ChatId::Header("kill-chat"),
        Some("blocking"),
    )
    .await;
    assert_eq!(status, 200);
    let streamed = ask_streamed(&first.url, turn1, "kill-stream", "streamed").await;
    assert_eq!(streamed, "Hello Ada.");
    drop(first); // SIGKILL (std's Child::kill), right after the answers ended
    assert!(dir.path().join("data").join("opendify.db").is_file());

    let second = start_in(dir.path(), &refs(&vars));
    for (user, chat, a1) in [
        ("blocking", "kill-chat", blocking),
        ("streamed", "kill-stream", streamed),
    ] {
        let history = json!([{"role":"user","content":"I am Ada."},{"role":"assistant","content":a1},{"role":"user","content":"Who am I?"}]);
        let (status, _) = ask_as(&second.url, history, ChatId::Header(chat), Some(user)).await;
        assert_eq!(status, 200);
        let dify_user = opendify::config::Tenant::of_key(PROXY_KEY).dify_user(user.to_string());
        let conversation = dify.conversation_ids(APP_KEY, &dify_user);
        assert_eq!(conversation.len(), 1, "{user}: one Dify conversation");
        let turn2 = dify
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.user() == Some(dify_user.as_str()))
            .unwrap();
        assert_eq!(
            turn2.conversation_id(),
            Some(conversation[0].as_str()),
            "{user}: turn 2 continues turn 1's conversation"
        );
        assert_eq!(turn2.query(), Some("Who am I?"), "{user}");
    }
}

/// Under Lambda (AWS_LAMBDA_RUNTIME_API set) without a table, the store is process memory
/// and the start log says why; no file is created. The Runtime API here is a port that
/// refuses connections: the store line is logged before the runtime is reached.
#[test]
fn lambda_without_a_table_keeps_conversations_in_memory_and_says_why() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new("lambdastore");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let runtime_api = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut child = support::process::command_in(
        Some(dir.path()),
        &[
            ("DIFY_API_BASE", "http://127.0.0.1:9/v1"),
            ("MODEL_CONFIG", r#"{"m":"app-xxxxxxxxxxxxxxxxxxxx"}"#),
            ("ALLOW_UNAUTHENTICATED", "true"),
            ("AWS_LAMBDA_RUNTIME_API", &runtime_api),
            ("AWS_LAMBDA_FUNCTION_NAME", "opendify"),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
            ("AWS_REGION", "us-east-1"),
        ],
    )
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log = String::new();
    let store_line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("conversations: ") => break Some(line),
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = store_line.unwrap_or_else(|| panic!("no store line in:\n{log}"));
    assert!(
        line.contains("conversations: in-process memory (on Lambda without CONVERSATION_TABLE: only /tmp is writable there"),
        "{line}"
    );
    assert!(
        line.contains("set CONVERSATION_TABLE to keep chats"),
        "{line}"
    );
    assert!(!dir.path().join("data").exists(), "no store file on Lambda");
}

/// A store file that cannot be created stops the start with the path and the fix, rather
/// than serving with a memory that the next restart would lose.
#[test]
fn an_unusable_store_file_stops_the_start() {
    let dir = TempDir::new("badstore");
    std::fs::write(
        dir.path().join("data"),
        b"a file where the directory should be",
    )
    .unwrap();
    let out = support::process::command_in(
        Some(dir.path()),
        &[
            ("DIFY_API_BASE", "http://127.0.0.1:9/v1"),
            ("MODEL_CONFIG", r#"{"m":"app-xxxxxxxxxxxxxxxxxxxx"}"#),
            ("ALLOW_UNAUTHENTICATED", "true"),
            ("SERVER_PORT", "0"),
        ],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "opendify stopped: could not open the conversation store file data/opendify.db"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("Set CONVERSATION_DB_PATH to a writable file"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[tokio::test]
async fn answers_keep_coming_when_dynamodb_goes_away() {
    let moto = support::moto::Moto::start_owned().await;
    let table = moto.fresh_table().await;
    let dify = FakeDify::start().await;
    dify.set(APP_KEY, Scenario::answer_with_conversations("Still here."));
    let vars = dynamo_vars(&dify, &moto, &table);
    let running = start(&refs(&vars));
    let (status, a1) = ask(
        &running.url,
        json!([{"role":"user","content":"hi"}]),
        "gone-chat",
    )
    .await;
    assert_eq!(status, 200);

    moto.stop().await;
    let history = json!([{"role":"user","content":"hi"},{"role":"assistant","content":a1},{"role":"user","content":"and now?"}]);
    let started = Instant::now();
    let (status, answer) = ask(&running.url, history, "gone-chat").await;
    assert_eq!((status, answer.as_str()), (200, "Still here."));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "store failures are bounded: {:?}",
        started.elapsed()
    );
    // A new conversation with the history folded in: nothing is lost.
    let last = dify.requests().pop().unwrap();
    assert_eq!(last.conversation_id(), None);
    assert_eq!(
        last.query(),
        Some("User: hi\n\nAssistant: Still here.\n\nUser: and now?")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = running.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("conversation store"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning per request, with the cause:\n{log}"
    );
    assert!(
        warnings[0].contains("could not look up the conversation"),
        "{log}"
    );
}

async fn put_parameter(moto: &support::moto::Moto, name: &str, value: &str) {
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new(support::moto::REGION))
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "test", "test", None, None, "test",
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
        .unwrap();
}

fn ssm_vars(moto: &support::moto::Moto) -> Vec<(&'static str, String)> {
    let mut vars = moto.env_vars();
    vars.push(("AWS_ENDPOINT_URL_SSM", moto.endpoint()));
    vars
}

#[tokio::test]
async fn secrets_can_come_from_ssm_parameters() {
    let moto = support::moto::Moto::shared().await;
    let prefix = format!("/opendify-test-{}", std::process::id());
    put_parameter(
        moto,
        &format!("{prefix}/models"),
        &format!(r#"{{"my-app":"{APP_KEY}"}}"#),
    )
    .await;
    put_parameter(moto, &format!("{prefix}/keys"), PROXY_KEY).await;
    let dify = FakeDify::start().await;
    dify.set(APP_KEY, Scenario::replay("chat-app-stream.sse"));
    let mut vars = ssm_vars(moto);
    vars.push(("DIFY_API_BASE", dify.base_url()));
    vars.push(("MODEL_CONFIG_PARAMETER", format!("{prefix}/models")));
    vars.push(("PROXY_API_KEYS_PARAMETER", format!("{prefix}/keys")));
    let running = start(&refs(&vars));

    let client = reqwest::Client::new();
    let r = client
        .get(format!("{}/v1/models", running.url))
        .bearer_auth(PROXY_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("my-app"));
    let r = client
        .post(format!("{}/v1/chat/completions", running.url))
        .bearer_auth(PROXY_KEY)
        .json(&json!({"model":"my-app","messages":[{"role":"user","content":"hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(dify.requests()[0].key, APP_KEY);
    let log = running.log();
    assert!(
        log.contains(&format!(
            "MODEL_CONFIG read from SSM parameter \"{prefix}/models\""
        )),
        "{log}"
    );
    assert!(!log.contains(APP_KEY) && !log.contains(PROXY_KEY), "{log}");
}

#[tokio::test]
async fn unreadable_or_invalid_parameters_are_startup_problems() {
    let moto = support::moto::Moto::shared().await;
    let prefix = format!("/opendify-bad-{}", std::process::id());
    put_parameter(
        moto,
        &format!("{prefix}/models"),
        r#"{"my-app": "not-an-app-key-123456"}"#,
    )
    .await;
    let mut vars = ssm_vars(moto);
    vars.push(("DIFY_API_BASE", "https://api.dify.ai/v1".to_string()));
    vars.push(("MODEL_CONFIG_PARAMETER", format!("{prefix}/models")));
    vars.push(("PROXY_API_KEYS_PARAMETER", format!("{prefix}/missing")));
    vars.push(("DIFY_TIMEOUT_SECONDS", "never".to_string()));
    let out = command(&refs(&vars)).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("configuration is invalid (3 problems)"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("PROXY_API_KEYS_PARAMETER names \"{prefix}/missing\", which does not exist in SSM Parameter Store")), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "MODEL_CONFIG (from SSM parameter \"{prefix}/models\") model \"my-app\": the key"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("DIFY_TIMEOUT_SECONDS is \"never\""),
        "{stderr}"
    );
    assert!(!stderr.contains("not-an-app-key"), "{stderr}");
}

#[test]
fn a_value_and_its_parameter_together_are_refused() {
    let out = command(&[
        ("DIFY_API_BASE", "https://api.dify.ai/v1"),
        ("MODEL_CONFIG", r#"{"m":"app-xxxxxxxxxxxxxxxxxxxx"}"#),
        ("MODEL_CONFIG_PARAMETER", "/x/models"),
        ("ALLOW_UNAUTHENTICATED", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("MODEL_CONFIG and MODEL_CONFIG_PARAMETER are both set: keep one of them"),
        "{stderr}"
    );
}

/// `DIFY_API_BASE` with a user name and password in it.
fn base_with_credentials(dify: &FakeDify) -> String {
    format!("http://someuser:s3cretpw@{}/v1", dify.addr())
}

#[tokio::test]
async fn credentials_in_the_dify_base_are_not_logged() {
    let dify = FakeDify::start().await;
    let mut vars = valid_vars(&dify);
    vars[0].1 = base_with_credentials(&dify);
    let running = start(&refs(&vars));
    let log = running.log();
    assert!(log.contains("models loaded: my-app"), "{log}");
    for secret in ["s3cretpw", "someuser"] {
        assert!(
            !log.contains(secret),
            "{secret:?} appears in the startup log:\n{log}"
        );
    }
}

#[tokio::test]
async fn credentials_in_the_dify_base_never_reach_clients() {
    let dify = FakeDify::start().await;
    // An answer with a file Dify names by a relative URL, which the proxy makes absolute
    // from DIFY_API_BASE.
    let file = json!({
        "event": "message_file",
        "id": "5e2a6c1d-7b3f-4a8e-9c2d-1f6b8a4e3c7d",
        "type": "image",
        "belongs_to": "assistant",
        "url": "/files/tools/a.png",
        "conversation_id": "45701982-8118-4bc5-8e9b-64562b4555f2",
        "task_id": "c3800678-a077-43df-a102-53f23ed20b88",
    });
    let end = json!({
        "event": "message_end",
        "conversation_id": "45701982-8118-4bc5-8e9b-64562b4555f2",
        "message_id": "9da23599-e713-473b-982c-4328d4f5c78a",
        "task_id": "c3800678-a077-43df-a102-53f23ed20b88",
        "id": "9da23599-e713-473b-982c-4328d4f5c78a",
        "metadata": {"usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
    });
    dify.set(
        APP_KEY,
        Scenario::raw([(format!("data: {file}\n\ndata: {end}\n\n"), Duration::ZERO)]),
    );
    let mut vars = valid_vars(&dify);
    vars[0].1 = base_with_credentials(&dify);
    let running = start(&refs(&vars));

    let client = reqwest::Client::new();
    let link = format!("http://{}/files/tools/a.png", dify.addr());
    for stream in [false, true] {
        let r = client
            .post(format!("{}/v1/chat/completions", running.url))
            .bearer_auth(PROXY_KEY)
            .json(&json!({"model": "my-app", "stream": stream, "messages": [{"role": "user", "content": "draw it"}]}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        for secret in ["s3cretpw", "someuser"] {
            assert!(
                !body.contains(secret),
                "stream {stream}: {secret:?} reached the client: {body}"
            );
        }
        // Dify takes the app key as a bearer token; the requests must still carry it.
        assert_eq!(status, 200, "stream {stream}: {body}");
        assert!(
            body.contains(&link),
            "stream {stream}: no link to {link}: {body}"
        );
    }
    let requests = dify.requests();
    assert!(
        requests.iter().all(|r| r.key == APP_KEY),
        "{:?}",
        requests
            .iter()
            .map(|r| &r.authorization)
            .collect::<Vec<_>>()
    );
}
