//! Reasoning and thoughts out: inline `<think>` split off the answer (tags cut across
//! Dify's frames), `REASONING_MODE=inline`, an agent's tool use as reasoning, cited
//! sources (`CITATIONS=sources`), and multi-turn continuity without a chat id whatever
//! the client sends back of the thinking.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::{Scenario, Script};

const THINKING: &str = "The user asks about Paris. Answer briefly.\n";
const ANSWER: &str = "Paris is the capital of France.";
const INLINE: &str = "<think>\nThe user asks about Paris. Answer briefly.\n</think>\n\nParis is the capital of France.";

/// Reasoning and content of a streamed chat answer.
fn streamed_parts(sse: &SseResponse) -> (String, String) {
    let reasoning: String = sse
        .chunks()
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["delta"]["reasoning_content"].as_str().map(str::to_string))
        .collect();
    (reasoning, sse.content())
}

fn blocking_parts(body: &Value) -> (String, String) {
    let message = &body["choices"][0]["message"];
    (
        message["reasoning_content"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        message["content"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn inline_thinking_cut_anywhere_streams_apart_from_the_answer() {
    let app = spawn_app().await;
    for chunk in [1, 2, 3, 5, 8, 13, 200] {
        app.dify
            .set(APP_KEY, Scenario::Scripted(Script::chunked(INLINE, chunk)));
        let sse = app.stream(streaming("Tell me about Paris, please.")).await;
        assert_eq!(sse.status, 200);
        assert!(sse.done(), "chunk {chunk}");
        assert_eq!(
            streamed_parts(&sse),
            (THINKING.to_string(), ANSWER.to_string()),
            "chunk {chunk}"
        );
        // A client that ignores reasoning_content sees exactly the answer, and usage.
        let (status, _, body) = app.chat(user_message("Tell me about Paris, please.")).await;
        assert_eq!(status, 200);
        assert_eq!(
            blocking_parts(&body),
            (THINKING.to_string(), ANSWER.to_string()),
            "chunk {chunk}"
        );
        assert_eq!(body["usage"]["total_tokens"], 33);
    }
}

#[tokio::test]
async fn older_dify_details_wrapper_is_reasoning() {
    let app = spawn_app().await;
    let text = "<details style=\"color:gray;background-color: #f8f8f8;padding: 8px;border-radius: 4px;\" open> <summary> Thinking... </summary>Count: 2+2=4.\n</details>\n\nIt is 4.";
    app.dify
        .set(APP_KEY, Scenario::Scripted(Script::chunked(text, 4)));
    let sse = app.stream(streaming("What is two plus two?")).await;
    assert_eq!(
        streamed_parts(&sse),
        ("Count: 2+2=4.\n".to_string(), "It is 4.".to_string())
    );
}

#[tokio::test]
async fn inline_mode_passes_the_text_through() {
    let app = spawn_app_with(&[("REASONING_MODE", "inline")]).await;
    app.dify
        .set(APP_KEY, Scenario::Scripted(Script::chunked(INLINE, 3)));
    let sse = app.stream(streaming("Tell me about Paris, please.")).await;
    assert_eq!(streamed_parts(&sse), (String::new(), INLINE.to_string()));
    let (_, _, body) = app.chat(user_message("Tell me about Paris, please.")).await;
    assert_eq!(blocking_parts(&body), (String::new(), INLINE.to_string()));
    assert!(
        body["choices"][0]["message"]
            .get("reasoning_content")
            .is_none()
    );
}

#[tokio::test]
async fn a_later_think_tag_is_plain_text() {
    let app = spawn_app().await;
    let text = "Use <think> tags like <think>this</think>.";
    app.dify
        .set(APP_KEY, Scenario::Scripted(Script::chunked(text, 2)));
    let (_, _, body) = app.chat(user_message("How do I mark thinking?")).await;
    assert_eq!(blocking_parts(&body), (String::new(), text.to_string()));
}

#[tokio::test]
async fn responses_api_puts_inline_thinking_in_a_reasoning_item() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::Scripted(Script::chunked(INLINE, 5)));
    let body = json!({"model": MODEL, "input": "Tell me about Paris, please."});
    let r = app.post_responses(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["output"][0]["type"], "reasoning");
    assert_eq!(v["output"][0]["summary"][0]["text"], THINKING);
    assert_eq!(v["output"][1]["content"][0]["text"], ANSWER);

    let mut body = body;
    body["stream"] = json!(true);
    let sse = read_sse(app.post_responses(&body).send().await.unwrap()).await;
    // `event: <type>` then `data: {...}`.
    let events: Vec<Value> = sse
        .frames
        .iter()
        .filter_map(|f| f.text.split_once("\ndata: "))
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect();
    let deltas = |kind: &str| -> String {
        events
            .iter()
            .filter(|e| e["type"] == kind)
            .filter_map(|e| e["delta"].as_str())
            .collect()
    };
    assert_eq!(deltas("response.reasoning_summary_text.delta"), THINKING);
    assert_eq!(deltas("response.output_text.delta"), ANSWER);
    let done = events
        .iter()
        .find(|e| e["type"] == "response.completed")
        .unwrap();
    assert_eq!(done["response"]["output"][1]["content"][0]["text"], ANSWER);
}

#[tokio::test]
async fn agent_tool_use_is_reasoning_and_the_final_thought_is_not_repeated() {
    let app = spawn_app().await;
    let parts = ["It is ", "14:32 in Paris", " right now."];
    app.dify
        .set(APP_KEY, Scenario::Scripted(Script::agent(&parts)));
    let tool = "Using tool `current_time` with {\"timezone\":\"Europe/Paris\"}.\nResult: 2026-07-16 14:32:25\n";

    let sse = app.stream(streaming("What time is it in Paris?")).await;
    assert!(sse.done());
    assert_eq!(streamed_parts(&sse), (tool.to_string(), parts.concat()));
    let (_, _, body) = app.chat(user_message("What time is it in Paris?")).await;
    assert_eq!(blocking_parts(&body), (tool.to_string(), parts.concat()));

    let r = app
        .post_responses(&json!({"model": MODEL, "input": "What time is it in Paris?"}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["output"][0]["summary"][0]["text"], tool);
    assert_eq!(v["output"][1]["content"][0]["text"], parts.concat());
}

#[tokio::test]
async fn cited_sources_are_listed_after_the_answer_when_asked_for() {
    let script = Script::messages(&["Paris is ", "the capital."]).citing(&[
        "france.md",
        "capitals.pdf",
        "france.md",
    ]);
    let app = spawn_app_with(&[("CITATIONS", "sources")]).await;
    app.dify.set(APP_KEY, Scenario::Scripted(script.clone()));
    let expected = "Paris is the capital.\n\nSources:\n1. france.md\n2. capitals.pdf";
    let sse = app
        .stream(streaming("What is the capital of France?"))
        .await;
    assert_eq!(sse.content(), expected);
    let finish = sse.chunks().last().cloned().unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let (_, _, body) = app
        .chat(user_message("What is the capital of France?"))
        .await;
    assert_eq!(blocking_parts(&body).1, expected);

    // Off by default: the answer alone.
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::Scripted(script));
    let (_, _, body) = app
        .chat(user_message("What is the capital of France?"))
        .await;
    assert_eq!(blocking_parts(&body).1, "Paris is the capital.");
}

/// Two turns without a chat id; the second sends back `returned(answer content)` as
/// the assistant message. Returns the Dify requests.
async fn two_turns(
    app: &TestApp,
    stream: bool,
    returned: impl Fn(&str) -> String,
) -> Vec<crate::support::Recorded> {
    let first = "Tell me about Paris, please.";
    let mut b1 = user_message(first);
    b1["stream"] = json!(stream);
    let content = if stream {
        app.stream(b1).await.content()
    } else {
        blocking_parts(&app.chat(b1).await.2).1
    };
    let mut b2 = json!({"model": MODEL, "messages": [
        {"role": "user", "content": first},
        {"role": "assistant", "content": returned(&content)},
        {"role": "user", "content": "And its population?"},
    ]});
    b2["stream"] = json!(stream);
    if stream {
        assert!(app.stream(b2).await.done());
    } else {
        assert_eq!(app.chat(b2).await.0, 200);
    }
    app.dify.requests()
}

fn assert_continued(app: &TestApp, reqs: &[crate::support::Recorded], case: &str) {
    let n = reqs.len();
    let conversation = reqs[n - 2].conversation_id().map(str::to_string);
    assert_eq!(conversation, None, "{case}: turn 1 starts a conversation");
    let known = app.dify.conversation_ids(APP_KEY, &default_user());
    let second = reqs[n - 1].conversation_id().map(str::to_string);
    assert!(
        second.as_ref().is_some_and(|c| known.contains(c)),
        "{case}: turn 2 must continue the conversation, got {second:?}"
    );
    assert_eq!(reqs[n - 1].query(), Some("And its population?"), "{case}");
}

/// What Open WebUI keeps of an answer: the text after a leading thinking block.
fn open_webui(content: &str) -> String {
    opendify::answer::think::answer_part(content).into_owned()
}

#[tokio::test]
async fn a_reasoning_model_continues_without_chat_id_in_both_modes() {
    for mode in ["separate", "inline"] {
        for stream in [true, false] {
            let app = spawn_app_with(&[("REASONING_MODE", mode)]).await;
            app.dify
                .set(APP_KEY, Scenario::Scripted(Script::chunked(INLINE, 4)));
            // The client stores the thinking apart and sends back only the answer.
            let reqs = two_turns(&app, stream, open_webui).await;
            assert_continued(&app, &reqs, &format!("{mode} stream={stream} answer only"));
            // A client that sends back the text as it got it (thinking inline included).
            let reqs = two_turns(&app, stream, str::to_string).await;
            assert_continued(&app, &reqs, &format!("{mode} stream={stream} as received"));
        }
    }
}

#[tokio::test]
async fn a_returned_thinking_block_is_compared_without_it() {
    // Separate mode: the client got the thinking apart, but puts it back inline (as some
    // UIs store it) when it sends the history.
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::Scripted(Script::chunked(INLINE, 6)));
    let reqs = two_turns(&app, true, |c| format!("<think>{THINKING}</think>\n\n{c}")).await;
    assert_continued(&app, &reqs, "thinking put back");
}

#[tokio::test]
async fn sources_count_as_part_of_the_answer_sent_back() {
    let app = spawn_app_with(&[("CITATIONS", "sources")]).await;
    let script = Script::chunked(INLINE, 7).citing(&["france.md"]);
    app.dify.set(APP_KEY, Scenario::Scripted(script));
    for stream in [true, false] {
        let reqs = two_turns(&app, stream, open_webui).await;
        assert_continued(&app, &reqs, &format!("sources stream={stream}"));
    }
}

#[tokio::test]
async fn an_agent_answer_continues_without_chat_id() {
    let app = spawn_app().await;
    app.dify.set(
        APP_KEY,
        Scenario::Scripted(Script::agent(&["It is ", "14:32."])),
    );
    for stream in [true, false] {
        let reqs = two_turns(&app, stream, str::to_string).await;
        assert_continued(&app, &reqs, &format!("agent stream={stream}"));
    }
}

#[tokio::test]
async fn responses_history_with_thinking_continues() {
    let app = spawn_app_with(&[("REASONING_MODE", "inline")]).await;
    app.dify
        .set(APP_KEY, Scenario::Scripted(Script::chunked(INLINE, 3)));
    let first = "Tell me about Paris, please.";
    let r = app
        .post_responses(&json!({"model": MODEL, "input": first, "store": false}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let text = v["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(text, INLINE);
    let r = app
        .post_responses(&json!({"model": MODEL, "store": false, "input": [
            {"role": "user", "content": first},
            {"role": "assistant", "content": [{"type": "output_text", "text": text}]},
            {"role": "user", "content": "And its population?"},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reqs = app.dify.requests();
    assert_continued(&app, &reqs, "responses inline");
}
