#!/usr/bin/env python3
"""Writes the starting seeds of each fuzz target into tests/fuzz/corpus/<target>/.

Seeds come from the shared Dify transcripts (tests/fixtures/dify/*.sse), a few synthetic
edge cases, and a handful of OpenAI chat requests. Input layouts (see src/checks.rs):
  request     raw request body
  sse_frames  [n % 16][n read lengths][SSE bytes]
  translate   [flags: bit 0 = include_usage][SSE bytes]
  think       [n % 16][n piece lengths][answer text]
File names are content hashes, as libFuzzer names its own, so re-running adds nothing twice.
Afterwards minimise with `cargo fuzz cmin --fuzz-dir tests/fuzz --sanitizer none <target>`.
"""
import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "dify"
CORPUS = ROOT / "tests" / "fuzz" / "corpus"


def put(target, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def ev(obj):
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


END = ev({"event": "message_end", "task_id": "t", "metadata": {"usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}})
SYNTHETIC = [
    b"event: ping\n\n" + ev({"event": "message", "task_id": "t", "conversation_id": "c", "answer": "Hi"}) + END,
    b"id: 7\r\ndata: {\"event\":\"message\",\"answer\":\"a\"}\r\n\r\n: comment\r\n\r\n" + END.replace(b"\n", b"\r\n"),
    b"data: {\"event\":\"message\",\ndata: \"answer\":\"multi-line\"}\n\n" + END,
    ev({"event": "agent_message", "answer": "x"}) + ev({"event": "message", "answer": "x"}) + END,
    ev({"event": "message", "answer": "draft"}) + ev({"event": "message_replace", "answer": "clean"}) + ev({"event": "message", "answer": "+"}) + END,
    ev({"event": "message_replace", "answer": "only"}) + END,
    ev({"event": "message_file", "type": "image", "url": "/files/tools/a.png?sign=x"}) + ev({"event": "message_file", "type": "document", "url": "https://other.example/f.pdf"}) + ev({"event": "message_file", "answer": "legacy"}) + END,
    ev({"event": "text_chunk", "data": {"text": "wf"}}) + ev({"event": "workflow_finished", "data": {"status": "succeeded"}}),
    ev({"event": "workflow_finished", "data": {"status": "failed", "error": "boom"}}),
    ev({"event": "message", "answer": "x"}) + ev({"event": "error", "code": "too_many_requests", "status": 429, "message": "busy"}),
    ev({"event": "node_started", "data": {"text": 5}, "status": [1]}) + END,
    ev({"event": "message", "answer": "你好 👋"}) + b"data: {\"event\":\"message\",\"answer\":\"\xff\"}\n\n",
    ev({"event": "message", "answer": "cut"}) + b"data: {\"event\":\"message_end\"",
    ev({"event": "message"}),
    b"data: not json\n\n",
    b"data: 1\n",
    b"\n\n\r\n\n\r\n",
]


def main():
    fixtures = sorted(FIXTURES.glob("*.sse"))
    streams = [f.read_bytes() for f in fixtures] + SYNTHETIC
    for s in streams:
        put("sse_frames", b"\x00" + s)
        put("sse_frames", b"\x03\x05\x01\x00" + s)
        put("translate", b"\x00" + s)
        put("translate", b"\x01" + s)
    # A read boundary inside a multi-byte character and inside "\n\r\n".
    utf8 = ev({"event": "message", "answer": "é👋"})
    put("sse_frames", b"\x01" + bytes([utf8.index("é".encode()) + 1]) + utf8)
    crlf = b"data: {\"event\":\"message\",\"answer\":\"a\"}\n\r\n"
    put("sse_frames", b"\x02" + bytes([len(crlf) - 2, 1]) + crlf)

    m = lambda role, content: {"role": role, "content": content}
    requests = [
        {"model": "my-app", "messages": [m("user", "Hello!")]},
        {"model": "my-app", "stream": True, "stream_options": {"include_usage": True}, "messages": [m("user", "Hi")]},
        {"model": "m", "messages": [m("system", "Be brief."), m("user", "Hi"), m("assistant", "Hello!"),
                                    m("developer", [{"type": "text", "text": "Use French."}]),
                                    m("user", [{"type": "text", "text": "Line one"}, {"type": "text", "text": "line two"}])]},
        {"model": "m", "messages": [m("user", "a"), {"role": "assistant", "content": None, "tool_calls": []},
                                    m("tool", "42"), m("function", "f"), m("user", "b")]},
        {"model": "m", "messages": [m("assistant", [{"type": "refusal", "refusal": "no"}]), m("user", "why")]},
        {"model": "m", "user": {"id": "u-1", "name": "A"}, "metadata": {"user_id": "carol", "chat_id": "c1"},
         "messages": [m("user", "### Task:\nGenerate a title")]},
        {"model": "m", "user": "alice", "metadata": {"chat_id": " "}, "n": 1, "temperature": 0.2, "messages": [m("user", "x")]},
        {"model": "m", "messages": [m("user", [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}])]},
        {"model": "m", "messages": [m("user", [{"type": "text"}])]},
        {"model": "m", "messages": [m("user", "x")], "n": 2},
        {"model": "m", "messages": [m("robot", "x")]},
        {"model": "m", "messages": []},
        {"model": "m", "messages": [m("user", "   ")], "stream": "yes"},
        # Responses API bodies (the same target checks them as both APIs).
        {"model": "m", "input": "Hello!", "instructions": "Be brief.", "store": False},
        {"model": "m", "previous_response_id": "resp_1", "safety_identifier": "s", "input": [
            m("developer", "Use French."), {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]}, m("user", "Again")]},
        {"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": "1"}], "tools": []},
        {"model": "m", "input": [m("user", [{"type": "input_image", "image_url": "https://x/y.png"}])]},
        {"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}], "background": True},
        # Issue 20: remote file URLs naming internal hosts, in several spellings; wrong types;
        # shapes that spend the structure allowance.
        {"model": "m", "messages": [m("user", [{"type": "text", "text": "x"},
            {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data/"}},
            {"type": "image_url", "image_url": "http://0x7f.1/"},
            {"type": "image_url", "image_url": {"url": "http://[::ffff:127.0.0.1]/a.png"}}])]},
        {"model": "m", "input": [m("user", [{"type": "input_text", "text": "x"},
            {"type": "input_image", "image_url": "http://2130706433/"},
            {"type": "input_file", "file_url": "https://LOCALHOST./r.pdf"},
            {"type": "input_file", "file_url": "https://docs.example/r.pdf"}])]},
        {"model": "m", "messages": [m("user", "x")], "user": []},
        {"model": "m", "messages": [m("user", "x")], "user": {"id": 1}},
        {"model": "m", "messages": [m("user", "x")], "metadata": "x", "temperature": "hot"},
        {"model": "m", "input": "x", "user": 42, "metadata": [1]},
        {"model": "m", "messages": [m("user", [{}] * 1001)]},
        {"model": "m", "messages": [m("user", "x")], "metadata": {"x": [{"a": 0}] * 6000}},
    ]
    for r in requests:
        put("request", json.dumps(r, ensure_ascii=False).encode())
    for raw in [b'["m",[{"role":"user","content":"x"}]]', b'{"model":"x","messages":[]} trailing',
                b'{"model": "x", ', b"  ", b'{"model":"m","messages":[{"role":"user","content":"\\ud83d\\udc4b \xc3\xa9"}]}']:
        put("request", raw)
    thinking = [
        "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?",
        "  \n<thinking>plan</thinking>Hi — été 👋",
        "<THINK>Überlegung</THINK>\r\n\r\nAntwort",
        "<think/>\nAnswer", "<think />Answer", "<think>\n\n</think>\n\nAnswer",
        "<details style=\"color:gray;background-color: #f8f8f8;padding: 8px;border-radius: 4px;\" open> <summary> Thinking... </summary>Count.\n</details>\n\nIt is 4.",
        "<details><summary>Spoiler</summary>x</details> rest",
        "The tag <think> is shown.</think>", "<think>a</think><think>b</think>c",
        "<think>unclosed </thi", "<thin", "<", "", "   ", "<think>abc</thinking>",
    ]
    for t in thinking:
        for schedule in [b"\x00", b"\x03\x01\x02\x03", b"\x05\x07\x01\x0b\x02\x04"]:
            put("think", schedule + t.encode())


if __name__ == "__main__":
    main()
