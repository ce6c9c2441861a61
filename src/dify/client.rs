//! HTTP client for Dify's service API: start a streaming chat message, read its events,
//! stop its task.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use url::Url;

use super::error::DifyError;
use super::ids;
use super::multipart::upload_form;
use super::sse::EventDecoder;
use super::types::{ChatMessageRequest, DifyEvent, ErrorResponse, RunRequest, UploadedFile};
use crate::apps::{AppMode, InfoResponse};
use crate::deadline::Deadline;
use crate::telemetry::error_chain;

/// How much of an error body we read: enough for any Dify error, bounded for HTML pages.
const MAX_ERROR_BODY: usize = 64 * 1024;
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds on one streamed answer, so a stalled or runaway upstream cannot hold a client
/// (or a Lambda invocation) forever.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Longest silence between two network reads (Dify pings every 10 s while alive).
    pub idle: Duration,
    /// Longest answer, start to end.
    pub total: Duration,
    /// Most bytes read from one answer.
    pub max_bytes: u64,
}

#[derive(Clone)]
pub struct DifyClient {
    pub(super) http: reqwest::Client,
    base: Url,
    pub(super) timeout: Duration,
    pub(super) limits: StreamLimits,
}

impl DifyClient {
    /// `base` must end with `/` (config guarantees it) so joins keep its path.
    pub fn new(base: Url, timeout: Duration, limits: StreamLimits) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            // Idle keep-alive connections outlive a warm Lambda's pause; a short idle
            // timeout avoids reusing a socket the server has already closed.
            .pool_idle_timeout(Duration::from_secs(50))
            // A redirect would resend the app key (and the prompt) to wherever it points;
            // a 3xx is reported instead, naming where DIFY_API_BASE should point.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("opendify/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base,
            timeout,
            limits,
        })
    }

    /// The service API base; relative file URLs in answers resolve against it too.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Starts `POST /chat-messages` in streaming mode. Returns once Dify has sent its
    /// response head (bounded by the configured timeout); the stream that follows is
    /// bounded by [`StreamLimits`].
    pub async fn chat_stream(
        &self,
        app_key: &str,
        request: &ChatMessageRequest,
    ) -> Result<EventStream, DifyError> {
        self.start_stream(app_key, AppMode::Chat, request).await
    }

    /// Starts a completion app's `POST /completion-messages` or a workflow app's
    /// `POST /workflows/run` in streaming mode, like [`DifyClient::chat_stream`].
    pub async fn run_stream(
        &self,
        app_key: &str,
        mode: AppMode,
        request: &RunRequest,
    ) -> Result<EventStream, DifyError> {
        self.start_stream(app_key, mode, request).await
    }

    /// `GET /info`: the app's name, description and mode, bounded by the configured
    /// timeout.
    pub async fn info(&self, app_key: &str) -> Result<InfoResponse, DifyError> {
        let body = self
            .get_body("info", app_key, self.timeout, MAX_ERROR_BODY)
            .await?;
        serde_json::from_slice(&body)
            .map_err(|e| DifyError::Stream(format!("Dify's /info answer is unreadable: {e}")))
    }

    async fn start_stream(
        &self,
        app_key: &str,
        mode: AppMode,
        request: &impl serde::Serialize,
    ) -> Result<EventStream, DifyError> {
        let url = self.url(mode.run_path())?;
        let send = self.http.post(url).bearer_auth(app_key).json(request);
        let response = self.send(send, self.timeout).await?;
        // The request's own deadline (the Lambda invocation's, or the stream limit from
        // the request's start) ends the answer too; outside a request, the limit from now.
        let mut deadline = tokio::time::Instant::now() + self.limits.total;
        let mut limit = format!("the limit of {} s", self.limits.total.as_secs());
        if let Some(request) = Deadline::current() {
            request.mark_started();
            if request.at < deadline {
                deadline = request.at;
                limit = request.describe();
            }
        }
        Ok(EventStream {
            body: Box::pin(response.bytes_stream()),
            decoder: EventDecoder::new(),
            done: false,
            limits: self.limits,
            deadline,
            limit,
            read: 0,
        })
    }

    /// `POST /files/upload` (multipart) as `user`, who alone may then attach it; returns
    /// the upload id (Dify answers 201). Bounded by the configured timeout, body included.
    pub async fn upload(
        &self,
        app_key: &str,
        user: &str,
        filename: &str,
        mime: &str,
        bytes: &[u8],
    ) -> Result<String, DifyError> {
        let file = (filename, mime, bytes);
        let response = self
            .post_file("files/upload", app_key, user, file, self.timeout)
            .await?;
        let status = response.status();
        let endpoint: Box<str> = response.url().path().into();
        let body = tokio::time::timeout(self.timeout, read_limited(response, MAX_ERROR_BODY))
            .await
            .unwrap_or_default();
        match serde_json::from_slice::<UploadedFile>(&body) {
            Ok(file) if !file.id.is_empty() => Ok(file.id),
            _ => Err(DifyError::Http {
                status: status.as_u16(),
                code: String::new(),
                message: format!("HTTP {status} without an uploaded file's id"),
                retry_after: None,
                endpoint,
            }),
        }
    }

    /// `POST` one file as `user` in Dify's multipart form (`/files/upload`,
    /// `/audio-to-text`), sent and checked within `limit`.
    pub(super) async fn post_file(
        &self,
        path: &str,
        app_key: &str,
        user: &str,
        (filename, mime, bytes): (&str, &str, &[u8]),
        limit: Duration,
    ) -> Result<reqwest::Response, DifyError> {
        let form = upload_form(user, filename, mime, bytes);
        let send = self
            .http
            .post(self.url(path)?)
            .bearer_auth(app_key)
            .header(reqwest::header::CONTENT_TYPE, form.content_type)
            .body(form.body);
        self.send(send, limit).await
    }

    /// Stops the task through its app's stop endpoint (`POST /chat-messages/{task_id}/stop`
    /// and the like). Dify always answers success; failures here are only logged, since
    /// the client is already gone.
    pub async fn stop(&self, mode: AppMode, app_key: &str, task_id: &str, user: &str) {
        let Some(task_id) = ids::checked("task_id", task_id) else {
            return;
        };
        let url = match self.url(&mode.stop_path(task_id)) {
            Ok(u) => u,
            Err(_) => return,
        };
        let call = self
            .http
            .post(url)
            .bearer_auth(app_key)
            .json(&serde_json::json!({ "user": user }))
            .send();
        match tokio::time::timeout(STOP_TIMEOUT, call).await {
            Ok(Ok(r)) if r.status().is_success() => {
                tracing::info!(task_id, "stopped the Dify task")
            }
            Ok(Ok(r)) => tracing::warn!(
                task_id,
                status = r.status().as_u16(),
                "Dify refused to stop the task"
            ),
            Ok(Err(e)) => {
                tracing::warn!(task_id, error = %error_chain(&e), "could not stop the Dify task")
            }
            Err(_) => tracing::warn!(task_id, "stopping the Dify task timed out"),
        }
    }

    /// Deletes a conversation of `user` (Dify answers 204), bounded like a stop. Failures
    /// are logged, never surfaced: the answer was already delivered.
    pub async fn delete_conversation(&self, app_key: &str, conversation: &str, user: &str) {
        let Some(conversation) = ids::checked("conversation_id", conversation) else {
            return;
        };
        let Ok(url) = self.url(&format!("conversations/{conversation}")) else {
            return;
        };
        let call = self
            .http
            .delete(url)
            .bearer_auth(app_key)
            .json(&serde_json::json!({ "user": user }))
            .send();
        match tokio::time::timeout(STOP_TIMEOUT, call).await {
            Ok(Ok(r)) if r.status().is_success() => {
                tracing::debug!("deleted a background task's Dify conversation")
            }
            Ok(Ok(r)) => tracing::warn!(
                status = r.status().as_u16(),
                "Dify refused to delete a background task's conversation"
            ),
            Ok(Err(e)) => tracing::warn!(
                error = %error_chain(&e),
                "could not delete a background task's Dify conversation"
            ),
            Err(_) => tracing::warn!("deleting a background task's Dify conversation timed out"),
        }
    }

    /// Sends `request` within `timeout`; a non-success answer is Dify's error.
    pub(super) async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, DifyError> {
        let response = match tokio::time::timeout(timeout, request.send()).await {
            Err(_) => return Err(DifyError::Timeout(timeout)),
            Ok(Err(e)) if e.is_timeout() => return Err(DifyError::Timeout(timeout)),
            Ok(Err(e)) => return Err(DifyError::Unreachable(error_chain(&e))),
            Ok(Ok(r)) => r,
        };
        if response.status().is_redirection() {
            return Err(redirect_error(&response));
        }
        if !response.status().is_success() {
            return Err(self.http_error(response).await);
        }
        Ok(response)
    }

    /// `GET path` with the app's key: the body, at most `limit` bytes, all within
    /// `timeout` (each half: the head, then the body).
    pub(super) async fn get_body(
        &self,
        path: &str,
        app_key: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<Vec<u8>, DifyError> {
        let request = self.http.get(self.url(path)?).bearer_auth(app_key);
        let response = self.send(request, timeout).await?;
        tokio::time::timeout(timeout, read_limited(response, limit))
            .await
            .map_err(|_| DifyError::Timeout(timeout))
    }

    pub(super) fn url(&self, path: &str) -> Result<Url, DifyError> {
        self.base
            .join(path)
            .map_err(|e| DifyError::Unreachable(format!("bad Dify URL for {path}: {e}")))
    }

    pub(super) async fn http_error(&self, response: reqwest::Response) -> DifyError {
        let status = response.status().as_u16();
        let endpoint: Box<str> = response.url().path().into();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = tokio::time::timeout(self.timeout, read_limited(response, MAX_ERROR_BODY))
            .await
            .unwrap_or_default();
        match serde_json::from_slice::<ErrorResponse>(&body) {
            Ok(e) if !e.code.is_empty() => DifyError::Http {
                status,
                code: e.code,
                message: e.message,
                retry_after,
                endpoint,
            },
            _ => DifyError::Http {
                status,
                code: String::new(),
                message: format!("HTTP {status} without a Dify error body"),
                retry_after,
                endpoint,
            },
        }
    }
}

/// The redirect as an error naming its target by path only: a `Location` can carry
/// credentials or a signed query.
fn redirect_error(response: &reqwest::Response) -> DifyError {
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| response.url().join(l).ok())
        .map_or_else(|| "no Location".to_string(), |u| u.path().to_string());
    DifyError::Redirect {
        status: response.status().as_u16(),
        location,
    }
}

pub(super) async fn read_limited(response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    body
}

/// The events of one streaming answer, decoded as they arrive.
pub struct EventStream {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    decoder: EventDecoder,
    done: bool,
    limits: StreamLimits,
    deadline: tokio::time::Instant,
    /// How messages name what `deadline` comes from.
    limit: String,
    read: u64,
}

impl EventStream {
    /// Waits for the next network read and decodes every event it completes into `out`.
    /// Returns false once the stream is over (end of body, or an error pushed last).
    /// Cancel-safe: dropping the future loses no bytes.
    pub async fn next_batch(&mut self, out: &mut Vec<Result<DifyEvent, DifyError>>) -> bool {
        if self.done {
            return false;
        }
        let mut decoded = Vec::new();
        let next = match tokio::time::timeout(self.step_limit(), self.body.next()).await {
            Ok(next) => next,
            Err(_) => {
                self.done = true;
                let why = if tokio::time::Instant::now() >= self.deadline {
                    format!("the answer took longer than {}", self.limit)
                } else {
                    format!("Dify sent nothing for {} s", self.limits.idle.as_secs())
                };
                out.push(Err(DifyError::Stream(why)));
                return false;
            }
        };
        match next {
            Some(Ok(bytes)) => {
                self.read += bytes.len() as u64;
                if self.read > self.limits.max_bytes {
                    self.done = true;
                    out.push(Err(DifyError::Stream(format!(
                        "the answer is larger than the limit of {} bytes",
                        self.limits.max_bytes
                    ))));
                    return false;
                }
                self.decoder.push(&bytes, &mut decoded)
            }
            Some(Err(e)) => {
                self.done = true;
                out.push(Err(DifyError::Stream(format!(
                    "the connection to Dify broke mid-answer: {}",
                    error_chain(&e)
                ))));
                return false;
            }
            None => {
                self.done = true;
                self.decoder.finish(&mut decoded);
            }
        }
        for item in decoded {
            match item {
                Ok(event) if !ids_fit_a_path(&event) => {
                    self.done = true;
                    out.push(Err(DifyError::Stream(
                        "Dify sent a task or conversation id that is not an id".to_string(),
                    )));
                    break;
                }
                Ok(event) => out.push(Ok(event)),
                Err(e) => {
                    self.done = true;
                    out.push(Err(e.into()));
                    break;
                }
            }
        }
        !self.done
    }
}

/// The ids an event names go into URL paths later (the task's stop, a conversation's
/// deletion): one that could change the path makes the stream a protocol error.
fn ids_fit_a_path(event: &DifyEvent) -> bool {
    // An empty id (some events of one-shot apps) names nothing and is never used.
    let fits = |kind, id: Option<&str>| {
        id.filter(|id| !id.is_empty())
            .is_none_or(|id| ids::checked(kind, id).is_some())
    };
    fits("task_id", event.task_id.as_deref())
        && fits("conversation_id", event.conversation_id.as_deref())
}

impl EventStream {
    /// How long one step of the answer may take: the idle limit, or what is left of the
    /// total. Bounds reading from Dify, and also writing to a client that stopped reading.
    pub fn step_limit(&self) -> Duration {
        let left = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        self.limits.idle.min(left)
    }
}
