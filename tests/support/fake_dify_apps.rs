//! The fake's completion and workflow apps, and `GET /info` (a part of `fake_dify`).
//!
//! - `GET /v1/info`: `{"name","description","tags","mode","author_name"}` for a known key
//!   (mode `chat` unless [`FakeDify::set_app`] said otherwise), Dify's 401 otherwise;
//!   every answer waits [`FakeDify::set_info_delay`] first (a slow Dify at cold start).
//! - `POST /v1/completion-messages` and `POST /v1/workflows/run` for keys set with
//!   [`FakeDify::set_app`]; a key of another mode gets Dify's 400 (`app_unavailable`,
//!   `not_workflow_app`), as `/chat-messages` does for these keys (`not_chat_app`).
//! - `POST /v1/completion-messages/{task_id}/stop` (same key and user only) and
//!   `POST /v1/workflows/tasks/{task_id}/stop` (any user, as Dify): always
//!   `{"result": "success"}`; a running generated stream then ends as Dify's does
//!   (`message_end`; `workflow_finished` with status `stopped`).
//!
//! Events, their order and their fields follow dify-api.md §3 and §5: completion frames
//! carry no `conversation_id`; a workflow run starts with a ping and `workflow_started`,
//! streams `text_chunk`s between node events and ends with `workflow_finished`, whose
//! `failed` status is the only sign of a failure (no `error` event).

use axum::routing::get;

use super::*;

/// What a completion or workflow key answers.
#[derive(Clone, Debug)]
pub enum AppRun {
    /// A completion app: one `message` per word of the text, then `message_end`.
    Completion { text: String, delay: Duration },
    /// A workflow app run; see [`WorkflowSpec`].
    Workflow(WorkflowSpec),
    /// The bytes of a fixture (`completion-stream.sse`, `workflow-run-stream.sse`).
    Replay(&'static str),
}

/// A generated workflow run.
#[derive(Clone, Debug)]
pub struct WorkflowSpec {
    /// `text_chunk` texts, in order (none: a run that streams no text).
    pub chunks: Vec<String>,
    /// Pause before each chunk after the first, and before the end.
    pub delay: Duration,
    /// `workflow_finished.data.status`: `succeeded`, `failed`, `stopped`,
    /// `partial-succeeded`; or `paused`: a Human Input node pauses the run
    /// (`human_input_required`, `workflow_paused`, then the body ends).
    pub status: &'static str,
    pub error: Option<String>,
    pub outputs: Value,
    pub total_tokens: u64,
}

impl WorkflowSpec {
    pub fn new(chunks: &[&str], outputs: Value) -> Self {
        WorkflowSpec {
            chunks: chunks.iter().map(|c| c.to_string()).collect(),
            delay: Duration::ZERO,
            status: "succeeded",
            error: None,
            outputs,
            total_tokens: 76,
        }
    }
}

/// One request to `/completion-messages` or `/workflows/run`.
#[derive(Clone, Debug)]
pub struct AppRequest {
    /// `completion-messages` or `workflows/run`.
    pub path: &'static str,
    pub key: String,
    pub body: Value,
}

/// One call to a completion or workflow stop endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppStop {
    /// `completion-messages` or `workflows/tasks`.
    pub path: &'static str,
    pub call: StopCall,
}

#[derive(Default)]
pub(super) struct AppsData {
    pub(super) modes: HashMap<String, &'static str>,
    runs: HashMap<String, AppRun>,
    names: HashMap<String, (String, String)>,
    info_delay: Duration,
    info_missing: bool,
    info_failures: std::collections::VecDeque<u16>,
    info_calls: Vec<String>,
    requests: Vec<AppRequest>,
    stops: Vec<AppStop>,
}

impl FakeDify {
    /// Makes `key` a valid key of an app of Dify mode `mode` (`completion`,
    /// `workflow`, or a chat-family mode for `/info` only) answering with `run`.
    pub fn set_app(&self, key: &str, mode: &'static str, run: AppRun) {
        let mut d = self.shared.lock();
        d.apps.modes.insert(key.to_string(), mode);
        d.apps.runs.insert(key.to_string(), run);
    }

    /// The `name` and `description` `/info` gives for `key`.
    pub fn set_info(&self, key: &str, name: &str, description: &str) {
        self.shared
            .lock()
            .apps
            .names
            .insert(key.to_string(), (name.to_string(), description.to_string()));
    }

    /// Every `/info` answer waits this long (a slow Dify).
    pub fn set_info_delay(&self, delay: Duration) {
        self.shared.lock().apps.info_delay = delay;
    }

    /// `/info` answers 404 (a gateway that exposes only the chat route).
    pub fn set_info_missing(&self, missing: bool) {
        self.shared.lock().apps.info_missing = missing;
    }

    /// The next `/info` calls answer these statuses (Dify's error body), one each, in
    /// order; then `/info` answers as usual (a Dify busy or failing at cold start).
    pub fn set_info_failures(&self, statuses: &[u16]) {
        self.shared.lock().apps.info_failures = statuses.iter().copied().collect();
    }

    /// The bearer token of every `/info` call, in order.
    pub fn info_calls(&self) -> Vec<String> {
        self.shared.lock().apps.info_calls.clone()
    }

    pub fn app_requests(&self) -> Vec<AppRequest> {
        self.shared.lock().apps.requests.clone()
    }

    pub fn app_stops(&self) -> Vec<AppStop> {
        self.shared.lock().apps.stops.clone()
    }

    pub async fn wait_for_app_stop(&self, timeout: Duration) -> Option<AppStop> {
        self.shared
            .wait_for(timeout, |d| d.apps.stops.first().cloned())
            .await
    }
}

pub(super) fn routes(router: Router<Arc<Shared>>) -> Router<Arc<Shared>> {
    router
        .route("/v1/info", get(info).fallback(method_not_allowed))
        .route(
            "/v1/completion-messages",
            post(completion_messages).fallback(method_not_allowed),
        )
        .route(
            "/v1/completion-messages/{task_id}/stop",
            post(stop_completion).fallback(method_not_allowed),
        )
        .route(
            "/v1/workflows/run",
            post(workflows_run).fallback(method_not_allowed),
        )
        .route(
            "/v1/workflows/tasks/{task_id}/stop",
            post(stop_workflow).fallback(method_not_allowed),
        )
}

impl Shared {
    fn app_mode(&self, key: &str) -> Option<&'static str> {
        let d = self.lock();
        match d.apps.modes.get(key) {
            Some(mode) => Some(mode),
            None => d.scenarios.contains_key(key).then_some("chat"),
        }
    }
}

/// `/chat-messages` for a completion or workflow key: Dify's 400.
pub(super) fn refuse_chat(st: &Shared, key: &str) -> Option<Response> {
    matches!(st.app_mode(key), Some("completion" | "workflow")).then(|| {
        error_response(
            400,
            "not_chat_app",
            "Please check if your Chat app mode matches the right API route.",
        )
    })
}

async fn info(State(st): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let token = parse_authorization(header_str(&headers, header::AUTHORIZATION).as_deref());
    let (delay, missing, failure) = {
        let mut d = st.lock();
        d.apps.info_calls.push(token.clone().unwrap_or_default());
        let failure = d.apps.info_failures.pop_front();
        (d.apps.info_delay, d.apps.info_missing, failure)
    };
    if missing {
        return not_found().await;
    }
    if let Some(status) = failure {
        let code = if status == 429 {
            "too_many_requests"
        } else {
            "internal_server_error"
        };
        return plain_response(
            status,
            JSON_CONTENT_TYPE,
            super::dify_error_body(status, code, "Try again later."),
        );
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let key = match token {
        Ok(key) => key,
        Err(msg) => return unauthorized(msg),
    };
    let Some(mode) = st.app_mode(&key) else {
        return unauthorized(MSG_BAD_TOKEN);
    };
    let (name, description) = st
        .lock()
        .apps
        .names
        .get(&key)
        .cloned()
        .unwrap_or_else(|| ("Fake app".to_string(), String::new()));
    let body = serde_json::json!({
        "name": name, "description": description, "tags": [], "mode": mode,
        "author_name": "Fake Author"
    });
    plain_response(200, JSON_CONTENT_TYPE, format!("{body}\n"))
}

async fn completion_messages(
    State(st): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run_app(st, headers, body, "completion-messages").await
}

async fn workflows_run(State(st): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    run_app(st, headers, body, "workflows/run").await
}

async fn run_app(st: Arc<Shared>, headers: HeaderMap, body: Bytes, path: &'static str) -> Response {
    let token = parse_authorization(header_str(&headers, header::AUTHORIZATION).as_deref());
    st.lock().apps.requests.push(AppRequest {
        path,
        key: token.clone().unwrap_or_default(),
        body: serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned())),
    });
    let key = match token {
        Ok(key) if st.app_mode(&key).is_some() => key,
        Ok(_) => return unauthorized(MSG_BAD_TOKEN),
        Err(msg) => return unauthorized(msg),
    };
    let map = match parse_json_object(&headers, &body) {
        Ok(map) => map,
        Err((status, code, message)) => return error_response(status, code, message),
    };
    let Some(user) = user_arg(&map) else {
        return error_response(400, "invalid_param", "Arg user must be provided.");
    };
    // Dify checks a run's inputs against the app's form as it checks a new chat's.
    if let Some(response) = st.params.check_inputs(&key, &map) {
        return response;
    }
    let mode = st.app_mode(&key);
    match (path, mode) {
        ("completion-messages", Some("completion")) | ("workflows/run", Some("workflow")) => {}
        ("completion-messages", _) => {
            return error_response(
                400,
                "app_unavailable",
                "App unavailable, please check your app configurations.",
            );
        }
        _ => {
            return error_response(
                400,
                "not_workflow_app",
                "Please check if your app mode matches the right API route.",
            );
        }
    }
    if !map.get("inputs").is_some_and(Value::is_object) {
        return error_response(400, "invalid_param", "inputs is required");
    }
    if map.get("response_mode").and_then(Value::as_str) != Some("streaming") {
        return error_response(
            500,
            "internal_server_error",
            "fake_dify: only streaming runs are modelled",
        );
    }
    let run = st.lock().apps.runs.get(&key).cloned();
    let task_id = new_uuid();
    match run {
        Some(AppRun::Replay(fixture)) => {
            let bytes = Bytes::from(fixture_bytes(fixture));
            spawn_stream(&st, key, None, SSE_CONTENT_TYPE, move |mut w| async move {
                for piece in split_bytes(bytes, Split::Frames) {
                    w.send(piece).await?;
                }
                Ok(())
            })
        }
        Some(AppRun::Completion { text, delay }) => {
            let guard = st.register_task(&task_id, &key, &user);
            spawn_stream(
                &st,
                key,
                Some(task_id.clone()),
                SSE_CONTENT_TYPE,
                move |w| completion(w, guard, task_id, text, delay),
            )
        }
        Some(AppRun::Workflow(spec)) => {
            // The workflow stop ignores `user`: registered under none.
            let guard = st.register_task(&task_id, &key, "");
            spawn_stream(
                &st,
                key,
                Some(task_id.clone()),
                SSE_CONTENT_TYPE,
                move |w| workflow(w, guard, task_id, spec),
            )
        }
        None => error_response(500, "internal_server_error", "fake_dify: no run set"),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn frame(value: Value) -> Bytes {
    sse_frame(&value.to_string())
}

async fn completion(
    mut w: Writer,
    guard: TaskGuard,
    task_id: String,
    text: String,
    delay: Duration,
) -> Result<(), EndReason> {
    let id = new_uuid();
    let created_at = now();
    let head = |event: &str| {
        serde_json::json!({"event": event, "message_id": id, "created_at": created_at,
            "task_id": task_id, "id": id})
    };
    let end = |completion_tokens: u64| {
        let mut v = head("message_end");
        v["metadata"] = serde_json::json!({"annotation_reply": null, "retriever_resources": [],
            "usage": {"prompt_tokens": 9, "prompt_price": "0.0000014", "completion_tokens": completion_tokens,
                "completion_price": "0.0000012", "total_tokens": 9 + completion_tokens,
                "total_price": "0.0000026", "currency": "USD", "latency": 0.4,
                "time_to_first_token": null, "time_to_generate": null}});
        v["files"] = Value::Null;
        frame(v)
    };
    let mut sent = 0u64;
    for piece in word_pieces(&text) {
        if sent > 0
            && let Err(why) = w.pause(delay, Some(&guard.stop)).await
        {
            if why == EndReason::Stopped {
                w.send(end(sent)).await?;
            }
            return Err(why);
        }
        let mut v = head("message");
        v["answer"] = Value::String(piece);
        v["from_variable_selector"] = Value::Null;
        w.send(frame(v)).await?;
        sent += 1;
    }
    w.send(end(sent)).await
}

async fn workflow(
    mut w: Writer,
    guard: TaskGuard,
    task_id: String,
    spec: WorkflowSpec,
) -> Result<(), EndReason> {
    let run_id = new_uuid();
    let workflow_id = new_uuid();
    let node_id = new_uuid();
    let created_at = now();
    let event = |event: &str, data: Value| {
        frame(
            serde_json::json!({"event": event, "workflow_run_id": run_id,
            "task_id": task_id, "data": data}),
        )
    };
    let finished = |status: &str, error: Option<&str>, outputs: &Value| {
        event(
            "workflow_finished",
            serde_json::json!({"id": run_id, "workflow_id": workflow_id, "status": status,
                "outputs": outputs, "error": error, "elapsed_time": 1.2,
                "total_tokens": spec.total_tokens, "total_steps": 3, "created_by": {"id": new_uuid(), "user": "fake"},
                "created_at": created_at, "finished_at": created_at + 1, "exceptions_count": 0, "files": []}),
        )
    };
    let node = |event_name: &str, status: Option<&str>| {
        let mut data = serde_json::json!({"id": node_id, "node_id": "1784300000002", "node_type": "llm",
            "title": "LLM", "index": 2, "predecessor_node_id": "1784300000001", "inputs": null,
            "created_at": created_at, "extras": {}, "iteration_id": null, "loop_id": null});
        if let Some(status) = status {
            data["status"] = Value::String(status.to_string());
            data["error"] = spec.error.clone().map_or(Value::Null, Value::String);
            data["outputs"] = serde_json::json!({});
        }
        event(event_name, data)
    };
    w.send(Bytes::from_static(b"event: ping\n\n")).await?;
    w.send(event(
        "workflow_started",
        serde_json::json!({"id": run_id, "workflow_id": workflow_id, "inputs": {},
            "created_at": created_at, "reason": "initial"}),
    ))
    .await?;
    w.send(node("node_started", None)).await?;
    for (i, chunk) in spec.chunks.iter().enumerate() {
        if i > 0
            && let Err(why) = w.pause(spec.delay, Some(&guard.stop)).await
        {
            if why == EndReason::Stopped {
                w.send(finished("stopped", Some("Stopped by user."), &Value::Null))
                    .await?;
            }
            return Err(why);
        }
        w.send(event(
            "text_chunk",
            serde_json::json!({"text": chunk, "from_variable_selector": ["1784300000002", "text"]}),
        ))
        .await?;
    }
    if let Err(why) = w.pause(spec.delay, Some(&guard.stop)).await {
        if why == EndReason::Stopped {
            w.send(finished("stopped", Some("Stopped by user."), &Value::Null))
                .await?;
        }
        return Err(why);
    }
    match spec.status {
        "paused" => {
            w.send(event(
                "human_input_required",
                serde_json::json!({"form_id": new_uuid(), "node_id": "1784300000003",
                    "node_title": "Approve", "form_content": "Approve the draft?", "inputs": [], "actions": []}),
            ))
            .await?;
            w.send(event(
                "workflow_paused",
                serde_json::json!({"workflow_run_id": run_id, "paused_nodes": ["1784300000003"],
                    "outputs": {}, "reasons": [], "status": "paused", "created_at": created_at}),
            ))
            .await
        }
        "failed" => {
            w.send(node("node_finished", Some("failed"))).await?;
            w.send(finished("failed", spec.error.as_deref(), &Value::Null))
                .await
        }
        status => {
            w.send(node("node_finished", Some("succeeded"))).await?;
            w.send(finished(status, spec.error.as_deref(), &spec.outputs))
                .await
        }
    }
}

async fn stop_completion(
    State(st): State<Arc<Shared>>,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    stop_app(st, task_id, headers, body, "completion-messages").await
}

async fn stop_workflow(
    State(st): State<Arc<Shared>>,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    stop_app(st, task_id, headers, body, "workflows/tasks").await
}

async fn stop_app(
    st: Arc<Shared>,
    task_id: String,
    headers: HeaderMap,
    body: Bytes,
    path: &'static str,
) -> Response {
    let token = parse_authorization(header_str(&headers, header::AUTHORIZATION).as_deref());
    let user = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.as_object().and_then(user_arg))
        .unwrap_or_default();
    st.lock().apps.stops.push(AppStop {
        path,
        call: StopCall {
            task_id: task_id.clone(),
            user: user.clone(),
            key: token.clone().unwrap_or_default(),
        },
    });
    let key = match token {
        Ok(key) if st.app_mode(&key).is_some() => key,
        Ok(_) => return unauthorized(MSG_BAD_TOKEN),
        Err(msg) => return unauthorized(msg),
    };
    if user.is_empty() {
        return error_response(400, "invalid_param", "Arg user must be provided.");
    }
    // The workflow stop ignores `user`; its tasks are registered under none.
    let owner = if path == "workflows/tasks" { "" } else { &user };
    st.signal_stop(&task_id, &key, owner);
    plain_response(200, JSON_CONTENT_TYPE, "{\"result\": \"success\"}\n")
}
