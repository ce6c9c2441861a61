//! Streaming delivery: Dify's events → pieces → the encoder's bytes → the response body,
//! as they arrive. Generic over the encoder, so every OpenAI API streams the same way.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tokio_stream::wrappers::ReceiverStream;

use super::answer::AnswerRun;
use crate::answer::{Accumulator, StreamEncoder};
use crate::deadline::Deadline;
use crate::dify::EventStream;

/// How long to keep reading an abandoned stream for the task id needed to stop it.
const TASK_ID_GRACE: Duration = Duration::from_secs(10);
/// The close's bound outside Lambda: none in practice (its own steps are bounded).
const UNBOUNDED: Duration = Duration::from_secs(24 * 3600);

/// An SSE response whose body is fed by a background pump.
pub fn stream_answer(
    upstream: EventStream,
    encoder: impl StreamEncoder,
    run: AnswerRun,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    // The pump runs in its own task, outside the request's: it takes the end along.
    let end = Deadline::current().and_then(|d| d.hard);
    tokio::spawn(pump(upstream, encoder, tx, run, end));
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

/// Moves the answer to the client as it arrives: every network read from Dify becomes at
/// most one write to the client, with no timer of our own in between. A client that stops
/// reading gets the same limits as a silent Dify. `end` (the Lambda invocation's) bounds
/// the close too: past it the response would be cut by Lambda anyway, and the work left
/// (the task's stop) is done by the task's drop.
async fn pump(
    mut upstream: EventStream,
    mut encoder: impl StreamEncoder,
    tx: mpsc::Sender<Bytes>,
    mut run: AnswerRun,
    end: Option<Instant>,
) {
    let end = end.unwrap_or_else(|| Instant::now() + UNBOUNDED);
    let mut buf = Vec::new();
    encoder.start(&mut buf);
    let mut answer = Accumulator::without_content();
    let mut items = Vec::new();
    let mut pieces = Vec::new();
    let why = loop {
        if !buf.is_empty() {
            let send = tx.send(Bytes::from(std::mem::take(&mut buf)));
            match tokio::time::timeout(upstream.step_limit(), send).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break "the client went away before the answer was complete",
                Err(_) => break "the client stopped reading the answer",
            }
        }
        if answer.is_over() {
            // The body ends once the stop (if any) and the store writes are done.
            if timeout_at(end, run.close(&answer, encoder.visible_text()))
                .await
                .is_err()
            {
                tracing::warn!(model = %run.model, "the answer's close reached the function's time limit");
            }
            return;
        }
        let more = tokio::select! {
            biased;
            _ = tx.closed() => break "the client went away before the answer was complete",
            more = upstream.next_batch(&mut items) => more,
        };
        run.decode(&mut items, !more, &mut pieces);
        for piece in pieces.drain(..) {
            answer.apply(&piece);
            encoder.encode(piece, &answer, &mut buf);
        }
        if answer.is_over() {
            // The mapping first, then the end of the answer: a client sends its next turn
            // as soon as it has this one, and that turn must find the mapping.
            run.record(&answer, encoder.visible_text()).await;
        }
    };
    tracing::info!(model = %run.model, "{why}");
    // If no frame has named the task yet, read on briefly for it.
    if run.task.task_id().is_none() {
        let task = &mut run.task;
        let grace = end.min(Instant::now() + TASK_ID_GRACE);
        let _ = timeout_at(grace, async {
            while upstream.next_batch(&mut items).await {
                for event in items.drain(..).flatten() {
                    task.learn(event.task_id.as_deref());
                }
                if task.task_id().is_some() {
                    break;
                }
            }
        })
        .await;
    }
    if timeout_at(end, run.finish(false, why)).await.is_err() {
        tracing::warn!(model = %run.model, "the answer's close reached the function's time limit");
    }
}
