"""The official `openai` Python package against a running opendify.

Run by tests/sdk_clients.rs, which starts a fake Dify and the real binary, then checks
this script's output and what the fake Dify saw. By hand:

    OPENDIFY_BASE_URL=http://127.0.0.1:5000/v1 OPENDIFY_API_KEY=local-dev-key \
    OPENDIFY_MODEL=my-app .venv-tools/bin/python tests/clients/python_sdk.py [CASE ...]

No CASE (or `all`) runs every case. Prints one JSON object on stdout:
`{"sdk": "python", "sdk_version": ..., "cases": {CASE: result, ...}}`. A case that raises
reports the exception (`{"raised": {...}}`) instead of failing the script, so the Rust
test can assert on errors and print everything when something is off.

Models other than OPENDIFY_MODEL are fixed names the Rust test configures (see MODELS).
Exit status 3: the `openai` package is not installed.
"""

from __future__ import annotations

import json
import os
import sys
import time

try:
    import openai
    from openai import OpenAI
except ImportError as e:  # pragma: no cover - reported by the Rust test
    print(
        f"python_sdk.py: the openai package is missing ({e}); install it with:\n"
        "  .venv-tools/bin/pip install -r tests/clients/requirements.txt",
        file=sys.stderr,
    )
    sys.exit(3)

BASE_URL = os.environ["OPENDIFY_BASE_URL"]
API_KEY = os.environ["OPENDIFY_API_KEY"]
MODEL = os.environ.get("OPENDIFY_MODEL", "my-app")

# The fixed model names tests/sdk_clients.rs configures besides MODEL.
MODELS = {
    "memory": "memory-app",  # generated answers, conversation ids checked like Dify
    "busy": "busy-app",  # first a Dify 429 too_many_requests, then "ok"
    "broken": "broken-app",  # an app key Dify rejects (401)
    "flaky": "flaky-app",  # a stream with a Dify error event in the middle
    "endless": "endless-app",  # a stream that runs until /stop
    "quota": "quota-app",  # a Dify 429 rate_limit_error (quota exhausted)
    "inputs": "inputs-app",  # an app with a required input `topic` (Python only)
    "thinking": "thinking-app",  # answers opening with <think>…</think>, tags cut across frames
    "nofiles": "nofiles-app",  # file upload off in the app
    "files": "files-app",  # generated answers, files checked like Dify (1.12.x chunks)
}

# A 1x1 PNG and a tiny PDF, as base64.
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PDF_B64 = "JVBERi0xLjQKJeLjz9MKMSAwIG9iago8PD4+CmVuZG9iagp0cmFpbGVyCjw8Pj4KJSVFT0YK"

TIMEOUT_SECONDS = 10.0
LINGER_SECONDS = 1.0
KEEP_ALIVE: list = []


def client(api_key: str = API_KEY) -> OpenAI:
    return OpenAI(base_url=BASE_URL, api_key=api_key, max_retries=2, timeout=TIMEOUT_SECONDS)


def user(text):
    return {"role": "user", "content": text}


def chunk_summary(chunk) -> dict:
    """What the test needs of one stream chunk, read through the SDK's types."""
    out = {
        "id": chunk.id,
        "object": chunk.object,
        "created": chunk.created,
        "model": chunk.model,
        "n_choices": len(chunk.choices),
        "usage": chunk.usage.model_dump() if chunk.usage is not None else None,
        # Whether the wire JSON had a `usage` key at all (null counts).
        "has_usage_key": "usage" in chunk.model_fields_set,
    }
    if chunk.choices:
        c = chunk.choices[0]
        out["role"] = c.delta.role
        out["content"] = c.delta.content
        out["finish_reason"] = c.finish_reason
    return out


def completion_summary(completion) -> dict:
    choice = completion.choices[0]
    return {
        "id": completion.id,
        "object": completion.object,
        "model": completion.model,
        "n_choices": len(completion.choices),
        "role": choice.message.role,
        "content": choice.message.content,
        "finish_reason": choice.finish_reason,
        "usage": completion.usage.model_dump() if completion.usage is not None else None,
        "request_id": getattr(completion, "_request_id", None),
    }


def error_summary(err: BaseException) -> dict:
    out = {
        "class": type(err).__name__,
        "is_api_error": isinstance(err, openai.APIError),
        "is_status_error": isinstance(err, openai.APIStatusError),
        "message": str(getattr(err, "message", err)),
    }
    if isinstance(err, openai.APIError):
        out["code"] = err.code
        out["type"] = err.type
        out["param"] = err.param
        out["body"] = err.body
    if isinstance(err, openai.APIStatusError):
        out["status"] = err.status_code
        out["request_id"] = err.request_id
        out["x_should_retry"] = err.response.headers.get("x-should-retry")
    return out


# --- cases -------------------------------------------------------------------------


def case_list_models():
    c = client()
    listed = c.models.list()
    one = c.models.retrieve(MODEL)
    return {
        "ids": [m.id for m in listed.data],
        "objects": sorted({m.object for m in listed.data}),
        "retrieved": {"id": one.id, "object": one.object, "owned_by": one.owned_by},
    }


def case_blocking():
    completion = client().chat.completions.create(
        model=MODEL, messages=[user("py blocking: what is the capital of France?")]
    )
    return completion_summary(completion)


def case_streaming():
    raw = client().chat.completions.with_raw_response.create(
        model=MODEL, stream=True, messages=[user("py streaming: what is the capital of France?")]
    )
    stream = raw.parse()
    return {
        "content_type": raw.headers.get("content-type"),
        "request_id": raw.headers.get("x-request-id"),
        "chunks": [chunk_summary(ch) for ch in stream],
    }


def case_stream_usage():
    stream = client().chat.completions.create(
        model=MODEL,
        stream=True,
        stream_options={"include_usage": True},
        messages=[user("py usage: what is the capital of France?")],
    )
    return {"chunks": [chunk_summary(ch) for ch in stream]}


def case_stream_helper():
    """The SDK's strict accumulating helper (`chat.completions.stream`)."""
    with client().chat.completions.stream(
        model=MODEL,
        stream_options={"include_usage": True},
        messages=[user("py helper: what is the capital of France?")],
    ) as stream:
        events = sorted({event.type for event in stream})
        final = stream.get_final_completion()
    out = completion_summary(final)
    out["events"] = events
    return out


def case_text_parts():
    completion = client().chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "py parts: first part."},
                    {"type": "text", "text": "Second part."},
                ],
            }
        ],
    )
    return completion_summary(completion)


def case_multi_turn():
    c = client()
    headers = {"X-OpenWebUI-Chat-Id": "chat-1"}
    first = user("py turn 1: my name is Ada.")
    turn1 = c.chat.completions.create(model=MODELS["memory"], messages=[first], extra_headers=headers)
    answer1 = turn1.choices[0].message.content
    stream = c.chat.completions.create(
        model=MODELS["memory"],
        stream=True,
        messages=[first, {"role": "assistant", "content": answer1}, user("py turn 2: what is my name?")],
        extra_headers=headers,
    )
    answer2 = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    return {"turn1": answer1, "turn2": answer2}


def case_history_matching():
    """No chat id (what SDK users send): turn 2 repeats the streamed answer as history."""
    c = client()
    first = user("py history 1: my name is Grace.")
    stream = c.chat.completions.create(
        model=MODELS["memory"], stream=True, user="py-history-user", messages=[first]
    )
    answer1 = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    turn2 = c.chat.completions.create(
        model=MODELS["memory"],
        user="py-history-user",
        messages=[first, {"role": "assistant", "content": answer1}, user("py history 2: what is my name?")],
    )
    return {"turn1": answer1, "turn2": turn2.choices[0].message.content}


def case_reasoning_stream():
    """Thinking arrives as `delta.reasoning_content`, an extra field: `model_extra`."""
    stream = client().chat.completions.create(
        model=MODELS["thinking"], stream=True, messages=[user("py reasoning stream: tell me about Paris")]
    )
    reasoning, content = "", ""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        content += delta.content or ""
    return {"reasoning": reasoning, "content": content}


def case_reasoning_blocking():
    completion = client().chat.completions.create(
        model=MODELS["thinking"], messages=[user("py reasoning blocking: tell me about Paris")]
    )
    message = completion.choices[0].message
    return {
        "reasoning": (message.model_extra or {}).get("reasoning_content"),
        "content": message.content,
        "total_tokens": completion.usage.total_tokens,
    }


def case_reasoning_multi_turn():
    """No chat id: turn 2 sends back the answer's content (without the thinking)."""
    c = client()
    first = user("py reasoning turn 1: tell me about Paris")
    answer1 = c.chat.completions.create(model=MODELS["thinking"], messages=[first]).choices[0].message.content
    turn2 = c.chat.completions.create(
        model=MODELS["thinking"],
        messages=[first, {"role": "assistant", "content": answer1}, user("py reasoning turn 2: and its population?")],
    )
    return {"turn1": answer1, "turn2": turn2.choices[0].message.content}


def case_unknown_model():
    client().chat.completions.create(model="no-such-model", messages=[user("py unknown model")])
    return {"unexpected": "no exception"}


def case_bad_key():
    client(api_key="sk-wrong-proxy-key").chat.completions.create(
        model=MODEL, messages=[user("py bad key")]
    )
    return {"unexpected": "no exception"}


def case_empty_messages():
    client().chat.completions.create(model=MODEL, messages=[])
    return {"unexpected": "no exception"}


def case_midstream_error():
    stream = client().chat.completions.create(
        model=MODELS["flaky"], stream=True, messages=[user("py midstream error")]
    )
    received = []
    try:
        for ch in stream:
            if ch.choices and ch.choices[0].delta.content:
                received.append(ch.choices[0].delta.content)
    except Exception as e:  # noqa: BLE001 - the class is what the test checks
        return {"content_before_error": "".join(received), "raised": error_summary(e)}
    return {"content_before_error": "".join(received), "unexpected": "stream ended without error"}


def case_aggregate_error():
    """A blocking client whose Dify run fails mid-answer: an HTTP error, never retried."""
    started = time.monotonic()
    try:
        client().chat.completions.create(model=MODELS["flaky"], messages=[user("py aggregate error")])
    except Exception as e:  # noqa: BLE001
        return {"raised": error_summary(e), "seconds": time.monotonic() - started}
    return {"unexpected": "no exception"}


def case_cancel_stream():
    c = client()
    stream = c.chat.completions.create(
        model=MODELS["endless"],
        stream=True,
        user="py-cancel-user",
        messages=[user("py cancel: talk forever")],
    )
    first = None
    for ch in stream:
        if ch.choices and ch.choices[0].delta.content:
            first = ch.choices[0].delta.content
            break
    # The client and the stream stay referenced until the script exits, so only the
    # explicit close ends the response (not garbage collection). The Rust test checks that
    # the proxy's /stop arrived before `linger_until`, i.e. because of the close and not
    # because this process exited.
    KEEP_ALIVE.extend([c, stream])
    stream.close()
    closed_at = time.time()
    time.sleep(LINGER_SECONDS)
    return {"first_content": first, "closed_at": closed_at, "linger_until": time.time()}


def case_retry_429():
    started = time.monotonic()
    completion = client().chat.completions.create(model=MODELS["busy"], messages=[user("py retry 429")])
    return {"content": completion.choices[0].message.content, "seconds": time.monotonic() - started}


def case_no_retry_dify_401():
    started = time.monotonic()
    try:
        client().chat.completions.create(model=MODELS["broken"], messages=[user("py broken app key")])
    except Exception as e:  # noqa: BLE001
        return {"raised": error_summary(e), "seconds": time.monotonic() - started}
    return {"unexpected": "no exception"}


def case_no_retry_quota():
    started = time.monotonic()
    try:
        client().chat.completions.create(model=MODELS["quota"], messages=[user("py quota exhausted")])
    except Exception as e:  # noqa: BLE001
        return {"raised": error_summary(e), "seconds": time.monotonic() - started}
    return {"unexpected": "no exception"}


def case_structured_output_refused():
    """The SDK's parse() with a Pydantic model asks for a json_schema response_format, which
    a Dify app cannot guarantee: refused at once, naming the parameter."""
    from pydantic import BaseModel

    class Capital(BaseModel):
        city: str
        country: str

    parse = getattr(client().chat.completions, "parse", None) or client().beta.chat.completions.parse
    parse(model=MODEL, messages=[user("py structured: the capital of France?")], response_format=Capital)
    return {"unexpected": "no exception"}


def case_required_input_via_extra_body():
    """An app with a required input: missing, it is refused naming the variable; passed
    with extra_body, it is answered."""
    c = client()
    out = {}
    try:
        c.chat.completions.create(model=MODELS["inputs"], messages=[user("py inputs: without topic")])
        out["missing"] = {"unexpected": "no exception"}
    except Exception as e:  # noqa: BLE001
        out["missing"] = {"raised": error_summary(e)}
    completion = c.chat.completions.create(
        model=MODELS["inputs"],
        messages=[user("py inputs: with topic")],
        extra_body={"inputs": {"topic": "tides"}},
    )
    out["content"] = completion.choices[0].message.content
    return out
def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def case_image_url():
    completion = client().chat.completions.create(
        model=MODELS["files"],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "py image url: what is this?"},
                    {"type": "image_url", "image_url": {"url": "https://images.example/py-cat.png", "detail": "low"}},
                ],
            }
        ],
    )
    return completion_summary(completion)


def case_image_base64():
    stream = client().chat.completions.create(
        model=MODELS["files"],
        stream=True,
        user="py-alice",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "py image base64: describe it."},
                    image_part(f"data:image/png;base64,{PNG_B64}"),
                ],
            }
        ],
    )
    return {"content": "".join(c.choices[0].delta.content or "" for c in stream if c.choices)}


def case_pdf_file():
    completion = client().chat.completions.create(
        model=MODELS["files"],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "py pdf: summarise it."},
                    {
                        "type": "file",
                        "file": {"filename": "py-report.pdf", "file_data": f"data:application/pdf;base64,{PDF_B64}"},
                    },
                ],
            }
        ],
    )
    return completion_summary(completion)


def case_image_uploads_off():
    try:
        client().chat.completions.create(
            model=MODELS["nofiles"],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "py uploads off"},
                        image_part(f"data:image/png;base64,{PNG_B64}"),
                    ],
                }
            ],
        )
    except Exception as e:  # noqa: BLE001
        return {"raised": error_summary(e)}
    return {"unexpected": "no exception"}


def case_image_too_large():
    big = "data:image/png;base64," + "A" * ((10 * 1024 * 1024 + 3) // 3 * 4)
    try:
        client().chat.completions.create(
            model=MODELS["files"],
            messages=[{"role": "user", "content": [{"type": "text", "text": "py too large"}, image_part(big)]}],
        )
    except Exception as e:  # noqa: BLE001
        return {"raised": error_summary(e)}
    return {"unexpected": "no exception"}


def case_image_multi_turn():
    first = {
        "role": "user",
        "content": [{"type": "text", "text": "py image turn one."}, image_part(f"data:image/png;base64,{PNG_B64}")],
    }
    c = client()
    one = c.chat.completions.create(model=MODELS["files"], messages=[first])
    answer = one.choices[0].message.content
    two = c.chat.completions.create(
        model=MODELS["files"],
        messages=[first, {"role": "assistant", "content": answer}, user("py image turn two.")],
    )
    return {"first": answer, "second": two.choices[0].message.content}


CASES = {
    "list_models": case_list_models,
    "blocking": case_blocking,
    "streaming": case_streaming,
    "stream_usage": case_stream_usage,
    "stream_helper": case_stream_helper,
    "text_parts": case_text_parts,
    "multi_turn": case_multi_turn,
    "history_matching": case_history_matching,
    "reasoning_stream": case_reasoning_stream,
    "reasoning_blocking": case_reasoning_blocking,
    "reasoning_multi_turn": case_reasoning_multi_turn,
    "unknown_model": case_unknown_model,
    "bad_key": case_bad_key,
    "empty_messages": case_empty_messages,
    "midstream_error": case_midstream_error,
    "aggregate_error": case_aggregate_error,
    "cancel_stream": case_cancel_stream,
    "retry_429": case_retry_429,
    "no_retry_dify_401": case_no_retry_dify_401,
    "no_retry_quota": case_no_retry_quota,
    "structured_output_refused": case_structured_output_refused,
    "required_input_via_extra_body": case_required_input_via_extra_body,
    "image_url": case_image_url,
    "image_base64": case_image_base64,
    "pdf_file": case_pdf_file,
    "image_uploads_off": case_image_uploads_off,
    "image_too_large": case_image_too_large,
    "image_multi_turn": case_image_multi_turn,
}


def main(argv: list[str]) -> int:
    names = [a for a in argv if a != "all"] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"python_sdk.py: unknown case(s) {unknown}; known: {list(CASES)}", file=sys.stderr)
        return 2
    results = {}
    for name in names:
        try:
            results[name] = CASES[name]()
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            results[name] = {"raised": error_summary(e)}
    json.dump(
        {"sdk": "python", "sdk_version": openai.__version__, "cases": results},
        sys.stdout,
        default=str,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
