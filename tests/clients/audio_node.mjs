// Speech through the official `openai` npm package: `audio.speech` and
// `audio.transcriptions`.
//
// Run by tests/sdk_apps.rs against the real binary in front of a fake Dify whose model
// `voice-app` has text-to-speech and speech-to-text on and `mute-app` has both off.
// Prints `{"sdk": "node", "sdk_version": ..., "cases": {CASE: result}}`; a case that
// throws reports the error (`{"raised": {...}}`). Exit status 3: `openai` is missing.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

let OpenAI;
let sdkVersion;
try {
  ({ default: OpenAI } = await import('openai'));
  ({ VERSION: sdkVersion } = await import('openai/version'));
} catch (e) {
  console.error(`audio_node.mjs: the openai package is missing (${e.message})`);
  process.exit(3);
}

const client = new OpenAI({
  baseURL: process.env.OPENDIFY_BASE_URL,
  apiKey: process.env.OPENDIFY_API_KEY,
  maxRetries: 0,
  timeout: 20_000,
});

// The start of an MP3 file (an ID3 tag), then filler: the fake Dify only checks the type.
const MP3 = Buffer.concat([Buffer.from([0x49, 0x44, 0x33, 4, 0, 0, 0, 0, 0, 0]), Buffer.from('node-recording')]);

function errorSummary(err) {
  const out = { class: err?.constructor?.name ?? typeof err, message: String(err?.message ?? err) };
  if (err instanceof OpenAI.APIError) {
    out.status = err.status ?? null;
    out.code = err.code ?? null;
    out.param = err.param ?? null;
  }
  return out;
}

async function speechStream() {
  const response = await client.audio.speech.create({
    model: 'voice-app',
    voice: 'alloy',
    input: 'Node reads this aloud.',
  });
  const chunks = [];
  for await (const chunk of response.body) {
    chunks.push(Buffer.from(chunk));
  }
  return {
    content_type: response.headers.get('content-type'),
    audio_hex: Buffer.concat(chunks).toString('hex'),
  };
}

async function speech(extra) {
  await client.audio.speech.create({ model: 'voice-app', voice: 'alloy', input: 'Hello', ...extra });
  return { unexpected: 'no exception' };
}

async function transcription(extra = {}) {
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'opendify-audio-'));
  const file = path.join(folder, 'node-memo.mp3');
  fs.writeFileSync(file, MP3);
  try {
    const result = await client.audio.transcriptions.create({
      model: 'voice-app',
      file: fs.createReadStream(file),
      ...extra,
    });
    // `json` gives an object, `text` a plain string.
    return { text: typeof result === 'string' ? result : result.text, type: typeof result };
  } finally {
    fs.rmSync(folder, { recursive: true, force: true });
  }
}

const CASES = {
  speech_stream: speechStream,
  speech_wav_refused: () => speech({ response_format: 'wav' }),
  speech_app_off: () => speech({ model: 'mute-app' }),
  transcription_json: () => transcription(),
  transcription_text: () => transcription({ response_format: 'text' }),
  transcription_srt_refused: () => transcription({ response_format: 'srt' }),
  transcription_app_off: () => transcription({ model: 'mute-app' }),
};

const results = {};
for (const [name, run] of Object.entries(CASES)) {
  try {
    results[name] = await run();
  } catch (e) {
    results[name] = { raised: errorSummary(e) };
  }
}
process.stdout.write(JSON.stringify({ sdk: 'node', sdk_version: sdkVersion, cases: results }) + '\n');
