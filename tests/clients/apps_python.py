"""Completion and workflow apps through the official `openai` Python package.

Run by tests/sdk_apps.rs against the real binary in front of a fake Dify whose model
`writer` is a completion app, `flow` a workflow app, `quiet-flow` a workflow that streams
no text (its outputs answer) and `broken-flow` a workflow whose run fails. Prints `{"sdk": "python", "sdk_version": ..., "cases": {CASE: result}}`; a case
that raises reports the exception (`{"raised": {...}}`). Exit status 3: `openai` is missing.
"""

from __future__ import annotations

import json
import os
import sys

try:
    import openai
    from openai import OpenAI
except ImportError as e:  # pragma: no cover - reported by the Rust test
    print(f"apps_python.py: the openai package is missing ({e})", file=sys.stderr)
    sys.exit(3)

CLIENT = OpenAI(
    base_url=os.environ["OPENDIFY_BASE_URL"],
    api_key=os.environ["OPENDIFY_API_KEY"],
    max_retries=2,
    timeout=10.0,
)


def messages(text):
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"py {text}"}]


def blocking(model, text):
    c = CLIENT.chat.completions.create(model=model, messages=messages(text))
    return {
        "text": c.choices[0].message.content,
        "finish_reason": c.choices[0].finish_reason,
        "total_tokens": c.usage.total_tokens if c.usage else None,
    }


def streaming(model, text):
    parts, finish, total = [], None, None
    stream = CLIENT.chat.completions.create(
        model=model, messages=messages(text), stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
            finish = choice.finish_reason or finish
        if chunk.usage:
            total = chunk.usage.total_tokens
    return {"text": "".join(parts), "finish_reason": finish, "total_tokens": total}


def error_summary(err):
    out = {"class": type(err).__name__, "message": str(getattr(err, "message", err))}
    if isinstance(err, openai.APIError):
        out["code"] = err.code
    if isinstance(err, openai.APIStatusError):
        out["status"] = err.status_code
    return out


def required_input():
    try:
        blocking("form-flow", "summarise formally")
        missing = {"unexpected": "no exception"}
    except Exception as e:  # noqa: BLE001
        missing = {"raised": error_summary(e)}
    c = CLIENT.chat.completions.create(
        model="form-flow", messages=messages("summarise formally"), extra_body={"inputs": {"tone": "formal"}}
    )
    return {"missing": missing, "text": c.choices[0].message.content}


CASES = {
    "completion_blocking": lambda: blocking("writer", "write a greeting"),
    "completion_stream": lambda: streaming("writer", "write a greeting"),
    "workflow_blocking": lambda: blocking("flow", "summarise the article"),
    "workflow_stream": lambda: streaming("flow", "summarise the article"),
    "outputs_blocking": lambda: blocking("quiet-flow", "summarise the article"),
    "outputs_stream": lambda: streaming("quiet-flow", "summarise the article"),
    "workflow_failed_blocking": lambda: blocking("broken-flow", "summarise the article"),
    "workflow_failed_stream": lambda: streaming("broken-flow", "summarise the article"),
    "workflow_required_input": required_input,
}


def main() -> int:
    results = {}
    for name, case in CASES.items():
        try:
            results[name] = case()
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            results[name] = {"raised": error_summary(e)}
    json.dump({"sdk": "python", "sdk_version": openai.__version__, "cases": results}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
