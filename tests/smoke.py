#!/usr/bin/env python3
"""Smoke test of a running OpenDify: one command, Python standard library only.

    python3 tests/smoke.py --base-url https://xxx.lambda-url.eu-west-1.on.aws/v1 \\
        --key "$OPENDIFY_KEY" --model my-app [--expect-continuity]

--base-url is the OpenAI base URL (what clients are configured with, ending in /v1): a
deployed function URL followed by v1, http://127.0.0.1:5000/v1 for `cargo run`, or
http://127.0.0.1:9000/lambda-url/opendify/v1 under `cargo lambda watch`. The key may also
come from the OPENDIFY_API_KEY environment variable (keeps it out of shell history); it is
never printed.

Checks, one line each (PASS/FAIL and what was seen):
  models         GET /models lists the model
  blocking       a non-streaming answer: chat.completion, non-empty content, usage
  streaming      a streamed answer, read as it arrives: text/event-stream, role first,
                 one id, exactly one finish_reason, data: [DONE], non-empty content;
                 reports time to first chunk and how the chunks were spread in time
  continuity     two turns of one chat (X-OpenWebUI-Chat-Id: a random id), the second
                 sending the full history; only their status and answer are checked
  continuity-3   only with --expect-continuity: a third request with the same chat id and
                 NO history asks for a word given in turn 1; it can only be answered if
                 the proxy continued the Dify conversation (needs a real LLM app)
  unknown-model  404 model_not_found, OpenAI error JSON
  wrong-key      401 invalid_api_key

Exit status 0 only if every check passed. Every request has a timeout (--timeout).
These calls cost a few Dify/LLM tokens; the Dify end user is --user (opendify-smoke).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request

USER_AGENT = "opendify-smoke/1"
CONTINUITY_TURN2 = "Thanks. Reply with the single word OK."


class Smoke:
    def __init__(self, args: argparse.Namespace) -> None:
        self.base = args.base_url.rstrip("/")
        self.key = args.key
        self.model = args.model
        self.user = args.user
        self.timeout = args.timeout
        self.passed = 0
        self.failed = 0

    # -- output -------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        return text.replace(self.key, "<key>") if self.key else text

    def result(self, name: str, ok: bool, seen: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        # Only `seen` can carry text from the server; the key is never put there by us.
        print(f"{'PASS' if ok else 'FAIL'} {name}: {self.redact(seen)}", flush=True)
        return ok

    # -- HTTP ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, body=None, key=None, headers=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.key if key is None else key}")
        req.add_header("User-Agent", USER_AGENT)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        return req

    def call(self, method: str, path: str, body=None, key=None, headers=None):
        """(status, headers, parsed JSON or None, raw text, seconds). Raises on network errors."""
        req = self._request(method, path, body, key, headers)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, hdrs, raw = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, hdrs, raw = e.code, e.headers, e.read()
        elapsed = time.monotonic() - started
        text = raw.decode("utf-8", "replace")
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        return status, hdrs, parsed, text, elapsed

    def chat(self, messages, stream=False, headers=None, model=None):
        body = {"model": model or self.model, "messages": messages, "stream": stream, "user": self.user}
        return self.call("POST", "/chat/completions", body, headers=headers)

    # -- checks -------------------------------------------------------------------------

    def guarded(self, name: str, fn) -> None:
        try:
            fn(name)
        except Exception as e:  # network error, timeout, unexpected shape
            self.result(name, False, f"{type(e).__name__}: {e}")

    def check_models(self, name: str) -> None:
        status, _, body, text, t = self.call("GET", "/models")
        ids = [m.get("id") for m in (body or {}).get("data", []) if isinstance(m, dict)]
        ok = status == 200 and (body or {}).get("object") == "list" and self.model in ids
        self.result(name, ok, f"HTTP {status} in {t:.2f}s, models {ids}" if body else f"HTTP {status}: {text[:200]!r}")

    def check_blocking(self, name: str) -> None:
        status, _, body, text, t = self.chat([{"role": "user", "content": "Say hello in one short sentence."}])
        if status != 200 or not isinstance(body, dict):
            self.result(name, False, f"HTTP {status}: {text[:300]!r}")
            return
        content = ((body.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
        usage = body.get("usage") or {}
        problems = []
        if body.get("object") != "chat.completion":
            problems.append(f"object {body.get('object')!r}")
        if not content.strip():
            problems.append("empty content")
        if not isinstance(usage.get("total_tokens"), int):
            problems.append(f"usage missing ({usage!r})")
        seen = f"HTTP 200 in {t:.2f}s, {len(content)} chars, usage {usage.get('prompt_tokens')}+{usage.get('completion_tokens')}={usage.get('total_tokens')}, finish_reason {body['choices'][0].get('finish_reason')!r}"
        self.result(name, not problems, seen + ("; " + "; ".join(problems) if problems else ""))

    def check_streaming(self, name: str) -> None:
        body = {
            "model": self.model,
            "stream": True,
            "user": self.user,
            "messages": [{"role": "user", "content": "Count from one to five in words, separated by spaces."}],
        }
        req = self._request("POST", "/chat/completions", body)
        started = time.monotonic()
        deadline = started + self.timeout
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            self.result(name, False, f"HTTP {e.code}: {e.read()[:300]!r}")
            return
        problems: list[str] = []
        chunks: list[dict] = []
        content_times: list[float] = []
        first_chunk = None
        done = False
        after_done = 0
        pings = 0
        with resp:
            ctype = resp.headers.get("Content-Type", "")
            if resp.status != 200:
                problems.append(f"HTTP {resp.status}")
            if not ctype.startswith("text/event-stream"):
                problems.append(f"content-type {ctype!r}")
            while True:
                if time.monotonic() > deadline:
                    problems.append(f"stream not finished after {self.timeout:.0f}s")
                    break
                line = resp.readline()  # returns as soon as one line has arrived
                if not line:
                    break
                now = time.monotonic() - started
                line = line.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    continue
                if line.startswith(":"):
                    pings += 1
                    continue
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if done:
                    after_done += 1
                    continue
                if payload == "[DONE]":
                    done = True
                    continue
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    problems.append(f"not JSON: {payload[:80]!r}")
                    continue
                if "error" in chunk:
                    problems.append(f"error event {json.dumps(chunk['error'])[:200]}")
                    continue
                if first_chunk is None:
                    first_chunk = now
                chunks.append(chunk)
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        content_times.append(now)
        total = time.monotonic() - started
        choices = [c for ch in chunks for c in (ch.get("choices") or [])]
        ids = {ch.get("id") for ch in chunks}
        finishes = [c.get("finish_reason") for c in choices if c.get("finish_reason") is not None]
        text = "".join((c.get("delta") or {}).get("content") or "" for c in choices)
        if not chunks:
            problems.append("no chunks")
        else:
            first_delta = ((chunks[0].get("choices") or [{}])[0].get("delta")) or {}
            if first_delta.get("role") != "assistant":
                problems.append(f"first delta has no role: {first_delta!r}")
            if len(ids) != 1:
                problems.append(f"{len(ids)} different ids")
            if any(ch.get("object") != "chat.completion.chunk" for ch in chunks):
                problems.append("a chunk is not chat.completion.chunk")
        if len(finishes) != 1:
            problems.append(f"{len(finishes)} finish_reason chunks")
        if not done:
            problems.append("no data: [DONE]")
        if after_done:
            problems.append(f"{after_done} events after [DONE]")
        if not text.strip():
            problems.append("empty content")
        spread = f"{content_times[-1] - content_times[0]:.2f}s" if content_times else "n/a"
        ttfc = f"{first_chunk:.2f}s" if first_chunk is not None else "n/a"
        ttft = f"{content_times[0]:.2f}s" if content_times else "n/a"
        seen = (
            f"{len(chunks)} chunks, first chunk after {ttfc}, first content after {ttft}, "
            f"content spread over {spread}, total {total:.2f}s, {len(text)} chars, "
            f"finish_reason {finishes}, {pings} ping comment(s)"
        )
        self.result(name, not problems, seen + ("; " + "; ".join(problems) if problems else ""))

    def answer_of(self, body) -> str:
        try:
            return body["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            return ""

    def check_continuity(self, expect: bool) -> None:
        chat_id = "smoke-" + secrets.token_hex(8)
        word = secrets.choice(["amber", "cobalt", "juniper", "saffron", "walnut", "quartz"])
        marker = f"{word}-{secrets.randbelow(9000) + 1000}"
        header = {"X-OpenWebUI-Chat-Id": chat_id}
        turn1 = [{"role": "user", "content": f"Remember this code word: {marker}. Reply with the single word OK."}]

        def turns(name: str) -> None:
            status, _, body, text, t = self.chat(turn1, headers=header)
            a1 = self.answer_of(body)
            if not self.result(f"{name} turn 1", status == 200 and bool(a1.strip()), f"chat id {chat_id}: HTTP {status} in {t:.2f}s, {len(a1)} chars" + ("" if status == 200 else f": {text[:200]!r}")):
                return
            history = turn1 + [{"role": "assistant", "content": a1}, {"role": "user", "content": CONTINUITY_TURN2}]
            status, _, body, text, t = self.chat(history, headers=header)
            a2 = self.answer_of(body)
            self.result(
                f"{name} turn 2",
                status == 200 and bool(a2.strip()),
                f"full history, same chat id: HTTP {status} in {t:.2f}s, {len(a2)} chars "
                "(only status and a non-empty answer are checked: whether Dify continued the "
                "conversation is not visible to a client; see --expect-continuity)",
            )
            if not expect:
                return
            question = [{"role": "user", "content": "What code word did I ask you to remember earlier in this chat? Reply with the code word only."}]
            status, _, body, text, t = self.chat(question, headers=header)
            a3 = self.answer_of(body)
            recalled = word in a3.lower() and marker.split("-")[1] in a3
            self.result(
                f"{name}-3 (--expect-continuity)",
                status == 200 and recalled,
                f"same chat id, no history sent: HTTP {status} in {t:.2f}s, answer "
                f"{'contains' if recalled else 'does NOT contain'} the code word given in turn 1 "
                "(it can only come from the continued Dify conversation; an LLM may still fail to repeat it)",
            )

        self.guarded("continuity", turns)

    def check_unknown_model(self, name: str) -> None:
        model = "smoke-no-such-model-" + secrets.token_hex(3)
        status, _, body, text, t = self.chat([{"role": "user", "content": "hi"}], model=model)
        err = (body or {}).get("error") if isinstance(body, dict) else None
        ok = status == 404 and isinstance(err, dict) and err.get("code") == "model_not_found" and bool(err.get("message"))
        seen = f"HTTP {status}, error code {err.get('code')!r}, type {err.get('type')!r}" if isinstance(err, dict) else f"HTTP {status}: {text[:200]!r}"
        self.result(name, ok, seen)

    def check_wrong_key(self, name: str) -> None:
        wrong = "smoke-wrong-key-" + secrets.token_hex(8)
        status, hdrs, body, text, t = self.call("GET", "/models", key=wrong)
        err = (body or {}).get("error") if isinstance(body, dict) else None
        ok = status == 401 and isinstance(err, dict) and err.get("code") == "invalid_api_key"
        seen = f"HTTP {status}, error code {err.get('code')!r}" if isinstance(err, dict) else f"HTTP {status}: {text[:200]!r}"
        self.result(name, ok, seen)

    def run(self, expect_continuity: bool) -> int:
        print(f"smoke: {self.base} model {self.model!r} user {self.user!r} timeout {self.timeout:.0f}s", flush=True)
        if not self.base.endswith("/v1"):
            print("smoke: note: the base URL usually ends in /v1", flush=True)
        self.guarded("models", self.check_models)
        self.guarded("blocking", self.check_blocking)
        self.guarded("streaming", self.check_streaming)
        self.check_continuity(expect_continuity)
        self.guarded("unknown-model", self.check_unknown_model)
        self.guarded("wrong-key", self.check_wrong_key)
        print(f"smoke: {self.passed} passed, {self.failed} failed", flush=True)
        return 1 if self.failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Smoke test of a running OpenDify (stdlib only).",
        epilog="Example: python3 tests/smoke.py --base-url https://xxx.lambda-url.eu-west-1.on.aws/v1 --key $KEY --model my-app",
    )
    ap.add_argument("--base-url", required=True, help="OpenAI base URL, ending in /v1")
    ap.add_argument("--key", default=os.environ.get("OPENDIFY_API_KEY"), help="a proxy key (default: $OPENDIFY_API_KEY)")
    ap.add_argument("--model", required=True, help="a model name from MODEL_CONFIG")
    ap.add_argument("--user", default="opendify-smoke", help="Dify end user for these requests (default: opendify-smoke)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request, streams included (default: 120)")
    ap.add_argument(
        "--expect-continuity",
        action="store_true",
        help="also ask, with the same chat id and no history, for a word given in turn 1 (needs an LLM app that follows instructions)",
    )
    args = ap.parse_args()
    if not args.key:
        ap.error("--key (or OPENDIFY_API_KEY) is required")
    return Smoke(args).run(args.expect_continuity)


if __name__ == "__main__":
    sys.exit(main())
