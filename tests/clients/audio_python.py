"""Speech through the official `openai` Python package: `audio.speech` and
`audio.transcriptions`.

Run by tests/sdk_apps.rs against the real binary in front of a fake Dify whose model
`voice-app` has text-to-speech and speech-to-text on and `mute-app` has both off. Prints
`{"sdk": "python", "sdk_version": ..., "cases": {CASE: result}}`; a case that raises
reports the exception (`{"raised": {...}}`). Exit status 3: `openai` is missing.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

try:
    import openai
    from openai import OpenAI
except ImportError as e:  # pragma: no cover - reported by the Rust test
    print(f"audio_python.py: the openai package is missing ({e})", file=sys.stderr)
    sys.exit(3)

CLIENT = OpenAI(
    base_url=os.environ["OPENDIFY_BASE_URL"],
    api_key=os.environ["OPENDIFY_API_KEY"],
    max_retries=0,
    timeout=20.0,
)

# The start of an MP3 file (an ID3 tag), then filler: the fake Dify only checks the type.
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00py-recording"


def error_summary(err):
    out = {"class": type(err).__name__, "message": str(getattr(err, "message", err))}
    if isinstance(err, openai.APIError):
        out["code"] = err.code
        out["param"] = err.param
    if isinstance(err, openai.APIStatusError):
        out["status"] = err.status_code
    return out


def speech_stream():
    with CLIENT.audio.speech.with_streaming_response.create(
        model="voice-app", voice="alloy", input="Python reads this aloud."
    ) as response:
        chunks = [c for c in response.iter_bytes() if c]
        return {
            "content_type": response.headers.get("content-type"),
            "audio_hex": b"".join(chunks).hex(),
        }


def speech(**kwargs):
    CLIENT.audio.speech.create(model=kwargs.pop("model", "voice-app"), voice="alloy", input="Hello", **kwargs)
    return {"unexpected": "no exception"}


def transcription(**kwargs):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "py-memo.mp3")
        with open(path, "wb") as f:
            f.write(MP3)
        with open(path, "rb") as f:
            result = CLIENT.audio.transcriptions.create(
                model=kwargs.pop("model", "voice-app"), file=f, language="en", **kwargs
            )
    # `json` gives a Transcription object, `text` a plain string.
    return {"text": result if isinstance(result, str) else result.text, "type": type(result).__name__}


CASES = {
    "speech_stream": speech_stream,
    "speech_wav_refused": lambda: speech(response_format="wav"),
    "speech_app_off": lambda: speech(model="mute-app"),
    "transcription_json": transcription,
    "transcription_text": lambda: transcription(response_format="text"),
    "transcription_srt_refused": lambda: transcription(response_format="srt"),
    "transcription_app_off": lambda: transcription(model="mute-app"),
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
