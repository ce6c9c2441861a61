"""A context overflow as LangChain and LiteLLM see it: their own exception classes.

Run by tests/sdk_apps.rs against the real binary in front of a fake Dify whose model
`long-app` answers every request with a provider's context-overflow failure (before the
stream) and `long-stream-app` starts answering, then fails the same way (an error event).
The provider's words are ones neither library knows, so only the proxy's wording can make
them recognise it. Prints `{"cases": {CASE: result}}`. Exit status 3: a package is missing.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import sys

# LiteLLM reads its model cost map from the network unless told to use its bundled copy.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

try:
    import litellm
    import openai
    from langchain_core.exceptions import ContextOverflowError
    from langchain_openai import ChatOpenAI
except ImportError as e:  # pragma: no cover - reported by the Rust test
    print(f"context_overflow.py: a client package is missing ({e})", file=sys.stderr)
    sys.exit(3)

litellm.telemetry = False

BASE_URL = os.environ["OPENDIFY_BASE_URL"]
API_KEY = os.environ["OPENDIFY_API_KEY"]


def caught(run):
    try:
        run()
    except Exception as e:  # noqa: BLE001 - the class is the result
        return {
            "class": type(e).__name__,
            "context_overflow": isinstance(e, ContextOverflowError),
            "context_window_exceeded": isinstance(e, litellm.ContextWindowExceededError),
            "message": str(e),
        }
    return {"unexpected": "no exception"}


def langchain(model, **kwargs):
    llm = ChatOpenAI(model=model, base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=20, **kwargs)
    return llm


CASES = {
    "langchain_invoke": lambda: caught(lambda: langchain("long-app").invoke("lc a long chat")),
    "langchain_stream": lambda: caught(
        lambda: list(langchain("long-stream-app", streaming=True).stream("lc a long chat"))
    ),
    "langchain_responses_stream": lambda: caught(
        lambda: list(langchain("long-stream-app", use_responses_api=True).stream("lc a long chat"))
    ),
    "litellm_completion": lambda: caught(
        lambda: litellm.completion(
            model="openai/long-app",
            api_base=BASE_URL,
            api_key=API_KEY,
            messages=[{"role": "user", "content": "litellm a long chat"}],
            num_retries=0,
            max_retries=0,
            timeout=20,
        )
    ),
}


def main() -> int:
    # LiteLLM prints help lines on failures; stdout carries only the report.
    with contextlib.redirect_stdout(sys.stderr):
        results = {name: case() for name, case in CASES.items()}
    json.dump(
        {
            "versions": {
                "openai": openai.__version__,
                "litellm": importlib.metadata.version("litellm"),
            },
            "cases": results,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
