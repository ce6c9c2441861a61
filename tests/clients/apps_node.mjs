// Completion and workflow apps through the official `openai` npm package.
//
// Run by tests/sdk_apps.rs against the real binary in front of a fake Dify whose model
// `writer` is a completion app, `flow` a workflow app, `quiet-flow` a workflow that
// streams no text (its outputs answer) and `broken-flow` a workflow whose run fails. Prints `{"sdk": "node", "sdk_version": ..., "cases": {CASE: result}}`; a case
// that throws reports the error (`{"raised": {...}}`). Exit status 3: `openai` is missing.

let OpenAI;
let sdkVersion;
try {
  ({ default: OpenAI } = await import('openai'));
  ({ VERSION: sdkVersion } = await import('openai/version'));
} catch (e) {
  console.error(`apps_node.mjs: the openai package is missing (${e.message})`);
  process.exit(3);
}

const client = new OpenAI({
  baseURL: process.env.OPENDIFY_BASE_URL,
  apiKey: process.env.OPENDIFY_API_KEY,
  maxRetries: 2,
  timeout: 10_000,
});

const messages = (text) => [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: `node ${text}` },
];

async function blocking(model, text) {
  const c = await client.chat.completions.create({ model, messages: messages(text) });
  return {
    text: c.choices[0].message.content,
    finish_reason: c.choices[0].finish_reason,
    total_tokens: c.usage?.total_tokens ?? null,
  };
}

async function streaming(model, text) {
  const stream = await client.chat.completions.create({
    model,
    messages: messages(text),
    stream: true,
    stream_options: { include_usage: true },
  });
  let out = '';
  let finish = null;
  let total = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      out += choice.delta.content ?? '';
      finish = choice.finish_reason ?? finish;
    }
    if (chunk.usage) total = chunk.usage.total_tokens;
  }
  return { text: out, finish_reason: finish, total_tokens: total };
}

function errorSummary(err) {
  const out = { class: err?.constructor?.name ?? typeof err, message: String(err?.message ?? err) };
  if (err instanceof OpenAI.APIError) {
    out.status = err.status ?? null;
    out.code = err.code ?? null;
  }
  return out;
}

const CASES = {
  completion_blocking: () => blocking('writer', 'write a greeting'),
  completion_stream: () => streaming('writer', 'write a greeting'),
  workflow_blocking: () => blocking('flow', 'summarise the article'),
  workflow_stream: () => streaming('flow', 'summarise the article'),
  outputs_blocking: () => blocking('quiet-flow', 'summarise the article'),
  outputs_stream: () => streaming('quiet-flow', 'summarise the article'),
  workflow_failed_blocking: () => blocking('broken-flow', 'summarise the article'),
  workflow_failed_stream: () => streaming('broken-flow', 'summarise the article'),
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
