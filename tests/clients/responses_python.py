"""The official `openai` Python package's Responses API against a running opendify.

Run by tests/sdk_responses.rs, which starts a fake Dify and the real binary, then checks
this script's output and what the fake Dify saw. By hand:

    OPENDIFY_BASE_URL=http://127.0.0.1:5000/v1 OPENDIFY_API_KEY=local-dev-key \
    OPENDIFY_MODEL=my-app .venv-tools/bin/python tests/clients/responses_python.py [CASE ...]

No CASE (or `all`) runs every case. Prints one JSON object on stdout:
`{"sdk": "python", "versions": {...}, "cases": {CASE: result, ...}}`. A case that raises
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
from importlib import metadata

try:
    import openai
    from openai import OpenAI
except ImportError as e:  # pragma: no cover - reported by the Rust test
    print(
        f"responses_python.py: the openai package is missing ({e}); install it with:\n"
        "  .venv-tools/bin/pip install -r tests/clients/requirements.txt",
        file=sys.stderr,
    )
    sys.exit(3)

BASE_URL = os.environ["OPENDIFY_BASE_URL"]
API_KEY = os.environ["OPENDIFY_API_KEY"]
MODEL = os.environ.get("OPENDIFY_MODEL", "my-app")

# The fixed model names tests/sdk_responses.rs configures besides MODEL.
MODELS = {
    "memory": "memory-app",  # generated answers, conversation ids checked like Dify
    "flaky": "flaky-app",  # a stream with a Dify error event in the middle
    "endless": "endless-app",  # a stream that runs until /stop
    "thinking": "thinking-app",  # a chatflow whose LLM sends its reasoning apart
}

INSTRUCTIONS = "py: answer in one sentence."
TIMEOUT_SECONDS = 10.0
LINGER_SECONDS = 1.0
KEEP_ALIVE: list = []


def client() -> OpenAI:
    return OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=2, timeout=TIMEOUT_SECONDS)


def response_summary(r) -> dict:
    """What a user reads of a Response object, through the SDK's types."""
    return {
        "id": r.id,
        "object": r.object,
        "status": r.status,
        "model": r.model,
        "output_text": r.output_text,
        "output": [
            {
                "type": o.type,
                "id": getattr(o, "id", None),
                "status": getattr(o, "status", None),
                "role": getattr(o, "role", None),
                "content": [c.type for c in getattr(o, "content", None) or []],
            }
            for o in r.output or []
        ],
        "usage": r.usage.model_dump() if r.usage is not None else None,
        "error": r.error.model_dump() if r.error is not None else None,
        "previous_response_id": r.previous_response_id,
        "instructions": r.instructions,
        "store": getattr(r, "store", None),
        "request_id": getattr(r, "_request_id", None),
    }


LIFECYCLE = {"response.created", "response.in_progress", "response.completed", "response.failed", "response.incomplete"}


def event_summary(ev) -> dict:
    out = {"type": ev.type, "seq": getattr(ev, "sequence_number", None)}
    for name in ("output_index", "content_index", "item_id", "delta", "text", "code", "message", "param"):
        value = getattr(ev, name, None)
        if value is not None:
            out[name] = value
    if ev.type in LIFECYCLE:
        out["response"] = response_summary(ev.response)
    item = getattr(ev, "item", None)
    if item is not None:
        out["item"] = {"type": item.type, "id": getattr(item, "id", None), "status": getattr(item, "status", None)}
    part = getattr(ev, "part", None)
    if part is not None:
        out["part"] = {"type": part.type, "text": getattr(part, "text", None)}
    return out


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


def read_events(stream) -> dict:
    """Every event of a stream; an exception in the middle is reported with what came before."""
    events = []
    try:
        for ev in stream:
            events.append(event_summary(ev))
    except Exception as e:  # noqa: BLE001 - the class is what the test checks
        return {"events": events, "raised": error_summary(e)}
    return {"events": events}


# --- cases -------------------------------------------------------------------------


def case_blocking():
    r = client().responses.create(model=MODEL, input="py blocking: what is the capital of France?")
    return response_summary(r)


def case_streaming():
    raw = client().responses.with_raw_response.create(
        model=MODEL, stream=True, input="py streaming: what is the capital of France?"
    )
    out = read_events(raw.parse())
    out["content_type"] = raw.headers.get("content-type")
    out["request_id"] = raw.headers.get("x-request-id")
    return out


def case_stream_helper():
    """The SDK's accumulating helper (`responses.stream`), strict about the event order."""
    with client().responses.stream(model=MODEL, input="py helper: what is the capital of France?") as stream:
        deltas = []
        types = []
        for ev in stream:
            types.append(ev.type)
            if ev.type == "response.output_text.delta":
                deltas.append(ev.delta)
        final = stream.get_final_response()
    out = response_summary(final)
    out["types"] = types
    out["deltas"] = deltas
    return out


def case_three_turns():
    """Turn 1 (blocking, with instructions) starts a conversation; turn 2 (streamed) and
    turn 3 (the helper, message items, instructions again) continue it by id."""
    c = client()
    user = "py-turns-user"
    r1 = c.responses.create(
        model=MODELS["memory"], input="py turn 1: my name is Ada.", instructions=INSTRUCTIONS, user=user
    )
    stream = c.responses.create(
        model=MODELS["memory"],
        stream=True,
        input="py turn 2: what is my name?",
        previous_response_id=r1.id,
        user=user,
    )
    events = read_events(stream)
    completed = [e for e in events["events"] if e["type"] == "response.completed"]
    r2 = completed[0]["response"] if completed else None
    turn2 = {"events": [e["type"] for e in events["events"]], "raised": events.get("raised"), "response": r2}
    if r2 is None:
        return {"turn1": response_summary(r1), "turn2": turn2, "unexpected": "turn 2 did not complete"}
    with c.responses.stream(
        model=MODELS["memory"],
        input=[{"role": "user", "content": [{"type": "input_text", "text": "py turn 3: and my name again?"}]}],
        instructions=INSTRUCTIONS,
        previous_response_id=r2["id"],
        user=user,
    ) as s3:
        r3 = s3.get_final_response()
    return {"turn1": response_summary(r1), "turn2": turn2, "turn3": response_summary(r3)}


def case_unknown_previous():
    client().responses.create(
        model=MODEL,
        input="py unknown previous: hello?",
        previous_response_id="resp_00000000000000000000000000000000",
    )
    return {"unexpected": "no exception"}


def case_store_false():
    c = client()
    r1 = c.responses.create(
        model=MODELS["memory"], input="py unstored 1: my name is Grace.", store=False, user="py-unstored-user"
    )
    out = {"first": response_summary(r1)}
    try:
        r2 = c.responses.create(
            model=MODELS["memory"],
            input="py unstored 2: what is my name?",
            previous_response_id=r1.id,
            user="py-unstored-user",
        )
    except Exception as e:  # noqa: BLE001
        out["raised"] = error_summary(e)
        return out
    out["second"] = response_summary(r2)
    out["unexpected"] = "the unstored id was continued"
    return out


def case_midstream_error():
    """What a plain streaming user gets when Dify fails mid-answer."""
    stream = client().responses.create(model=MODELS["flaky"], stream=True, input="py midstream error")
    return read_events(stream)


def case_midstream_helper():
    """The same through the helper: what `get_final_response()` does."""
    types = []
    deltas = []
    try:
        with client().responses.stream(model=MODELS["flaky"], input="py midstream helper") as stream:
            for ev in stream:
                types.append(ev.type)
                if ev.type == "response.output_text.delta":
                    deltas.append(ev.delta)
            final = stream.get_final_response()
    except Exception as e:  # noqa: BLE001
        return {"types": types, "deltas": deltas, "raised": error_summary(e)}
    return {"types": types, "deltas": deltas, "final": response_summary(final)}


def case_midstream_blocking():
    """The same Dify failure for a blocking request."""
    try:
        r = client().responses.create(model=MODELS["flaky"], input="py midstream blocking")
    except Exception as e:  # noqa: BLE001
        return {"raised": error_summary(e)}
    return {"response": response_summary(r)}


def case_cancel_stream():
    c = client()
    stream = c.responses.create(
        model=MODELS["endless"],
        stream=True,
        input="py cancel: talk forever",
        safety_identifier="py-cancel-user",
    )
    first = None
    for ev in stream:
        if ev.type == "response.output_text.delta":
            first = ev.delta
            break
    # The client and the stream stay referenced until the script exits, so only the
    # explicit close ends the response. The Rust test checks that the proxy's /stop
    # arrived before `linger_until`, i.e. because of the close, not the process exit.
    KEEP_ALIVE.extend([c, stream])
    stream.close()
    closed_at = time.time()
    time.sleep(LINGER_SECONDS)
    return {"first_delta": first, "closed_at": closed_at, "linger_until": time.time()}


def case_tools_refused():
    client().responses.create(
        model=MODEL,
        input="py tools: what is the weather?",
        tools=[
            {
                "type": "function",
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {}},
                "strict": False,
            }
        ],
        # Forcing a call of the client's tool is what a Dify app cannot do.
        tool_choice="required",
    )
    return {"unexpected": "no exception"}


def output_items(r) -> list:
    """A response's output items as a user reads them: type and text."""
    out = []
    for item in r.output:
        if item.type == "reasoning":
            out.append({"type": "reasoning", "text": "".join(s.text for s in item.summary)})
        elif item.type == "message":
            text = "".join(c.text for c in item.content if c.type == "output_text")
            out.append({"type": "message", "text": text})
        else:
            out.append({"type": item.type})
    return out


def case_reasoning():
    """Dify's separate reasoning: a reasoning item before the message, blocking and through
    the accumulating helper (which checks every event's output_index)."""
    blocking = client().responses.create(model=MODELS["thinking"], input="py reasoning blocking")
    with client().responses.stream(model=MODELS["thinking"], input="py reasoning helper") as stream:
        types = [ev.type for ev in stream]
        final = stream.get_final_response()
    return {
        "blocking": output_items(blocking),
        "blocking_text": blocking.output_text,
        "streamed": output_items(final),
        "streamed_text": final.output_text,
        "types": types,
    }


CASES = {
    "blocking": case_blocking,
    "streaming": case_streaming,
    "stream_helper": case_stream_helper,
    "three_turns": case_three_turns,
    "unknown_previous": case_unknown_previous,
    "store_false": case_store_false,
    "midstream_error": case_midstream_error,
    "midstream_helper": case_midstream_helper,
    "midstream_blocking": case_midstream_blocking,
    "cancel_stream": case_cancel_stream,
    "tools_refused": case_tools_refused,
    "reasoning": case_reasoning,
}


def main(argv: list[str]) -> int:
    names = [a for a in argv if a != "all"] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"responses_python.py: unknown case(s) {unknown}; known: {list(CASES)}", file=sys.stderr)
        return 2
    results = {}
    for name in names:
        started = time.monotonic()
        try:
            results[name] = CASES[name]()
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            results[name] = {"raised": error_summary(e)}
        results[name]["seconds"] = round(time.monotonic() - started, 3)
    json.dump(
        {"sdk": "python", "versions": {"openai": metadata.version("openai")}, "cases": results},
        sys.stdout,
        default=str,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
