//! `POST /v1/chat/completions`: read and check the request, start the Dify answer, then
//! either stream it as chunks or aggregate it into one completion.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Map;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::auth::Access;
use super::conversation::ConversationLink;
use super::models::visible_models;
use crate::continuity::thread_for;
use crate::dify::types::ChatMessageRequest;
use crate::dify::{DifyClient, DifyError, EventStream};
use crate::error::ApiError;
use crate::openai::ChatCompletionRequest;
use crate::state::AppState;
use crate::translate::{Aggregator, ChunkMeta, Flow, StreamTranslator, Turn, to_turn};

/// Open WebUI's forwarded user header (sent with ENABLE_FORWARD_USER_INFO_HEADERS=true).
const USER_HEADER: &str = "x-openwebui-user-id";
/// How long to keep reading an abandoned stream for the task id needed to stop it.
const TASK_ID_GRACE: Duration = Duration::from_secs(10);

pub async fn create(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match handle(state, access, headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle(
    state: AppState,
    access: Access,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let config = state.config();
    check_content_type(&headers)?;
    let bytes = read_body(body, config.max_request_bytes).await?;
    let request = parse_request(&bytes)?;
    let Some(model) = config.models.get(&request.model) else {
        return Err(ApiError::ModelNotFound {
            model: request.model.clone(),
            available: visible_models(&state, &access),
        });
    };
    if !access.allows(&request.model) {
        return Err(ApiError::ModelNotAllowed {
            model: request.model.clone(),
        });
    }
    if request.messages.len() > config.max_messages {
        return Err(ApiError::bad_request(
            format!(
                "`messages` has {} entries; this server accepts at most {}.",
                request.messages.len(),
                config.max_messages
            ),
            Some("messages".into()),
        ));
    }
    let user_header = headers.get(USER_HEADER).and_then(|v| v.to_str().ok());
    let turn = to_turn(&request, user_header)?;
    let stream = request.stream.unwrap_or(false);
    let include_usage = stream
        && request
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);

    let chat_id = headers
        .get(&config.chat_id_header)
        .and_then(|v| v.to_str().ok())
        .or_else(|| metadata_str(&request, "chat_id"));
    let thread = thread_for(
        &request.model,
        &turn.user,
        chat_id,
        &turn.history,
        &turn.message,
        config.history_matching,
    );
    let mut link = ConversationLink::new(state.store(), thread, &request.model, &turn.user);
    let continued = link.lookup().await;

    let mut dify_request = ChatMessageRequest {
        // Dify holds the history of a continued conversation: send only the new message.
        query: if continued.is_some() {
            turn.message.clone()
        } else {
            turn.folded_query()
        },
        inputs: Map::new(),
        response_mode: "streaming",
        user: turn.user.clone(),
        conversation_id: continued,
    };
    let app_key = model.app_key.expose().to_string();
    let mut result = state.dify().chat_stream(&app_key, &dify_request).await;
    if dify_request.conversation_id.is_some() && matches!(&result, Err(e) if conversation_gone(e)) {
        // Deleted or expired in Dify: start over once, with the folded history, before
        // anything has reached the client.
        tracing::info!(model = %request.model, "Dify no longer has the stored conversation; starting a new one");
        link.forget().await;
        dify_request.conversation_id = None;
        dify_request.query = turn.folded_query();
        result = state.dify().chat_stream(&app_key, &dify_request).await;
    }
    let upstream = result.map_err(|error| {
        tracing::warn!(model = %request.model, error = %short(&error), "Dify refused the request");
        ApiError::Dify {
            model: request.model.clone(),
            error,
        }
    })?;

    let meta = ChunkMeta {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: crate::unix_now(),
        model: request.model.clone(),
        include_usage,
    };
    let answering = Answering {
        task: TaskHandle {
            dify: state.dify().clone(),
            app_key,
            user: turn.user.clone(),
            task_id: None,
            armed: true,
        },
        link,
        turn,
        started,
    };
    if stream {
        Ok(stream_answer(state, upstream, meta, answering))
    } else {
        aggregate_answer(state, upstream, meta, answering).await
    }
}

fn metadata_str<'a>(request: &'a ChatCompletionRequest, field: &str) -> Option<&'a str> {
    request.metadata.as_ref()?.get(field)?.as_str()
}

/// Dify's answers for a conversation that cannot be continued.
fn conversation_gone(error: &DifyError) -> bool {
    matches!(error, DifyError::Http { status: 404, code, .. } if code == "not_found")
        || matches!(error, DifyError::Http { code, .. } if code == "conversation_completed")
}

/// What an answer in progress needs besides the event stream.
struct Answering {
    task: TaskHandle,
    link: ConversationLink,
    turn: Turn,
    started: Instant,
}

/// JSON, or what quick clients send for it (curl's `-d` says form-urlencoded); anything
/// else (multipart, XML, …) is a mistake worth a clear 415.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let accepted = media == "application/json"
        || media.ends_with("+json")
        || media == "text/plain"
        || media == "application/x-www-form-urlencoded";
    if accepted {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType { media })
    }
}

/// Reads the body up to the configured limit.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(_) => Err(ApiError::bad_request(
            "The request body could not be read.",
            None,
        )),
    }
}

/// JSON syntax errors and type errors get different messages; type errors name the field.
/// Public for the fuzz targets, which must exercise exactly this parsing.
pub fn parse_request(bytes: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "The request body is empty: send a JSON chat completion request with `model` and `messages`.",
            None,
        ));
    }
    // serde would read a struct from an array too; say plainly what the body must be.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::bad_request(
                    "The request body must be a JSON object with `model` and `messages`.",
                    None,
                ),
                Err(e) => {
                    ApiError::bad_request(format!("The request body is not valid JSON: {e}."), None)
                }
            },
        );
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<ChatCompletionRequest, _> =
        serde_path_to_error::deserialize(&mut deserializer);
    match parsed {
        Ok(request) => match deserializer.end() {
            Ok(()) => Ok(request),
            Err(e) => Err(ApiError::bad_request(
                format!("The request body is not valid JSON: {e}."),
                None,
            )),
        },
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_data() {
                let param = (path != ".").then_some(path);
                let at = param
                    .as_deref()
                    .map(|p| format!(" at `{p}`"))
                    .unwrap_or_default();
                Err(ApiError::bad_request(
                    format!("Invalid request{at}: {}.", strip_position(&inner)),
                    param,
                ))
            } else {
                Err(ApiError::bad_request(
                    format!("The request body is not valid JSON: {inner}."),
                    None,
                ))
            }
        }
    }
}

/// serde's data errors end with " at line 1 column 57", which means nothing to a client
/// that sees the field path instead.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Stops the Dify task if the client goes away before the answer is complete.
struct TaskHandle {
    dify: DifyClient,
    app_key: String,
    user: String,
    task_id: Option<String>,
    armed: bool,
}

impl TaskHandle {
    fn learn(&mut self, task_id: Option<&str>) {
        if self.task_id.is_none() {
            self.task_id = task_id.map(str::to_string);
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(task_id) = self.task_id.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (dify, key, user) = (
            self.dify.clone(),
            std::mem::take(&mut self.app_key),
            std::mem::take(&mut self.user),
        );
        tracing::info!(
            task_id,
            "client went away before the answer was complete; stopping the Dify task"
        );
        runtime.spawn(async move { dify.stop(&key, &task_id, &user).await });
    }
}

fn stream_answer(
    state: AppState,
    upstream: EventStream,
    meta: ChunkMeta,
    answering: Answering,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let translator = StreamTranslator::new(meta, state.dify().base().clone());
    tokio::spawn(pump(upstream, translator, tx, answering));
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies in front of a local run not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Moves events from Dify to the client as they arrive: every network read from Dify
/// becomes at most one write to the client, with no added delay.
async fn pump(
    mut upstream: EventStream,
    mut translator: StreamTranslator,
    tx: mpsc::Sender<Bytes>,
    mut answering: Answering,
) {
    let mut events = Vec::new();
    let mut outputs = vec![translator.start()];
    let mut buf = Vec::new();
    let mut ended = false;
    loop {
        for output in outputs.drain(..) {
            output.write_sse(&mut buf);
        }
        if !buf.is_empty()
            && tx
                .send(Bytes::from(std::mem::take(&mut buf)))
                .await
                .is_err()
        {
            break;
        }
        if ended {
            // A stream we cut for a limit leaves Dify running: keep the handle armed so
            // dropping it stops the task.
            if !upstream.was_cut() {
                answering.task.disarm();
            }
            let ms = answering.started.elapsed().as_millis() as u64;
            match translator.error_code() {
                None => {
                    answering.link.on_answer(
                        translator.conversation_id(),
                        &answering.turn.history,
                        &answering.turn.message,
                        translator.visible_text(),
                    );
                    tracing::info!(model = %translator.model(), ms, "stream complete");
                }
                Some(code) => {
                    tracing::warn!(model = %translator.model(), ms, code, "stream ended with an error event")
                }
            }
            // The client has everything; the body closes once the store writes are done.
            answering.link.settle().await;
            return;
        }
        let more = tokio::select! {
            biased;
            _ = tx.closed() => break,
            more = upstream.next_batch(&mut events) => more,
        };
        for item in events.drain(..) {
            if let Err(error) = &item {
                tracing::warn!(error = %short(error), "Dify stream failed mid-answer");
            }
            let flow = translator.on_item(item, &mut outputs);
            answering.task.learn(translator.task_id());
            if let Some(conversation) = translator.conversation_id() {
                answering.link.on_conversation(conversation);
            }
            if flow == Flow::Stop {
                ended = true;
                break;
            }
        }
        if !more && !ended {
            translator.finish(&mut outputs);
            ended = true;
        }
    }
    // The client is gone. If no frame has named the task yet, read on briefly for it.
    let task = &mut answering.task;
    if task.task_id.is_none() {
        let _ = tokio::time::timeout(TASK_ID_GRACE, async {
            while upstream.next_batch(&mut events).await {
                for event in events.drain(..).flatten() {
                    task.learn(event.task_id.as_deref());
                }
                if task.task_id.is_some() {
                    break;
                }
            }
        })
        .await;
    }
    answering.link.settle().await;
    // Dropping `answering.task` (still armed) stops the Dify task.
}

async fn aggregate_answer(
    state: AppState,
    mut upstream: EventStream,
    meta: ChunkMeta,
    mut answering: Answering,
) -> Result<Response, ApiError> {
    // If the client disconnects, axum drops this future and the task handle stops the run.
    let mut aggregator = Aggregator::new(state.dify().base().clone());
    let mut events = Vec::new();
    'read: loop {
        let more = upstream.next_batch(&mut events).await;
        for item in events.drain(..) {
            let flow = aggregator.on_item(item);
            answering.task.learn(aggregator.task_id());
            if let Some(conversation) = aggregator.conversation_id() {
                answering.link.on_conversation(conversation);
            }
            if flow == Flow::Stop {
                break 'read;
            }
        }
        if !more {
            break;
        }
    }
    if !upstream.was_cut() {
        answering.task.disarm();
    }
    let conversation = aggregator.conversation_id().map(str::to_string);
    let response = match aggregator.finish(&meta) {
        Ok(completion) => {
            answering.link.on_answer(
                conversation.as_deref(),
                &answering.turn.history,
                &answering.turn.message,
                &completion.choices[0].message.content,
            );
            tracing::info!(
                model = %meta.model,
                ms = answering.started.elapsed().as_millis() as u64,
                tokens = completion.usage.total_tokens,
                "answer complete"
            );
            (StatusCode::OK, axum::Json(completion)).into_response()
        }
        Err(error) => {
            tracing::warn!(model = %meta.model, error = %short(&error), "Dify failed mid-answer");
            // The run had started: a retry would replay it.
            crate::error::from_dify(&meta.model, &error, true).into_response()
        }
    };
    answering.link.settle().await;
    Ok(response)
}

/// echo request content.
fn short(error: &DifyError) -> String {
    match error {
        DifyError::Http { status, code, .. } => format!("HTTP {status} {code}"),
        DifyError::Event { code, status, .. } => format!("error event {code} ({status:?})"),
        DifyError::Timeout(t) => format!("no response head within {} s", t.as_secs()),
        DifyError::Unreachable(cause) => format!("unreachable: {cause}"),
        DifyError::Stream(cause) => cause.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str) -> (String, Option<String>) {
        match parse_request(body.as_bytes()) {
            Err(ApiError::BadRequest { message, param }) => (message, param),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_and_type_errors_read_differently() {
        let (m, p) = bad("{\"model\": \"x\", ");
        assert!(m.starts_with("The request body is not valid JSON"), "{m}");
        assert_eq!(p, None);
        let (m, p) =
            bad(r#"{"model":"x","messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#);
        assert_eq!(
            m,
            "Invalid request at `stream`: invalid type: string \"yes\", expected a boolean."
        );
        assert_eq!(p.as_deref(), Some("stream"));
        let (m, p) = bad(r#"{"model":"x","messages":[{"role":"robot","content":"hi"}]}"#);
        assert!(
            m.contains("messages[0].role") && m.contains("unknown variant `robot`"),
            "{m}"
        );
        assert_eq!(p.as_deref(), Some("messages[0].role"));
        let (m, _) = bad(r#"{"messages":[]}"#);
        assert!(m.contains("missing field `model`"), "{m}");
        let (m, _) = bad("  ");
        assert!(m.contains("empty"), "{m}");
        let (m, _) = bad(r#"{"model":"x","messages":[]} trailing"#);
        assert!(
            m.contains("not valid JSON") || m.contains("trailing"),
            "{m}"
        );
    }
}
