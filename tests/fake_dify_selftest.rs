//! Checks the fake Dify server itself, over real HTTP with reqwest.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use support::*;

const KEY: &str = "app-selftest-key";
const USER: &str = "user-1";

fn chat(user: &str, query: &str, streaming: bool) -> Value {
    json!({
        "inputs": {},
        "query": query,
        "user": user,
        "response_mode": if streaming { "streaming" } else { "blocking" },
    })
}

async fn post_json(url: String, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(url).json(body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.send().await.expect("request to the fake failed")
}

async fn post_chat(fake: &FakeDify, key: &str, body: &Value) -> reqwest::Response {
    post_json(
        format!("{}/chat-messages", fake.base_url()),
        Some(key),
        body,
    )
    .await
}

async fn post_stop(fake: &FakeDify, key: &str, task_id: &str, user: &str) -> reqwest::Response {
    let url = format!("{}/chat-messages/{task_id}/stop", fake.base_url());
    post_json(url, Some(key), &json!({ "user": user })).await
}

/// Every HTTP chunk of the body with its arrival time.
async fn chunks(mut resp: reqwest::Response) -> Vec<(Bytes, Instant)> {
    let mut out = Vec::new();
    while let Some(c) = resp.chunk().await.expect("body read failed") {
        out.push((c, Instant::now()));
    }
    out
}

fn joined(chunks: &[(Bytes, Instant)]) -> Vec<u8> {
    chunks.iter().flat_map(|(c, _)| c.iter().copied()).collect()
}

/// The JSON of each `data:` frame.
fn frames(body: &[u8]) -> Vec<Value> {
    std::str::from_utf8(body)
        .expect("stream is not UTF-8")
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .map(|j| serde_json::from_str(j).expect("frame is not JSON"))
        .collect()
}

fn answer_of(frames: &[Value]) -> String {
    frames
        .iter()
        .filter(|f| f["event"] == "message")
        .map(|f| f["answer"].as_str().unwrap_or_default())
        .collect()
}

async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body read failed"))
}

#[tokio::test]
async fn replay_every_byte_is_byte_identical() {
    let fake = FakeDify::start().await;
    fake.set(
        KEY,
        Scenario::Replay {
            fixture: "chat-app-stream.sse",
            split: Split::EveryByte,
            delay: Duration::ZERO,
        },
    );
    let resp = post_chat(&fake, KEY, &chat(USER, "hi", true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], SSE_CONTENT_TYPE);
    let got = chunks(resp).await;
    assert_eq!(joined(&got), fixture_bytes("chat-app-stream.sse"));
    assert!(got.len() > 100, "expected many chunks, got {}", got.len());

    let end = fake.wait_for_stream_end(Duration::from_secs(1)).await;
    assert_eq!(end.map(|e| e.reason), Some(EndReason::Completed));
}

#[tokio::test]
async fn replay_every_byte_splits_utf8_characters() {
    let fake = FakeDify::start().await;
    fake.set(
        KEY,
        Scenario::Replay {
            fixture: "agent-chat-stream.sse",
            split: Split::EveryByte,
            delay: Duration::ZERO,
        },
    );
    let got = chunks(post_chat(&fake, KEY, &chat(USER, "hi", true)).await).await;
    assert_eq!(joined(&got), fixture_bytes("agent-chat-stream.sse"));
    assert!(got.iter().any(|(c, _)| std::str::from_utf8(c).is_err()));
}

#[tokio::test]
async fn replay_frames_are_paced() {
    let fake = FakeDify::start().await;
    let delay = Duration::from_millis(30);
    fake.set(
        KEY,
        Scenario::Replay {
            fixture: "chat-app-stream.sse",
            split: Split::Frames,
            delay,
        },
    );
    let got = chunks(post_chat(&fake, KEY, &chat(USER, "hi", true)).await).await;
    assert_eq!(joined(&got), fixture_bytes("chat-app-stream.sse"));
    // One chunk per frame (a frame split by TCP would still end only one chunk).
    let frame_ends = got.iter().filter(|(c, _)| c.ends_with(b"\n\n")).count();
    assert_eq!(frame_ends, 6, "got {} chunks", got.len());
    let span = got[5].1 - got[0].1;
    assert!(span >= delay * 4, "frames arrived within {span:?}");
}

#[tokio::test]
async fn raw_parts_arrive_as_written() {
    let fake = FakeDify::start().await;
    let parts: Vec<(&'static [u8], Duration)> = vec![
        (
            b"data: {\"event\":\"message\",\"answer\":\"\xff\xfe\"}\n\n",
            Duration::ZERO,
        ),
        (b"data: {\"event\":\"mess", Duration::from_millis(80)),
    ];
    fake.set(KEY, Scenario::raw(parts));
    let t0 = Instant::now();
    let got = chunks(post_chat(&fake, KEY, &chat(USER, "hi", true)).await).await;
    let mut want = b"data: {\"event\":\"message\",\"answer\":\"\xff\xfe\"}\n\n".to_vec();
    want.extend_from_slice(b"data: {\"event\":\"mess");
    assert_eq!(joined(&got), want);
    assert!(got.last().map(|(_, t)| *t - t0).unwrap_or_default() >= Duration::from_millis(70));
}

#[tokio::test]
async fn auth_errors_look_like_dify() {
    let fake = FakeDify::start().await;
    fake.set(KEY, Scenario::answer("x"));
    let url = format!("{}/chat-messages", fake.base_url());

    let resp = post_chat(&fake, "app-unknown", &chat(USER, "hi", true)).await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"api\"");
    assert_eq!(resp.headers()["content-type"], JSON_CONTENT_TYPE);
    assert_eq!(
        error_of(resp).await,
        (
            401,
            "{\"code\": \"unauthorized\", \"message\": \"Access token is invalid\", \"status\": 401}\n"
                .to_string()
        )
    );

    let resp = post_json(url.clone(), None, &chat(USER, "hi", true)).await;
    let (status, body) = error_of(resp).await;
    assert_eq!(status, 401);
    assert!(body.contains("Authorization header must be provided and start with 'Bearer'"));

    let resp = reqwest::Client::new()
        .post(url)
        .header("authorization", format!("Basic {KEY}"))
        .json(&chat(USER, "hi", true))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_eq!(status, 401);
    assert!(body.contains("Authorization scheme must be 'Bearer'"));

    let rec = fake.requests();
    assert_eq!(rec.len(), 3);
    assert_eq!(rec[0].key, "app-unknown");
    assert_eq!(rec[0].authorization, "Bearer app-unknown");
    assert_eq!(rec[0].user(), Some(USER));
}

#[tokio::test]
async fn body_validation_looks_like_dify() {
    let fake = FakeDify::start().await;
    fake.set(KEY, Scenario::answer("x"));

    let resp = post_chat(&fake, KEY, &json!({"inputs": {}, "query": "hi"})).await;
    assert_eq!(
        error_of(resp).await,
        (
            400,
            "{\"code\": \"invalid_param\", \"message\": \"Arg user must be provided.\", \"status\": 400}\n"
                .to_string()
        )
    );

    let resp = post_chat(&fake, KEY, &chat(USER, "", true)).await;
    let (status, body) = error_of(resp).await;
    assert_eq!(status, 400);
    assert!(body.contains("\"message\": \"query is required\""));

    let resp = post_chat(&fake, KEY, &json!({"query": "hi", "user": USER})).await;
    let (status, body) = error_of(resp).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 400);
    assert_eq!(v["code"], "invalid_param");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.starts_with("1 validation error for ChatRequestPayload\ninputs\n  Field required"));

    let mut bad_conv = chat(USER, "hi", true);
    bad_conv["conversation_id"] = json!("not-a-uuid");
    let (status, body) = error_of(post_chat(&fake, KEY, &bad_conv).await).await;
    assert_eq!(status, 400);
    assert!(body.contains("conversation_id must be a valid UUID"));

    let resp = reqwest::Client::new()
        .post(format!("{}/chat-messages", fake.base_url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(resp).await,
        (
            400,
            "{\"code\": \"bad_request\", \"message\": \"Invalid JSON payload received or JSON payload is empty.\", \"status\": 400}\n"
                .to_string()
        )
    );

    let resp = reqwest::Client::new()
        .post(format!("{}/chat-messages", fake.base_url()))
        .bearer_auth(KEY)
        .body(chat(USER, "hi", true).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let fake = FakeDify::start().await;
    let resp = reqwest::get(format!("{}/meta", fake.base_url()))
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_eq!(status, 404);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["code"].as_str(), v["status"].as_u64()),
        (Some("not_found"), Some(404))
    );

    let resp = reqwest::get(format!("{}/chat-messages", fake.base_url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn http_error_scenarios() {
    let fake = FakeDify::start().await;
    fake.set("k429", Scenario::fixture_error("too_many_requests"));
    fake.set(
        "k403",
        Scenario::error(403, "forbidden", "The app's API service has been disabled."),
    );
    fake.set("k502", Scenario::html_gateway(502));

    let (status, body) = error_of(post_chat(&fake, "k429", &chat(USER, "hi", true)).await).await;
    assert_eq!(status, 429);
    assert!(
        body.starts_with("{\"code\": \"too_many_requests\", \"message\": \"Too many requests.")
    );
    assert!(body.ends_with(", \"status\": 429}\n"));

    let (status, body) = error_of(post_chat(&fake, "k403", &chat(USER, "hi", true)).await).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "{\"code\": \"forbidden\", \"message\": \"The app's API service has been disabled.\", \"status\": 403}\n"
    );

    let resp = post_chat(&fake, "k502", &chat(USER, "hi", true)).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "text/html");
    assert!(resp.text().await.unwrap().contains("502 Bad Gateway"));
}

#[tokio::test]
async fn sequence_gives_each_request_the_next_scenario() {
    let fake = FakeDify::start().await;
    fake.set(
        KEY,
        Scenario::Sequence(vec![
            Scenario::fixture_error("too_many_requests"),
            Scenario::answer("ok"),
        ]),
    );
    assert_eq!(
        post_chat(&fake, KEY, &chat(USER, "hi", true))
            .await
            .status(),
        429
    );
    assert_eq!(
        post_chat(&fake, KEY, &chat(USER, "hi", true))
            .await
            .status(),
        200
    );
    assert_eq!(
        post_chat(&fake, KEY, &chat(USER, "hi", true))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn stop_is_recorded_and_answers_success() {
    let fake = FakeDify::start().await;
    fake.set(KEY, Scenario::answer("x"));
    let resp = post_stop(&fake, KEY, "task-42", USER).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "{\"result\": \"success\"}\n");
    let want = StopCall {
        task_id: "task-42".into(),
        user: USER.into(),
        key: KEY.into(),
    };
    assert_eq!(fake.stops(), vec![want.clone()]);
    assert_eq!(
        fake.wait_for_stop(Duration::from_millis(10)).await,
        Some(want)
    );

    // Dify checks the key and the user on stop too.
    assert_eq!(
        post_stop(&fake, "app-unknown", "task-42", USER)
            .await
            .status(),
        401
    );
    assert_eq!(post_stop(&fake, KEY, "task-42", "").await.status(), 400);
    assert_eq!(fake.stops().len(), 3);
}

#[tokio::test]
async fn endless_stream_ends_after_stop() {
    let fake = FakeDify::start().await;
    fake.set(
        KEY,
        Scenario::endless("tok ", Duration::from_millis(10), "task-endless"),
    );
    let mut resp = post_chat(&fake, KEY, &chat(USER, "hi", true)).await;
    assert_eq!(resp.status(), 200);
    let mut body = Vec::new();
    for _ in 0..3 {
        body.extend_from_slice(&resp.chunk().await.unwrap().unwrap());
    }

    // A stop from another user is a silent no-op, like Dify.
    assert_eq!(
        post_stop(&fake, KEY, "task-endless", "someone-else")
            .await
            .status(),
        200
    );
    assert_eq!(
        post_stop(&fake, KEY, "task-endless", USER).await.status(),
        200
    );
    let rest = tokio::time::timeout(Duration::from_secs(1), chunks(resp))
        .await
        .expect("stream did not end after stop");
    body.extend(joined(&rest));

    let frames = frames(&body);
    let last = frames.last().unwrap();
    assert_eq!(last["event"], "message_end");
    assert!(last["metadata"]["usage"]["total_tokens"].as_u64().is_some());
    let first = &frames[0];
    assert_eq!(first["event"], "message");
    assert_eq!(first["task_id"], "task-endless");
    assert_eq!(first["answer"], "tok ");
    assert_eq!(first["id"], first["message_id"]);
    assert!(first["from_variable_selector"].is_null());
    assert!(first["created_at"].as_u64().is_some());
    assert!(
        first["conversation_id"]
            .as_str()
            .is_some_and(|c| c.len() == 36)
    );
    assert!(frames.iter().all(|f| f["task_id"] == "task-endless"));

    let end = fake
        .wait_for_stream_end(Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(end.reason, EndReason::Stopped);
    assert_eq!(end.task_id.as_deref(), Some("task-endless"));
}

#[tokio::test]
async fn endless_stream_notices_a_client_that_goes_away() {
    let fake = FakeDify::start().await;
    fake.set(
        KEY,
        Scenario::endless("tok", Duration::from_millis(10), "task-gone"),
    );
    let mut resp = post_chat(&fake, KEY, &chat(USER, "hi", true)).await;
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);
    let end = fake.wait_for_stream_end(Duration::from_secs(1)).await;
    assert_eq!(end.map(|e| e.reason), Some(EndReason::ClientGone));
}

#[tokio::test]
async fn answer_streams_frames_and_usage() {
    let fake = FakeDify::start().await;
    fake.set(KEY, Scenario::answer("The capital of France is Paris."));
    let resp = post_chat(&fake, KEY, &chat(USER, "hi", true)).await;
    assert_eq!(resp.headers()["content-type"], SSE_CONTENT_TYPE);
    let frames = frames(&joined(&chunks(resp).await));
    assert_eq!(frames.len(), 7, "six words and message_end");
    assert_eq!(frames[1]["answer"], " capital");
    assert_eq!(answer_of(&frames), "The capital of France is Paris.");
    let usage = &frames[6]["metadata"]["usage"];
    assert_eq!(usage["prompt_tokens"], AnswerSpec::DEFAULT_PROMPT_TOKENS);
    assert_eq!(
        usage["completion_tokens"],
        AnswerSpec::DEFAULT_COMPLETION_TOKENS
    );
    assert_eq!(usage["total_tokens"], 33);
    assert_eq!(usage["total_price"], "0.0000149");
}

#[tokio::test]
async fn answer_blocking_body() {
    let fake = FakeDify::start().await;
    fake.set(KEY, Scenario::answer("héllo"));
    let resp = post_chat(&fake, KEY, &chat(USER, "hi", false)).await;
    assert_eq!(resp.headers()["content-type"], JSON_CONTENT_TYPE);
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("{\"event\": \"message\", \"task_id\": "));
    assert!(text.contains("\"answer\": \"h\\u00e9llo\""));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["answer"], "héllo");
    assert_eq!(v["mode"], "chat");
    assert_eq!(v["metadata"]["usage"]["total_tokens"], 33);
}

#[tokio::test]
async fn conversations_are_checked_like_dify() {
    let fake = FakeDify::start().await;
    fake.set(KEY, Scenario::answer_with_conversations("hello there"));
    let not_found = (
        404,
        "{\"code\": \"not_found\", \"message\": \"Conversation Not Exists.\", \"status\": 404}\n"
            .to_string(),
    );

    let mut body = chat(USER, "hi", true);
    body["conversation_id"] = json!("7d2f9a61-3b4e-4c8a-b1d5-0e6f2a9c4b37");
    assert_eq!(
        error_of(post_chat(&fake, KEY, &body).await).await,
        not_found
    );

    // A blank id starts a new conversation.
    body["conversation_id"] = json!("");
    let first = frames(&joined(&chunks(post_chat(&fake, KEY, &body).await).await));
    let conv = first[0]["conversation_id"].as_str().unwrap().to_string();
    assert_eq!(fake.conversation_ids(KEY, USER), vec![conv.clone()]);

    body["conversation_id"] = json!(conv);
    let second = frames(&joined(&chunks(post_chat(&fake, KEY, &body).await).await));
    assert!(second.iter().all(|f| f["conversation_id"] == conv.as_str()));
    assert_ne!(second[0]["task_id"], first[0]["task_id"]);

    // Another user cannot use it.
    let mut other = body.clone();
    other["user"] = json!("user-2");
    assert_eq!(
        error_of(post_chat(&fake, KEY, &other).await).await,
        not_found
    );

    assert!(fake.delete_conversation(&conv));
    assert_eq!(
        error_of(post_chat(&fake, KEY, &body).await).await,
        not_found
    );
}

#[tokio::test]
async fn hang_never_answers() {
    let fake = FakeDify::start().await;
    fake.set(KEY, Scenario::Hang);
    let result = reqwest::Client::new()
        .post(format!("{}/chat-messages", fake.base_url()))
        .bearer_auth(KEY)
        .json(&chat(USER, "hi", true))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    let err = result.expect_err("Hang answered");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(
        fake.wait_for_requests(1, Duration::from_millis(10))
            .await
            .len(),
        1
    );
    // The client's timeout closed the connection, and the fake noticed.
    let ends = fake.wait_for_hang_ends(1, Duration::from_secs(5)).await;
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(
        (ends[0].key.as_str(), ends[0].reason),
        (KEY, EndReason::ClientGone)
    );
    assert!(ends[0].held >= Duration::from_millis(250), "{ends:?}");
}

#[tokio::test]
async fn parameters_serve_the_input_form_and_chat_messages_enforce_it() {
    let fake = FakeDify::start().await;
    let resp = reqwest::get(format!("{}/parameters", fake.base_url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "a key is needed, as in Dify");

    fake.set(KEY, Scenario::answer("ok"));
    let form = json!([{"text-input": {"variable": "topic", "label": "Topic", "required": true}}]);
    fake.set_input_form(KEY, form.clone());
    let resp = reqwest::Client::new()
        .get(format!("{}/parameters", fake.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["user_input_form"], form);
    assert_eq!(v["file_upload"]["image"]["enabled"], true);
    assert_eq!(fake.parameters_calls(KEY), 1);

    let resp = reqwest::Client::new()
        .post(format!("{}/chat-messages", fake.base_url()))
        .bearer_auth(KEY)
        .json(&chat(USER, "hi", true))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(resp).await,
        (
            400,
            "{\"code\": \"invalid_param\", \"message\": \"topic is required in input form\", \"status\": 400}\n"
                .to_string()
        )
    );
}

/// Status, code and message of a Dify error body.
async fn dify_error(resp: reqwest::Response) -> (u16, String, String) {
    let (status, text) = error_of(resp).await;
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (status, field("code"), field("message"))
}

async fn upload(
    fake: &FakeDify,
    user: &str,
    filename: &str,
    mime: &str,
    bytes: &[u8],
) -> reqwest::Response {
    let form = opendify::dify::multipart::upload_form(user, filename, mime, bytes);
    reqwest::Client::new()
        .post(format!("{}/files/upload", fake.base_url()))
        .bearer_auth(KEY)
        .header("content-type", form.content_type)
        .body(form.body)
        .send()
        .await
        .expect("request to the fake failed")
}

fn with_file(user: &str, file: Value) -> Value {
    let mut body = chat(user, "What is this?", true);
    body["files"] = json!([file]);
    body
}

#[tokio::test]
async fn uploads_belong_to_their_user_and_app() {
    let fake = FakeDify::start().await;
    fake.set(KEY, Scenario::answer("A dot."));
    let resp = upload(&fake, USER, "dot.png", "image/png", b"\x89PNG").await;
    assert_eq!(resp.status(), 201);
    let stored: Value = resp.json().await.unwrap();
    let id = stored["id"].as_str().unwrap().to_string();
    assert_eq!(
        (stored["name"].as_str(), stored["size"].as_u64()),
        (Some("dot.png"), Some(4))
    );
    assert_eq!(fake.uploads()[0].user, USER);

    let local = json!({"type": "image", "transfer_method": "local_file", "upload_file_id": id});
    // Another user of the same app may not attach it.
    let (status, code, msg) =
        dify_error(post_chat(&fake, KEY, &with_file("user-2", local.clone())).await).await;
    assert_eq!(
        (status, code.as_str(), msg.as_str()),
        (400, "invalid_param", "Invalid upload file id")
    );
    // Declared as another type than its extension says.
    let mut wrong = local.clone();
    wrong["type"] = json!("document");
    let (status, _) = error_of(post_chat(&fake, KEY, &with_file(USER, wrong)).await).await;
    assert_eq!(status, 400);
    // Its uploader may; on 1.12.x the text chunks then come as `message_file`.
    let resp = post_chat(&fake, KEY, &with_file(USER, local)).await;
    assert_eq!(resp.status(), 200);
    let f = frames(&joined(&chunks(resp).await));
    assert_eq!(f[0]["event"], "message_file");
    assert_eq!(f[0]["answer"], "A");
    let remote = json!({"type": "image", "transfer_method": "remote_url", "url": "ftp://x/y.png"});
    let (status, _, msg) = dify_error(post_chat(&fake, KEY, &with_file(USER, remote)).await).await;
    assert_eq!((status, msg.as_str()), (400, "Invalid file url"));
}

#[tokio::test]
async fn upload_refusals_look_like_dify() {
    let fake = FakeDify::start().await;
    fake.set(KEY, Scenario::answer("x"));
    let big = vec![0u8; 10 * 1024 * 1024 + 1];
    let (status, code, msg) =
        dify_error(upload(&fake, USER, "big.png", "image/png", &big).await).await;
    assert_eq!(
        (status, code.as_str(), msg.as_str()),
        (413, "file_too_large", "")
    );
    // The same size is fine for a document (15 MB).
    assert_eq!(
        upload(&fake, USER, "big.pdf", "application/pdf", &big)
            .await
            .status(),
        201
    );
    let (status, code, _) = dify_error(upload(&fake, USER, "", "image/png", b"x").await).await;
    assert_eq!((status, code.as_str()), (400, "filename_not_exists_error"));
    let (status, code, _) = dify_error(upload(&fake, USER, "x.png", "", b"x").await).await;
    assert_eq!((status, code.as_str()), (415, "unsupported_file_type"));
    let resp = reqwest::Client::new()
        .post(format!("{}/files/upload", fake.base_url()))
        .bearer_auth(KEY)
        .json(&json!({"user": USER}))
        .send()
        .await
        .unwrap();
    let (status, code, _) = dify_error(resp).await;
    assert_eq!((status, code.as_str()), (400, "no_file_uploaded"));
}

async fn post_audio(
    fake: &FakeDify,
    key: &str,
    filename: &str,
    mime: &str,
    bytes: &[u8],
) -> reqwest::Response {
    let form = opendify::dify::multipart::upload_form(USER, filename, mime, bytes);
    reqwest::Client::new()
        .post(format!("{}/audio-to-text", fake.base_url()))
        .bearer_auth(key)
        .header("content-type", form.content_type)
        .body(form.body)
        .send()
        .await
        .expect("request to the fake failed")
}

#[tokio::test]
async fn text_to_audio_checks_like_dify_and_streams_mp3() {
    let fake = FakeDify::start().await;
    let url = format!("{}/text-to-audio", fake.base_url());
    let tts = |key: &'static str, body: Value| {
        let url = url.clone();
        async move { post_json(url, Some(key), &body).await }
    };
    // Unknown key, then no text, then the feature off: Dify's order and bodies.
    let (status, code, _) = dify_error(tts("app-unknown", json!({"text": "Hi"})).await).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    fake.set_speech(
        KEY,
        SpeechApp {
            hold_after_first: true,
            ..SpeechApp::default()
        },
    );
    let (status, code, message) = dify_error(tts(KEY, json!({"user": USER})).await).await;
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (400, "invalid_param", "Text is required")
    );
    fake.set_speech(
        "app-mute",
        SpeechApp {
            text_to_speech: false,
            ..SpeechApp::default()
        },
    );
    let (status, code, message) =
        dify_error(tts("app-mute", json!({"text": "Hi", "voice": "alloy"})).await).await;
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (400, "invalid_param", "TTS is not enabled")
    );

    // The first chunk arrives while the rest is held.
    let mut r = tts(KEY, json!({"text": "Hi", "user": USER, "streaming": true})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/mpeg");
    let first = tokio::time::timeout(Duration::from_secs(20), r.chunk())
        .await
        .expect("first chunk before the release")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], &SpeechApp::default().audio[0][..]);
    fake.release_audio();
    let rest = joined(&chunks(r).await);
    assert_eq!(rest, SpeechApp::default().audio[1]);
    let calls = fake.audio_calls();
    let last = calls.last().unwrap();
    assert_eq!(last.user.as_deref(), Some(USER));
    assert_eq!(last.body["streaming"], true);
}

#[tokio::test]
async fn audio_to_text_checks_like_dify() {
    let fake = FakeDify::start().await;
    fake.set_speech(KEY, SpeechApp::default());
    fake.set_speech(
        "app-deaf",
        SpeechApp {
            speech_to_text: false,
            ..SpeechApp::default()
        },
    );
    let r = post_audio(&fake, KEY, "a.mp3", "audio/mp3", b"ID3 frames").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"text": SpeechApp::default().transcript}));
    let call = fake.audio_calls().pop().unwrap();
    assert_eq!(call.user.as_deref(), Some(USER));
    assert_eq!(
        call.file,
        Some((
            "a.mp3".to_string(),
            "audio/mp3".to_string(),
            Bytes::from_static(b"ID3 frames")
        ))
    );

    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("app-deaf", "audio/mp3", b"x".to_vec(), 400, "invalid_param"),
        (
            KEY,
            "audio/mpeg",
            b"x".to_vec(),
            415,
            "unsupported_audio_type",
        ),
        (
            KEY,
            "audio/ogg",
            b"x".to_vec(),
            415,
            "unsupported_audio_type",
        ),
        (
            KEY,
            "audio/wav",
            vec![0; AUDIO_LIMIT + 1],
            413,
            "audio_too_large",
        ),
        (
            KEY,
            "audio/wav",
            Vec::new(),
            400,
            "completion_request_error",
        ),
    ];
    for (key, mime, bytes, status, code) in cases {
        let (got, got_code, message) =
            dify_error(post_audio(&fake, key, "a", mime, &bytes).await).await;
        assert_eq!(
            (got, got_code.as_str()),
            (status, code),
            "{mime}: {message}"
        );
    }
    // No `file` part: werkzeug's KeyError.
    let r = reqwest::Client::new()
        .post(format!("{}/audio-to-text", fake.base_url()))
        .bearer_auth(KEY)
        .json(&json!({"user": USER}))
        .send()
        .await
        .unwrap();
    let (status, code, _) = dify_error(r).await;
    assert_eq!((status, code.as_str()), (400, "bad_request_key_error"));
}

#[tokio::test]
async fn parameters_report_the_speech_settings() {
    let fake = FakeDify::start().await;
    fake.set_speech(
        KEY,
        SpeechApp {
            speech_to_text: false,
            voice: "echo".into(),
            ..SpeechApp::default()
        },
    );
    let r = reqwest::Client::new()
        .get(format!("{}/parameters", fake.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["speech_to_text"]["enabled"], false);
    assert_eq!(v["text_to_speech"]["enabled"], true);
    assert_eq!(v["text_to_speech"]["voice"], "echo");
}
