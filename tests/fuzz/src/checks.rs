//! Properties the fuzz targets check on every input. Shared, verbatim, by the fuzz crate
//! (`tests/fuzz/src/lib.rs`) and by the main crate's `tests/fuzz_regressions.rs`, which
//! replays crashing inputs and the seed corpora through the same functions on stable.
//!
//! A property that does not hold panics with a message saying which one; libFuzzer then
//! saves the input as a crash.

use opendify::answer::{Accumulator, DifyDecoder, Flow, Piece};
use opendify::conversation::{Thread, is_background_task, thread_for};
use opendify::dify::sse::{DecodeError, EventDecoder, decode_all};
use opendify::dify::{DifyError, DifyEvent};
use opendify::error::{ApiError, ClientError};
use opendify::openai::chat::{ChunkEncoder, ChunkMeta, Output, completion, content_text};
use opendify::openai::responses::ResponsesRequest;
use opendify::openai::{
    ChatCompletionChunk, ChatCompletionRequest, FinishReason, Role, UsageField,
};
use opendify::plan::files::{Attachment, Source};
use opendify::plan::to_turn;
use serde_json::Value;
use url::Url;

// ---------------------------------------------------------------------------------------
// request: body bytes → ChatCompletionRequest → Turn → Dify query and thread key; the same
// bytes as a Responses API body → Turn
// ---------------------------------------------------------------------------------------

/// A Responses body: refused with a client error naming a field, or a turn with a
/// non-empty message for a new or a continued conversation.
fn responses_request(data: &[u8]) {
    // Through the route's own parsing (bounded structure, typed fields); it only adds
    // checks on top of serde's.
    let request = match opendify::routes::parse_responses_request(data) {
        Ok(request) => {
            assert!(
                serde_json::from_slice::<ResponsesRequest>(data).is_ok(),
                "the route accepted a Responses body serde rejects"
            );
            request
        }
        Err(e) => {
            check_client_error(&e);
            return;
        }
    };
    if let Err(e) = opendify::plan::responses::check_supported(&request) {
        check_client_error(&e);
        return;
    }
    for continues in [false, true] {
        match opendify::plan::responses::to_turn(&request, Some(" h "), continues) {
            Ok(turn) => {
                assert!(!turn.message.trim().is_empty(), "empty message accepted");
                assert!(!turn.user.is_empty() && turn.user.trim() == turn.user);
                if continues {
                    assert!(turn.history.is_empty(), "a continued turn resends history");
                }
                let query = turn.chat_message(None, false).query;
                assert!(query.ends_with(&turn.message));
                check_remote_urls(&turn.files);
            }
            Err(e) => {
                // Refused by field: a bad request, or an attached file too large (413) or
                // of a type that cannot go there (415).
                assert!(
                    matches!(
                        e,
                        ApiError::BadRequest { param: Some(_), .. }
                            | ApiError::FileTooLarge { .. }
                            | ApiError::UnsupportedFile { .. }
                    ),
                    "{e:?}"
                );
                check_client_error(&e);
            }
        }
    }
}

/// The route's own body parsing.
fn parse_like_the_route(bytes: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    opendify::routes::parse_request(bytes)
}

/// `REMOTE_FILE_URLS`: `any` lets every file through, `off` refuses any remote one, and
/// `public` refuses exactly those whose host is internal, naming the URL's field.
fn check_remote_urls(files: &[Attachment]) {
    use opendify::plan::remote_url::{RemoteFileUrls, check, internal_host};
    assert!(check(files, RemoteFileUrls::Any).is_ok());
    let remote: Vec<(&str, &str, &str)> = files
        .iter()
        .filter_map(|f| match &f.source {
            Source::Remote { url, param } => Some((f.part.as_str(), url.as_str(), param.as_str())),
            _ => None,
        })
        .collect();
    for (part, url, param) in &remote {
        assert!(param.starts_with(part), "{param} is not within {part}");
        assert!(Url::parse(url).is_ok(), "remote URL {url:?} does not parse");
    }
    let first_internal = remote
        .iter()
        .find(|(_, url, _)| internal_host(url).is_some());
    for (policy, refused) in [
        (RemoteFileUrls::Off, remote.first()),
        (RemoteFileUrls::Public, first_internal),
    ] {
        match (check(files, policy), refused) {
            (Ok(()), None) => {}
            (Err(e), Some((_, _, param))) => {
                assert!(
                    matches!(&e, ApiError::RemoteUrlRefused { param: p, .. } if p == param),
                    "{e:?}"
                );
                check_client_error(&e);
            }
            (result, expected) => {
                panic!("{policy:?}: {result:?}, expected refusal of {expected:?}")
            }
        }
    }
}

/// Every client-facing error must serialize to a one-line OpenAI error body.
fn check_client_error(error: &ApiError) {
    let client = ClientError::from(error);
    assert!(
        client.status.is_client_error() || client.status.is_server_error(),
        "error with status {}",
        client.status
    );
    let json = serde_json::to_string(&client.body).expect("error bodies serialize");
    assert!(!json.contains('\n'), "multi-line error body: {json}");
    assert!(!client.body.error.message.is_empty(), "empty error message");
}

pub fn request(data: &[u8]) {
    responses_request(data);
    let routed = parse_like_the_route(data);
    let plain = serde_json::from_slice::<ChatCompletionRequest>(data);
    // The route only adds checks (object, no trailing bytes) on top of serde.
    if routed.is_ok() {
        assert!(plain.is_ok(), "the route accepted a body serde rejects");
    }
    let request = match (routed, plain) {
        (Ok(r), _) => r,
        (Err(e), Ok(r)) => {
            check_client_error(&e);
            // serde alone also reads a struct from an array: translate those too.
            r
        }
        (Err(e), Err(_)) => {
            check_client_error(&e);
            return;
        }
    };

    let chat_id = request
        .metadata
        .as_ref()
        .and_then(|m| m.get("chat_id"))
        .and_then(Value::as_str);
    for header in [None, Some("  header-user ")] {
        let turn = match to_turn(&request, header) {
            Ok(turn) => turn,
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        ApiError::BadRequest { .. }
                            | ApiError::FileTooLarge { .. }
                            | ApiError::UnsupportedFile { .. }
                    ),
                    "to_turn gave {e:?}"
                );
                check_client_error(&e);
                continue;
            }
        };
        assert!(!turn.message.trim().is_empty(), "empty message accepted");
        check_remote_urls(&turn.files);
        assert!(
            !turn.user.is_empty() && turn.user.trim() == turn.user,
            "bad user {:?}",
            turn.user
        );
        assert!(
            turn.history.iter().all(|(_, t)| !t.trim().is_empty()),
            "blank history entry kept"
        );
        assert!(turn.history.len() < request.messages.len());
        let query = turn.folded_query();
        if turn.history.is_empty() {
            assert_eq!(query, turn.message);
        } else {
            assert!(query.ends_with(&format!("User: {}", turn.message)));
            assert!(query.len() > turn.message.len());
        }
        for continued in [None, Some("c0ffee".to_string())] {
            let body = turn.chat_message(continued.clone(), false);
            assert_eq!(
                &body.query,
                if continued.is_some() {
                    &turn.message
                } else {
                    &query
                },
                "a continued conversation gets only the new message"
            );
            serde_json::to_vec(&body).expect("Dify request serializes");
        }

        for history_matching in [true, false] {
            let thread = thread_for(
                "tenant",
                &request.model,
                &turn.user,
                &turn.identity(),
                chat_id,
                &turn.history,
                &turn.message,
                history_matching,
            );
            let has_chat_id = chat_id.is_some_and(|c| !c.trim().is_empty());
            match &thread {
                Thread::Detached => assert!(is_background_task(&turn.message)),
                Thread::Chat { key } => {
                    assert!(has_chat_id);
                    assert!(key.starts_with("chat#") && key.len() == 5 + 64, "{key}");
                }
                Thread::History { lookup } => {
                    assert!(history_matching && !has_chat_id);
                    let has_turns = turn
                        .history
                        .iter()
                        .any(|(r, _)| !matches!(r, Role::System | Role::Developer));
                    assert_eq!(lookup.is_some(), has_turns);
                    if let Some(key) = lookup {
                        assert!(key.starts_with("hist#") && key.len() == 5 + 64, "{key}");
                    }
                }
                Thread::Untracked => assert!(!history_matching && !has_chat_id),
                Thread::Response { .. } => panic!("a chat request threaded by a response id"),
            }
            if !matches!(thread, Thread::Detached) {
                assert!(!is_background_task(&turn.message));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// sse_frames: any split of the bytes decodes to the same events as the whole
// ---------------------------------------------------------------------------------------

/// Input layout: byte 0 (mod 16) = number of cuts `n`; the next `n` bytes are the lengths
/// of the first `n` network reads (0 = an empty read); the rest is the SSE stream, and
/// whatever the cuts leave is the last read. An input too short for its header is all
/// stream, read whole.
fn split_schedule(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let n = usize::from(first % 16);
    if rest.len() < n {
        return (Vec::new(), data);
    }
    let (lengths, stream) = rest.split_at(n);
    (lengths.iter().map(|&l| usize::from(l)).collect(), stream)
}

/// Feeds `stream` in the given pieces the way `EventStream::next_batch` does: push each
/// read, stop at the first error, `finish` at the end of the body.
fn decode_in_pieces(lengths: &[usize], stream: &[u8]) -> Vec<Result<DifyEvent, DecodeError>> {
    let mut decoder = EventDecoder::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut pieces: Vec<&[u8]> = Vec::new();
    for &len in lengths {
        let (piece, tail) = rest.split_at(len.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);
    for piece in pieces {
        decoder.push(piece, &mut out);
        if matches!(out.last(), Some(Err(_))) {
            return out;
        }
    }
    decoder.finish(&mut out);
    out
}

fn check_one_error_at_most_and_last(events: &[Result<DifyEvent, DecodeError>], what: &str) {
    if let Some(i) = events.iter().position(Result::is_err) {
        assert_eq!(i, events.len() - 1, "{what}: events after a decode error");
    }
}

pub fn sse_frames(data: &[u8]) {
    let (lengths, stream) = split_schedule(data);
    let whole = decode_all(stream);
    check_one_error_at_most_and_last(&whole, "whole");
    let pieces = decode_in_pieces(&lengths, stream);
    check_one_error_at_most_and_last(&pieces, "pieces");
    assert_eq!(
        pieces, whole,
        "split into reads of {lengths:?} (+ rest) the stream decodes differently"
    );
    // Byte by byte is the most extreme schedule; inputs are small enough to afford it.
    if stream.len() <= 4096 {
        let ones = vec![1; stream.len()];
        assert_eq!(
            decode_in_pieces(&ones, stream),
            whole,
            "byte-by-byte decoding differs"
        );
    }
}

// ---------------------------------------------------------------------------------------
// translate: events → SSE for streaming clients, and → one completion; both must agree
// ---------------------------------------------------------------------------------------

const MODEL: &str = "fuzz-app";

fn meta(include_usage: bool) -> ChunkMeta {
    ChunkMeta {
        id: "chatcmpl-fuzz".to_string(),
        created: 1_767_225_600,
        model: MODEL.to_string(),
        include_usage,
    }
}

/// What one `Output` looks like on the wire.
enum Wire {
    Chunk(ChatCompletionChunk),
    Error(Value),
    Ping,
    Done,
}

fn read_wire(output: &Output) -> Wire {
    let mut buf = Vec::new();
    output.write_sse(&mut buf);
    let text = String::from_utf8(buf).expect("SSE output is UTF-8");
    let wire = match text.as_str() {
        ": ping\n\n" => Wire::Ping,
        "data: [DONE]\n\n" => Wire::Done,
        _ => {
            let json = text
                .strip_prefix("data: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .unwrap_or_else(|| panic!("not an SSE data frame: {text:?}"));
            assert!(
                !json.contains(['\n', '\r']),
                "data line spans lines: {text:?}"
            );
            let value: Value = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("data line is not JSON ({e}): {json:?}"));
            if value.get("error").is_some() {
                Wire::Error(value)
            } else {
                Wire::Chunk(
                    serde_json::from_value(value)
                        .unwrap_or_else(|e| panic!("not a chunk ({e}): {json:?}")),
                )
            }
        }
    };
    match (&wire, output) {
        (Wire::Chunk(_), Output::Chunk(_))
        | (Wire::Error(_), Output::Error(_))
        | (Wire::Ping, Output::KeepAlive)
        | (Wire::Done, Output::Done) => {}
        _ => panic!("{output:?} written as {text:?}"),
    }
    wire
}

/// How a stream ended, as the client saw it.
struct Streamed {
    text: String,
    finish: Option<FinishReason>,
    usage: Option<(u64, u64, u64)>,
    error: Option<Value>,
}

/// Dify's items → pieces, driven as the routes drive the decoder; then pokes it after the
/// end: nothing more may come.
fn pieces(events: &[Result<DifyEvent, DecodeError>]) -> Vec<Piece> {
    let mut decoder = DifyDecoder::new(MODEL, file_base());
    let mut out = Vec::new();
    for event in events {
        if decoder.on_item(event.clone().map_err(DifyError::from), &mut out) == Flow::Stop {
            break;
        }
    }
    decoder.on_end(&mut out);
    let ended_at = out.len();
    assert!(
        matches!(out.last(), Some(Piece::End | Piece::Failed(_))),
        "the answer neither ends nor fails: {:?}",
        out.last()
    );
    assert_eq!(
        out.iter()
            .filter(|p| matches!(p, Piece::End | Piece::Failed(_)))
            .count(),
        1,
        "more than one end"
    );
    // After the end: more events, another end, another failure. All must be silent.
    let ping = DifyEvent {
        task_id: None,
        conversation_id: None,
        event: opendify::dify::Event::Ping,
    };
    assert_eq!(decoder.on_event(ping, &mut out), Flow::Stop);
    decoder.on_end(&mut out);
    decoder.fail(&DifyError::Stream("late".to_string()), &mut out);
    assert_eq!(
        out.len(),
        ended_at,
        "pieces after the end: {:?}",
        &out[ended_at..]
    );
    out
}

/// Encodes the pieces as the streaming route does, then pokes the encoder after the end.
fn stream(pieces: &[Piece], include_usage: bool) -> Streamed {
    let mut encoder = ChunkEncoder::new(meta(include_usage)).keep_visible_text(true);
    let mut answer = Accumulator::without_content();
    let mut out = vec![encoder.start()];
    for piece in pieces {
        answer.apply(piece);
        encoder.piece(piece.clone(), &answer, &mut out);
    }
    let ended_at = out.len();
    for late in [Piece::Text("late".to_string()), Piece::End] {
        encoder.piece(late, &answer, &mut out);
    }
    assert_eq!(
        out.len(),
        ended_at,
        "output after the end: {:?}",
        &out[ended_at..]
    );

    let wires: Vec<Wire> = out.iter().map(read_wire).collect();
    let (last, body) = wires.split_last().expect("at least the opening chunk");
    match wires.first() {
        Some(Wire::Chunk(c)) => {
            assert_eq!(c.choices.len(), 1);
            assert_eq!(c.choices[0].delta.role.as_deref(), Some("assistant"));
        }
        _ => panic!("the stream does not open with the role chunk"),
    }
    let mut s = Streamed {
        text: String::new(),
        finish: None,
        usage: None,
        error: None,
    };
    let mut finishes = 0;
    for (i, w) in wires.iter().enumerate() {
        match w {
            Wire::Chunk(c) => {
                assert_eq!(
                    (c.id.as_str(), c.object.as_str(), c.model.as_str()),
                    ("chatcmpl-fuzz", "chat.completion.chunk", MODEL)
                );
                for choice in &c.choices {
                    if i > 0 {
                        assert!(choice.delta.role.is_none(), "role after the first chunk");
                    }
                    if let Some(text) = &choice.delta.content {
                        s.text.push_str(text);
                    }
                    if let Some(reason) = choice.finish_reason {
                        finishes += 1;
                        s.finish = Some(reason);
                        assert!(
                            choice.delta.content.is_none(),
                            "content in the finish chunk"
                        );
                    }
                }
                match &c.usage {
                    UsageField::Value(u) => {
                        assert!(include_usage, "usage sent without stream_options");
                        assert!(c.choices.is_empty(), "usage chunk with choices");
                        assert!(s.usage.is_none(), "two usage chunks");
                        assert!(s.finish.is_some(), "usage before the finish chunk");
                        s.usage = Some((u.prompt_tokens, u.completion_tokens, u.total_tokens));
                    }
                    UsageField::Null(()) => {
                        assert!(include_usage);
                        assert!(!c.choices.is_empty());
                    }
                    UsageField::Absent => {
                        assert!(!include_usage, "usage missing with include_usage");
                        assert!(!c.choices.is_empty());
                    }
                }
            }
            Wire::Ping => {}
            Wire::Error(v) => {
                assert_eq!(i, wires.len() - 1, "output after an error event");
                s.error = Some(v.clone());
            }
            Wire::Done => assert_eq!(i, wires.len() - 1, "output after [DONE]"),
        }
    }
    assert!(finishes <= 1, "{finishes} finish chunks");
    match last {
        Wire::Done => {
            assert_eq!(finishes, 1, "[DONE] without a finish chunk");
            assert_eq!(s.usage.is_some(), include_usage, "usage chunk");
            if include_usage {
                // The usage chunk sits right before [DONE].
                assert!(matches!(body.last(), Some(Wire::Chunk(c)) if c.choices.is_empty()));
            }
        }
        Wire::Error(_) => assert_eq!(finishes, 0, "finish chunk and an error"),
        _ => panic!("the stream ends with neither [DONE] nor an error"),
    }
    assert_eq!(
        encoder.visible_text(),
        s.text,
        "visible_text differs from the deltas"
    );
    assert_eq!(
        answer
            .failure()
            .and_then(|f| f.error.body.error.code.as_deref()),
        s.error.as_ref().and_then(|v| v["error"]["code"].as_str()),
        "the failure code"
    );
    s
}

fn file_base() -> Url {
    Url::parse("https://dify.example/v1/").expect("static URL")
}

pub fn translate(data: &[u8]) {
    let Some((&flags, stream_bytes)) = data.split_first() else {
        return;
    };
    let include_usage = flags & 1 == 1;
    let pieces = pieces(&decode_all(stream_bytes));
    let streamed = stream(&pieces, include_usage);

    let mut answer = Accumulator::new();
    for piece in &pieces {
        answer.apply(piece);
    }
    let result = match answer.failure() {
        Some(failure) => Err(failure.clone()),
        None => {
            let content = content_text(answer.take_content());
            let reasoning = answer.take_reasoning();
            Ok(completion(&meta(false), &answer, content, reasoning))
        }
    };
    match result {
        Ok(completion) => {
            assert!(
                streamed.error.is_none(),
                "the stream failed ({:?}) but the aggregate succeeded",
                streamed.error
            );
            assert_eq!(completion.choices.len(), 1);
            let choice = &completion.choices[0];
            assert_eq!(Some(choice.finish_reason), streamed.finish, "finish reason");
            let content = &choice.message.content;
            if choice.finish_reason == FinishReason::Stop {
                assert_eq!(
                    content, &streamed.text,
                    "aggregated content differs from the streamed deltas"
                );
            } else {
                // After message_replace the stream keeps what it sent; the replacement
                // and everything after it ends both.
                assert!(
                    streamed.text.ends_with(content.as_str()),
                    "aggregated {content:?} does not end the streamed {:?}",
                    streamed.text
                );
            }
            if let Some(u) = streamed.usage {
                let c = &completion.usage;
                assert_eq!((c.prompt_tokens, c.completion_tokens, c.total_tokens), u);
            }
            let json = serde_json::to_string(&completion).expect("completion serializes");
            assert!(!json.contains('\n'));
        }
        Err(failure) => {
            let body = streamed.error.unwrap_or_else(|| {
                panic!(
                    "the aggregate failed ({}) but the stream succeeded",
                    failure.cause
                )
            });
            assert_eq!(
                failure.error.should_retry,
                Some(false),
                "a failure mid-answer must not invite a retry that replays the run"
            );
            let expected =
                serde_json::to_value(&failure.error.body).expect("error body serializes");
            assert_eq!(
                body, expected,
                "stream and aggregate report different errors"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// think: answer text cut into arbitrary pieces → the inline-thinking splitter
// ---------------------------------------------------------------------------------------

/// Reasoning and answer text of `pieces` fed in order; no piece is empty.
fn split_thinking(pieces: &[&str]) -> (String, String) {
    use opendify::answer::think::ThinkSplitter;
    let mut splitter = ThinkSplitter::new();
    let mut out = Vec::new();
    for piece in pieces {
        splitter.push(piece.to_string(), &mut out);
    }
    splitter.finish(&mut out);
    let (mut reasoning, mut answer) = (String::new(), String::new());
    for piece in out {
        match piece {
            Piece::Reasoning(t) if !t.is_empty() => reasoning.push_str(&t),
            Piece::Text(t) if !t.is_empty() => answer.push_str(&t),
            other => panic!("the splitter gave {other:?}"),
        }
    }
    (reasoning, answer)
}

/// `[n % 16][n piece lengths][text]` (text as UTF-8, invalid bytes replaced; cuts moved
/// to the next character boundary): every cut gives what the whole text gives, and that
/// is the text with nothing lost or doubled: the answer is the text's end, the reasoning
/// what lies before it between an opening tag (after leading whitespace) and a closing
/// tag, and only tags and the newlines after them are dropped.
pub fn think(data: &[u8]) {
    let (lengths, text) = split_schedule(data);
    let text = String::from_utf8_lossy(text);
    let mut pieces = Vec::new();
    let mut at = 0;
    for len in lengths {
        let mut end = (at + len).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        pieces.push(&text[at..end]);
        at = end;
    }
    pieces.push(&text[at..]);
    let whole = split_thinking(&[&text]);
    assert_eq!(
        split_thinking(&pieces),
        whole,
        "cut into {pieces:?} the text splits differently"
    );
    let (reasoning, answer) = whole;
    assert!(text.ends_with(&answer), "the answer is not the text's end");
    if answer.len() == text.len() {
        assert!(reasoning.is_empty(), "reasoning from a plain answer");
        return;
    }
    // What precedes the answer: an opening, the reasoning, then a closing tag and
    // newlines; or, for an empty tag or a block that never closed, nothing after it.
    let head = &text[..text.len() - answer.len()];
    let trimmed = head.trim_end_matches(['\r', '\n']);
    let closed = ["</think>", "</thinking>", "</details>"]
        .iter()
        .filter(|tag| {
            trimmed.len() >= tag.len()
                && trimmed.as_bytes()[trimmed.len() - tag.len()..]
                    .eq_ignore_ascii_case(tag.as_bytes())
        })
        .map(|tag| &trimmed[..trimmed.len() - tag.len()]);
    let unclosed = (reasoning.is_empty() || answer.is_empty()).then_some(head);
    let fits = closed.chain(unclosed).any(|body| {
        body.strip_suffix(reasoning.as_str()).is_some_and(|open| {
            let open = open.trim_start().trim_end_matches(['\r', '\n']);
            open.starts_with('<') && open.ends_with('>') && open.len() <= 2048
        })
    });
    assert!(
        fits,
        "{head:?} is not an opening, the reasoning {reasoning:?} and a closing"
    );
}
