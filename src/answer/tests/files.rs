//! Files in answers: tool and generated files as Markdown for chat, agent and chatflow
//! apps, and Dify 1.12.x's text chunks in `message_file` events, from transcripts.

use super::*;

/// (fixture, the answer a client sees)
const FILE_ANSWERS: &[(&str, &str)] = &[
    // 1.12.x with a user's image attached: every chunk is a `message_file` with `answer`.
    (
        "chat-files-1.12-stream.sse",
        "The image shows a cat on a sofa.",
    ),
    (
        "chat-tool-file-stream.sse",
        "\n\n![image](https://dify.example/files/tools/5f2a8c1e-3b7d-4e9f-a1c3-6d8e0f2a4b6c.png?timestamp=1784212500&nonce=3e9f1a7c5b2d&sign=Qm9ndXNTaWduYXR1cmU=)\n\nHere is your chart.",
    ),
    (
        "chatflow-file-stream.sse",
        "Sales by month:\n\n![image](https://dify.example/files/tools/9e1a3c5e-7a9c-4e3a-8c5e-7a9c1e3a5c7e.png?timestamp=1784212602&nonce=7c5e3a1c9e7a&sign=U2lnbmVkQ2hhcnQ=)\n\n",
    ),
];

#[test]
fn answers_with_files_arrive_complete_streamed_and_aggregated() {
    for &(name, answer) in FILE_ANSWERS {
        let bytes = fixture(name);
        let r = receive(&stream_sse(decode_all(&bytes), true));
        assert_eq!(assert_well_formed(&r, true), answer, "{name}");
        assert_eq!(usage_of(&r), (1128, 9, 1137), "{name}");
        let c = blocking(decode_all(&bytes)).unwrap();
        assert_eq!(c.choices[0].message.content, answer, "{name}");
        assert_eq!(c.choices[0].finish_reason, FinishReason::Stop, "{name}");
    }
}

#[test]
fn answers_with_files_survive_any_split() {
    for &(name, answer) in FILE_ANSWERS {
        let bytes = fixture(name);
        for cut in 1..bytes.len() {
            let mut decoder = EventDecoder::new();
            let mut events = Vec::new();
            decoder.push(&bytes[..cut], &mut events);
            decoder.push(&bytes[cut..], &mut events);
            decoder.finish(&mut events);
            let r = receive(&stream_sse(events, false));
            assert_eq!(assert_well_formed(&r, false), answer, "{name} cut at {cut}");
        }
    }
}

#[test]
fn a_chatflow_whose_workflow_finishes_first_still_keeps_quirk_text() {
    // Older chatflow builds send `workflow_finished` before `message_end`: text that came
    // as `message_file` chunks marks a chat-family answer, which ends at `message_end`.
    let bytes =
        b"data: {\"event\":\"message_file\",\"task_id\":\"t\",\"id\":\"m\",\"answer\":\"Hi\"}\n\n\
data: {\"event\":\"workflow_finished\",\"task_id\":\"t\",\"data\":{\"status\":\"succeeded\"}}\n\n\
data: {\"event\":\"message_file\",\"task_id\":\"t\",\"id\":\"m\",\"answer\":\" there\"}\n\n\
data: {\"event\":\"message_end\",\"task_id\":\"t\",\"metadata\":{}}\n\n";
    let c = blocking(decode_all(bytes)).unwrap();
    assert_eq!(c.choices[0].message.content, "Hi there");
}
