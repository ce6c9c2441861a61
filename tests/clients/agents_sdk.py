"""The OpenAI Agents SDK (`openai-agents`) against a running opendify, with its default
model: `OpenAIResponsesModel`, which speaks POST /v1/responses.

Run by tests/sdk_responses.rs, which starts a fake Dify and the real binary, then checks
this script's output and what the fake Dify saw. By hand:

    OPENDIFY_BASE_URL=http://127.0.0.1:5000/v1 OPENDIFY_API_KEY=local-dev-key \
    OPENDIFY_MODEL=my-app .venv-tools/bin/python tests/clients/agents_sdk.py [CASE ...]

No CASE (or `all`) runs every case. Prints one JSON object on stdout:
`{"sdk": "agents", "versions": {...}, "cases": {CASE: result, ...}}`; a case that raises
reports the exception (`{"raised": {...}}`).
Exit status 3: the `openai-agents` package is not installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from importlib import metadata

try:
    import openai
    from openai import AsyncOpenAI
    from agents import (
        Agent,
        Runner,
        set_default_openai_api,
        set_default_openai_client,
        set_tracing_disabled,
    )
    from agents.models.multi_provider import MultiProvider
    from agents.models.openai_responses import OpenAIResponsesModel
except ImportError as e:  # pragma: no cover - reported by the Rust test
    print(
        f"agents_sdk.py: the openai-agents package is missing ({e}); install it with:\n"
        "  .venv-tools/bin/pip install -r tests/clients/requirements.txt",
        file=sys.stderr,
    )
    sys.exit(3)

BASE_URL = os.environ["OPENDIFY_BASE_URL"]
API_KEY = os.environ["OPENDIFY_API_KEY"]
MODEL = os.environ.get("OPENDIFY_MODEL", "my-app")
MEMORY_MODEL = "memory-app"  # generated answers, conversation ids checked like Dify
FLAKY_MODEL = "flaky-app"  # a stream with a Dify error event in the middle
THINKING_MODEL = "thinking-app"  # a chatflow whose LLM sends its reasoning apart

INSTRUCTIONS = "agents: answer in one sentence."


def setup() -> None:
    # Tracing off so nothing tries to reach OpenAI; the default API is the Responses API
    # already, said here so a changed default cannot silently switch to chat completions.
    set_tracing_disabled(True)
    set_default_openai_api("responses")
    set_default_openai_client(
        AsyncOpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=2, timeout=10.0),
        use_for_tracing=False,
    )


def agent(model: str = MODEL) -> Agent:
    return Agent(name="Assistant", instructions=INSTRUCTIONS, model=model)


def error_summary(err: BaseException) -> dict:
    out = {"class": type(err).__name__, "message": str(err)}
    cause = err
    # The SDK may wrap the transport's error; report the openai one underneath too.
    while cause is not None and not isinstance(cause, openai.APIError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, openai.APIError):
        out["api_error"] = {
            "class": type(cause).__name__,
            "code": cause.code,
            "param": cause.param,
            "message": cause.message,
        }
        if isinstance(cause, openai.APIStatusError):
            out["api_error"]["status"] = cause.status_code
    return out


def run_summary(result) -> dict:
    last = result.raw_responses[-1] if result.raw_responses else None
    return {
        "final_output": result.final_output,
        "last_response_id": result.last_response_id,
        "n_model_responses": len(result.raw_responses),
        "usage": (
            {
                "input_tokens": last.usage.input_tokens,
                "output_tokens": last.usage.output_tokens,
                "total_tokens": last.usage.total_tokens,
            }
            if last is not None
            else None
        ),
    }


# --- cases -------------------------------------------------------------------------


async def case_model_class():
    """Which model class the runner's default provider picks for a model name."""
    model = MultiProvider().get_model(MODEL)
    return {"class": type(model).__name__, "is_responses": isinstance(model, OpenAIResponsesModel)}


async def case_run():
    result = await Runner.run(agent(), "agents run: what is the capital of France?")
    return run_summary(result)


async def case_run_streamed():
    result = Runner.run_streamed(agent(), "agents streamed: what is the capital of France?")
    deltas = []
    raw_types = []
    async for event in result.stream_events():
        if event.type == "raw_response_event":
            raw_types.append(event.data.type)
            if event.data.type == "response.output_text.delta":
                deltas.append(event.data.delta)
    out = run_summary(result)
    out["deltas"] = deltas
    out["raw_types"] = raw_types
    return out


async def case_two_turns():
    first = await Runner.run(agent(MEMORY_MODEL), "agents turn 1: my name is Ada.")
    second = await Runner.run(
        agent(MEMORY_MODEL),
        "agents turn 2: what is my name?",
        previous_response_id=first.last_response_id,
    )
    return {"turn1": run_summary(first), "turn2": run_summary(second)}


async def case_unknown_previous():
    await Runner.run(
        agent(),
        "agents unknown previous: hello?",
        previous_response_id="resp_00000000000000000000000000000000",
    )
    return {"unexpected": "no exception"}


async def case_midstream_error():
    """What an agent user gets when Dify fails mid-answer (streamed)."""
    result = Runner.run_streamed(agent(FLAKY_MODEL), "agents midstream error")
    deltas = []
    try:
        async for event in result.stream_events():
            if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
                deltas.append(event.data.delta)
    except Exception as e:  # noqa: BLE001 - the class is what the test checks
        return {"deltas": deltas, "raised": error_summary(e)}
    return {"deltas": deltas, "final_output": result.final_output, "unexpected": "no exception"}


async def case_reasoning():
    result = await Runner.run(agent(THINKING_MODEL), "agents reasoning: what is the capital of France?")
    out = run_summary(result)
    out["items"] = [type(item).__name__ for item in result.new_items]
    return out


CASES = {
    "model_class": case_model_class,
    "run": case_run,
    "run_streamed": case_run_streamed,
    "two_turns": case_two_turns,
    "unknown_previous": case_unknown_previous,
    "midstream_error": case_midstream_error,
    "reasoning": case_reasoning,
}


async def run_all(names: list[str]) -> dict:
    setup()
    results = {}
    for name in names:
        started = time.monotonic()
        try:
            results[name] = await CASES[name]()
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            results[name] = {"raised": error_summary(e)}
        results[name]["seconds"] = round(time.monotonic() - started, 3)
    return results


def main(argv: list[str]) -> int:
    names = [a for a in argv if a != "all"] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"agents_sdk.py: unknown case(s) {unknown}; known: {list(CASES)}", file=sys.stderr)
        return 2
    results = asyncio.run(run_all(names))
    versions = {"openai": metadata.version("openai"), "openai-agents": metadata.version("openai-agents")}
    json.dump({"sdk": "agents", "versions": versions, "cases": results}, sys.stdout, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
