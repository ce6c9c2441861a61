//! The decoder with the deployment's reasoning and citation choices: inline thinking
//! split off (or not), the agent transcript's tool use, cited sources.

use super::*;
use crate::dify::sse::decode_all;

fn decode(options: AnswerOptions, frames: &str) -> Vec<Piece> {
    let mut decoder = DifyDecoder::new("my-app", base()).with_options(options);
    let mut out = Vec::new();
    for e in decode_all(frames.as_bytes()) {
        if decoder.on_item(e.map_err(DifyError::from), &mut out) == Flow::Stop {
            break;
        }
    }
    decoder.on_end(&mut out);
    out
}

fn message(text: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"event": "message", "task_id": "t", "conversation_id": "c", "answer": text})
    )
}

const END: &str = "data: {\"event\":\"message_end\",\"task_id\":\"t\",\"metadata\":{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}}\n\n";

#[test]
fn inline_thinking_is_split_in_separate_mode_only() {
    let frames = [
        message("<thi"),
        message("nk>plan</th"),
        message("ink>\nAnswer"),
    ]
    .concat()
        + END;
    let pieces = decode(AnswerOptions::default(), &frames);
    assert_eq!(
        pieces,
        vec![
            Piece::Reasoning("plan".into()),
            Piece::Text("Answer".into()),
            Piece::Usage(Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3
            }),
            Piece::End
        ]
    );
    let inline = AnswerOptions {
        reasoning: ReasoningMode::Inline,
        ..AnswerOptions::default()
    };
    let texts: String = decode(inline, &frames)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Text(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(texts, "<think>plan</think>\nAnswer");
}

#[test]
fn held_text_goes_out_before_a_failure() {
    let frames = message("<think>plan </thi")
        + "data: {\"event\":\"error\",\"code\":\"completion_request_error\",\"status\":400,\"message\":\"boom\"}\n\n";
    let pieces = decode(AnswerOptions::default(), &frames);
    assert_eq!(pieces[0], Piece::Reasoning("plan ".into()));
    assert_eq!(pieces[1], Piece::Reasoning("</thi".into()));
    assert!(matches!(pieces[2], Piece::Failed(_)));
}

#[test]
fn cited_sources_follow_the_answer_before_the_end() {
    let fixture = String::from_utf8(fixture("chat-app-stream.sse")).unwrap();
    let sources = AnswerOptions {
        citations: Citations::Sources,
        ..AnswerOptions::default()
    };
    let pieces = decode(sources, &fixture);
    let n = pieces.len();
    assert_eq!(
        pieces[n - 3],
        Piece::Text("\n\nSources:\n1. france.md".into())
    );
    assert!(matches!(pieces[n - 2], Piece::Usage(_)));
    assert_eq!(pieces[n - 1], Piece::End);
    // Off (the default): no list.
    let pieces = decode(AnswerOptions::default(), &fixture);
    assert!(
        !pieces
            .iter()
            .any(|p| matches!(p, Piece::Text(t) if t.contains("Sources")))
    );
}

#[test]
fn agent_transcript_tells_its_tool_once_and_not_the_final_thought() {
    let fixture = String::from_utf8(fixture("agent-chat-stream.sse")).unwrap();
    let pieces = decode(AnswerOptions::default(), &fixture);
    let reasoning: Vec<&Piece> = pieces
        .iter()
        .filter(|p| matches!(p, Piece::Reasoning(_)))
        .collect();
    assert_eq!(
        reasoning,
        [&Piece::Reasoning(
            "Using tool `current_time` with {\"timezone\":\"Europe/Paris\"}.\nResult: 2026-07-16 14:32:25\n".into()
        )]
    );
    let text: String = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "It is 14:32 in Paris right now.");
}
