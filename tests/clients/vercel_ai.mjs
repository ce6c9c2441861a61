// The Vercel AI SDK (`ai` + `@ai-sdk/openai`) against a running opendify, with the
// provider's default model (`createOpenAI(...)(model)`), which calls POST /v1/responses.
//
// Run by tests/sdk_responses.rs, which starts a fake Dify and the real binary, then checks
// this script's output and what the fake Dify saw. By hand (after `npm ci --prefix tests/clients`):
//
//   OPENDIFY_BASE_URL=http://127.0.0.1:5000/v1 OPENDIFY_API_KEY=local-dev-key \
//   OPENDIFY_MODEL=my-app node tests/clients/vercel_ai.mjs [CASE ...]
//
// No CASE (or `all`) runs every case. Prints one JSON object on stdout:
// `{"sdk": "vercel", "versions": {...}, "cases": {CASE: result, ...}}`; a case that throws
// reports the error (`{"raised": {...}}`).
// Exit status 3: the packages are not installed.

import { readFileSync } from 'node:fs';

let ai;
let createOpenAI;
try {
  ai = await import('ai');
  ({ createOpenAI } = await import('@ai-sdk/openai'));
} catch (e) {
  console.error(
    `vercel_ai.mjs: the ai / @ai-sdk/openai packages are missing (${e.message}); install them with:\n` +
      '  npm ci --prefix tests/clients',
  );
  process.exit(3);
}

const BASE_URL = process.env.OPENDIFY_BASE_URL;
const API_KEY = process.env.OPENDIFY_API_KEY;
const MODEL = process.env.OPENDIFY_MODEL || 'my-app';
if (!BASE_URL || !API_KEY) {
  console.error('vercel_ai.mjs: set OPENDIFY_BASE_URL and OPENDIFY_API_KEY');
  process.exit(2);
}
const MEMORY_MODEL = 'memory-app'; // generated answers, conversation ids checked like Dify
const FLAKY_MODEL = 'flaky-app'; // a stream with a Dify error event in the middle

// The package versions actually installed (their package.json; `exports` hides it from import).
function installedVersion(name) {
  const url = new URL(`./node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(url, 'utf8')).version;
}

// The provider's default: `provider(model)` is its Responses API model.
function model(name = MODEL) {
  return createOpenAI({ baseURL: BASE_URL, apiKey: API_KEY })(name);
}

function errorSummary(err) {
  const out = {
    class: err?.constructor?.name ?? typeof err,
    name: err?.name ?? null,
    message: String(err?.message ?? err),
  };
  if (err?.statusCode !== undefined) out.status = err.statusCode;
  if (err?.isRetryable !== undefined) out.is_retryable = err.isRetryable;
  if (err?.responseBody !== undefined) out.body = err.responseBody;
  if (err?.cause) out.cause = String(err.cause?.message ?? err.cause);
  return out;
}

function usageSummary(u) {
  return u ? { input_tokens: u.inputTokens ?? null, output_tokens: u.outputTokens ?? null, total_tokens: u.totalTokens ?? null } : null;
}

const CASES = {
  async generate_text() {
    const r = await ai.generateText({ model: model(), prompt: 'vercel generate: what is the capital of France?' });
    return {
      text: r.text,
      finish_reason: r.finishReason,
      usage: usageSummary(r.usage),
      response_id: r.response?.id ?? null,
      model_id: r.response?.modelId ?? null,
    };
  },

  async stream_text() {
    const errors = [];
    const r = ai.streamText({
      model: model(),
      prompt: 'vercel stream: what is the capital of France?',
      onError: ({ error }) => errors.push(errorSummary(error)),
    });
    const chunks = [];
    for await (const t of r.textStream) chunks.push(t);
    return {
      chunks,
      text: await r.text,
      finish_reason: await r.finishReason,
      usage: usageSummary(await r.usage),
      response_id: (await r.response)?.id ?? null,
      errors,
    };
  },

  // Two turns: the second continues the first by its response id (the provider's
  // `previousResponseId` option), streamed.
  async two_turns() {
    const first = await ai.generateText({ model: model(MEMORY_MODEL), prompt: 'vercel turn 1: my name is Ada.' });
    const responseId = first.providerMetadata?.openai?.responseId ?? null;
    const second = ai.streamText({
      model: model(MEMORY_MODEL),
      prompt: 'vercel turn 2: what is my name?',
      providerOptions: { openai: { previousResponseId: responseId } },
    });
    let text = '';
    for await (const t of second.textStream) text += t;
    return { turn1: first.text, response_id: responseId, turn2: text, finish_reason: await second.finishReason };
  },

  async unknown_previous() {
    await ai.generateText({
      model: model(),
      prompt: 'vercel unknown previous: hello?',
      providerOptions: { openai: { previousResponseId: 'resp_00000000000000000000000000000000' } },
    });
    return { unexpected: 'no exception' };
  },

  // What a streamText user sees when Dify fails mid-answer: the text stream, and the parts
  // of the full stream (where the AI SDK puts errors).
  async stream_error() {
    const errors = [];
    const r = ai.streamText({
      model: model(FLAKY_MODEL),
      prompt: 'vercel stream error',
      onError: ({ error }) => errors.push(errorSummary(error)),
    });
    const parts = [];
    let raised = null;
    try {
      for await (const p of r.fullStream) {
        parts.push(p.type === 'error' ? { type: 'error', error: errorSummary(p.error) } : { type: p.type, text: p.text ?? null });
      }
    } catch (e) {
      raised = errorSummary(e);
    }
    let finishReason = null;
    try {
      finishReason = await r.finishReason;
    } catch (e) {
      finishReason = { raised: errorSummary(e) };
    }
    return { parts, raised, finish_reason: finishReason, on_error: errors };
  },

  // The same failure for generateText.
  async generate_error() {
    try {
      const r = await ai.generateText({ model: model(FLAKY_MODEL), prompt: 'vercel generate error' });
      return { text: r.text, finish_reason: r.finishReason, unexpected: 'no exception' };
    } catch (e) {
      return { raised: errorSummary(e) };
    }
  },
};

const args = process.argv.slice(2).filter((a) => a !== 'all');
const names = args.length > 0 ? args : Object.keys(CASES);
const unknown = names.filter((n) => !(n in CASES));
if (unknown.length > 0) {
  console.error(`vercel_ai.mjs: unknown case(s) ${unknown}; known: ${Object.keys(CASES)}`);
  process.exit(2);
}
const results = {};
for (const name of names) {
  const started = performance.now();
  try {
    results[name] = await CASES[name]();
  } catch (e) {
    results[name] = { raised: errorSummary(e) };
  }
  results[name].seconds = Math.round(performance.now() - started) / 1000;
}
const versions = { ai: installedVersion('ai'), '@ai-sdk/openai': installedVersion('@ai-sdk/openai') };
process.stdout.write(JSON.stringify({ sdk: 'vercel', versions, cases: results }) + '\n');
