// The official `openai` npm package against a running opendify.
//
// Run by tests/sdk_clients.rs, which starts a fake Dify and the real binary, then checks
// this script's output and what the fake Dify saw. By hand (after `npm ci --prefix tests/clients`):
//
//   OPENDIFY_BASE_URL=http://127.0.0.1:5000/v1 OPENDIFY_API_KEY=local-dev-key \
//   OPENDIFY_MODEL=my-app node tests/clients/node_sdk.mjs [CASE ...]
//
// No CASE (or `all`) runs every case. Prints one JSON object on stdout:
// `{"sdk": "node", "sdk_version": ..., "cases": {CASE: result, ...}}`. A case that throws
// reports the error (`{"raised": {...}}`) instead of failing the script.
//
// Models other than OPENDIFY_MODEL are fixed names the Rust test configures (see MODELS).
// Exit status 3: the `openai` package is not installed.

let OpenAI;
let sdkVersion;
try {
  ({ default: OpenAI } = await import('openai'));
  ({ VERSION: sdkVersion } = await import('openai/version'));
} catch (e) {
  console.error(
    `node_sdk.mjs: the openai package is missing (${e.message}); install it with:\n` +
      '  npm ci --prefix tests/clients',
  );
  process.exit(3);
}

const BASE_URL = process.env.OPENDIFY_BASE_URL;
const API_KEY = process.env.OPENDIFY_API_KEY;
const MODEL = process.env.OPENDIFY_MODEL || 'my-app';
if (!BASE_URL || !API_KEY) {
  console.error('node_sdk.mjs: set OPENDIFY_BASE_URL and OPENDIFY_API_KEY');
  process.exit(2);
}

// The fixed model names tests/sdk_clients.rs configures besides MODEL.
const MODELS = {
  memory: 'memory-app', // generated answers, conversation ids checked like Dify
  busy: 'busy-app', // first a Dify 429 too_many_requests, then "ok"
  broken: 'broken-app', // an app key Dify rejects (401)
  flaky: 'flaky-app', // a stream with a Dify error event in the middle
  endless: 'endless-app', // a stream that runs until /stop
  quota: 'quota-app', // a Dify 429 rate_limit_error (quota exhausted)
  thinking: 'thinking-app', // answers opening with <think>…</think>, tags cut across frames
  nofiles: 'nofiles-app', // file upload off in the app
  files: 'files-app', // generated answers, files checked like Dify (1.12.x chunks)
};

// A 1x1 PNG and a tiny PDF, as base64.
const PNG_B64 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==';
const PDF_B64 = 'JVBERi0xLjQKJeLjz9MKMSAwIG9iago8PD4+CmVuZG9iagp0cmFpbGVyCjw8Pj4KJSVFT0YK';
const imagePart = (url) => ({ type: 'image_url', image_url: { url } });

const TIMEOUT_MS = 10_000;
const LINGER_MS = 1000;

function client(apiKey = API_KEY) {
  return new OpenAI({ baseURL: BASE_URL, apiKey, maxRetries: 2, timeout: TIMEOUT_MS });
}

const user = (content) => ({ role: 'user', content });

function chunkSummary(chunk) {
  const out = {
    id: chunk.id,
    object: chunk.object,
    created: chunk.created,
    model: chunk.model,
    n_choices: chunk.choices.length,
    usage: chunk.usage ?? null,
    // Whether the wire JSON had a `usage` key at all (null counts).
    has_usage_key: Object.hasOwn(chunk, 'usage'),
  };
  if (chunk.choices.length > 0) {
    const c = chunk.choices[0];
    out.role = c.delta.role ?? null;
    out.content = c.delta.content ?? null;
    out.finish_reason = c.finish_reason ?? null;
  }
  return out;
}

function completionSummary(completion, requestId = null) {
  const choice = completion.choices[0];
  return {
    id: completion.id,
    object: completion.object,
    model: completion.model,
    n_choices: completion.choices.length,
    role: choice.message.role,
    content: choice.message.content,
    finish_reason: choice.finish_reason,
    usage: completion.usage ?? null,
    request_id: requestId,
  };
}

function errorSummary(err) {
  const out = {
    class: err?.constructor?.name ?? typeof err,
    is_api_error: err instanceof OpenAI.APIError,
    message: String(err?.message ?? err),
  };
  if (err instanceof OpenAI.APIError) {
    out.status = err.status ?? null;
    out.code = err.code ?? null;
    out.type = err.type ?? null;
    out.param = err.param ?? null;
    out.body = err.error ?? null;
    out.request_id = err.requestID ?? null;
    out.x_should_retry = err.headers?.get('x-should-retry') ?? null;
  }
  return out;
}

// --- cases -----------------------------------------------------------------------------

const CASES = {
  async list_models() {
    const c = client();
    const ids = [];
    const objects = new Set();
    for await (const m of c.models.list()) {
      ids.push(m.id);
      objects.add(m.object);
    }
    const one = await c.models.retrieve(MODEL);
    return {
      ids,
      objects: [...objects].sort(),
      retrieved: { id: one.id, object: one.object, owned_by: one.owned_by },
    };
  },

  async blocking() {
    const { data, request_id } = await client()
      .chat.completions.create({
        model: MODEL,
        messages: [user('node blocking: what is the capital of France?')],
      })
      .withResponse();
    return completionSummary(data, request_id);
  },

  async streaming() {
    const { data: stream, response } = await client()
      .chat.completions.create({
        model: MODEL,
        stream: true,
        messages: [user('node streaming: what is the capital of France?')],
      })
      .withResponse();
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunkSummary(chunk));
    return {
      content_type: response.headers.get('content-type'),
      request_id: response.headers.get('x-request-id'),
      chunks,
    };
  },

  async stream_usage() {
    const stream = await client().chat.completions.create({
      model: MODEL,
      stream: true,
      stream_options: { include_usage: true },
      messages: [user('node usage: what is the capital of France?')],
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunkSummary(chunk));
    return { chunks };
  },

  // The SDK's strict accumulating helper (`chat.completions.stream`).
  async stream_helper() {
    const runner = client().chat.completions.stream({
      model: MODEL,
      stream_options: { include_usage: true },
      messages: [user('node helper: what is the capital of France?')],
    });
    const events = new Set();
    for (const name of ['content', 'chunk', 'finalContent', 'totalUsage']) {
      runner.on(name, () => events.add(name));
    }
    const final = await runner.finalChatCompletion();
    const out = completionSummary(final);
    out.events = [...events].sort();
    return out;
  },

  async text_parts() {
    const completion = await client().chat.completions.create({
      model: MODEL,
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'node parts: first part.' },
            { type: 'text', text: 'Second part.' },
          ],
        },
      ],
    });
    return completionSummary(completion);
  },

  async multi_turn() {
    const c = client();
    const headers = { 'X-OpenWebUI-Chat-Id': 'chat-1' };
    const first = user('node turn 1: my name is Ada.');
    const turn1 = await c.chat.completions.create(
      { model: MODELS.memory, messages: [first] },
      { headers },
    );
    const answer1 = turn1.choices[0].message.content;
    const stream = await c.chat.completions.create(
      {
        model: MODELS.memory,
        stream: true,
        messages: [first, { role: 'assistant', content: answer1 }, user('node turn 2: what is my name?')],
      },
      { headers },
    );
    let answer2 = '';
    for await (const chunk of stream) answer2 += chunk.choices[0]?.delta?.content ?? '';
    return { turn1: answer1, turn2: answer2 };
  },

  // No chat id (what SDK users send): turn 2 repeats the streamed answer as history.
  async history_matching() {
    const c = client();
    const first = user('node history 1: my name is Grace.');
    const stream = await c.chat.completions.create({
      model: MODELS.memory,
      stream: true,
      user: 'node-history-user',
      messages: [first],
    });
    let answer1 = '';
    for await (const chunk of stream) answer1 += chunk.choices[0]?.delta?.content ?? '';
    const turn2 = await c.chat.completions.create({
      model: MODELS.memory,
      user: 'node-history-user',
      messages: [first, { role: 'assistant', content: answer1 }, user('node history 2: what is my name?')],
    });
    return { turn1: answer1, turn2: turn2.choices[0].message.content };
  },

  // Thinking arrives as `delta.reasoning_content`, a field the SDK passes through.
  async reasoning_stream() {
    const stream = await client().chat.completions.create({
      model: MODELS.thinking,
      stream: true,
      messages: [user('node reasoning stream: tell me about Paris')],
    });
    let reasoning = '';
    let content = '';
    for await (const chunk of stream) {
      reasoning += chunk.choices[0]?.delta?.reasoning_content ?? '';
      content += chunk.choices[0]?.delta?.content ?? '';
    }
    return { reasoning, content };
  },

  async reasoning_blocking() {
    const completion = await client().chat.completions.create({
      model: MODELS.thinking,
      messages: [user('node reasoning blocking: tell me about Paris')],
    });
    const message = completion.choices[0].message;
    return {
      reasoning: message.reasoning_content ?? null,
      content: message.content,
      total_tokens: completion.usage.total_tokens,
    };
  },

  // No chat id: turn 2 sends back the answer's content (without the thinking).
  async reasoning_multi_turn() {
    const c = client();
    const first = user('node reasoning turn 1: tell me about Paris');
    const turn1 = await c.chat.completions.create({ model: MODELS.thinking, messages: [first] });
    const answer1 = turn1.choices[0].message.content;
    const turn2 = await c.chat.completions.create({
      model: MODELS.thinking,
      messages: [first, { role: 'assistant', content: answer1 }, user('node reasoning turn 2: and its population?')],
    });
    return { turn1: answer1, turn2: turn2.choices[0].message.content };
  },

  async unknown_model() {
    await client().chat.completions.create({ model: 'no-such-model', messages: [user('node unknown model')] });
    return { unexpected: 'no exception' };
  },

  async bad_key() {
    await client('sk-wrong-proxy-key').chat.completions.create({ model: MODEL, messages: [user('node bad key')] });
    return { unexpected: 'no exception' };
  },

  async empty_messages() {
    await client().chat.completions.create({ model: MODEL, messages: [] });
    return { unexpected: 'no exception' };
  },

  async midstream_error() {
    const stream = await client().chat.completions.create({
      model: MODELS.flaky,
      stream: true,
      messages: [user('node midstream error')],
    });
    let received = '';
    try {
      for await (const chunk of stream) received += chunk.choices[0]?.delta?.content ?? '';
    } catch (e) {
      return { content_before_error: received, raised: errorSummary(e) };
    }
    return { content_before_error: received, unexpected: 'stream ended without error' };
  },

  // A blocking client whose Dify run fails mid-answer: an HTTP error, never retried.
  async aggregate_error() {
    const started = performance.now();
    try {
      await client().chat.completions.create({ model: MODELS.flaky, messages: [user('node aggregate error')] });
    } catch (e) {
      return { raised: errorSummary(e), seconds: (performance.now() - started) / 1000 };
    }
    return { unexpected: 'no exception' };
  },

  async cancel_stream() {
    const stream = await client().chat.completions.create({
      model: MODELS.endless,
      stream: true,
      user: 'node-cancel-user',
      messages: [user('node cancel: talk forever')],
    });
    let first = null;
    for await (const chunk of stream) {
      const content = chunk.choices[0]?.delta?.content;
      if (content) {
        first = content;
        stream.controller.abort();
        break;
      }
    }
    const closedAt = Date.now() / 1000;
    // Stay alive a moment: the Rust test checks that the proxy's /stop arrived before
    // `linger_until`, i.e. because of the abort and not because this process exited.
    await new Promise((resolve) => setTimeout(resolve, LINGER_MS));
    return { first_content: first, closed_at: closedAt, linger_until: Date.now() / 1000 };
  },

  async retry_429() {
    const started = performance.now();
    const completion = await client().chat.completions.create({
      model: MODELS.busy,
      messages: [user('node retry 429')],
    });
    return { content: completion.choices[0].message.content, seconds: (performance.now() - started) / 1000 };
  },

  async no_retry_dify_401() {
    const started = performance.now();
    try {
      await client().chat.completions.create({ model: MODELS.broken, messages: [user('node broken app key')] });
    } catch (e) {
      return { raised: errorSummary(e), seconds: (performance.now() - started) / 1000 };
    }
    return { unexpected: 'no exception' };
  },

  async image_url() {
    const completion = await client().chat.completions.create({
      model: MODELS.files,
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'node image url: what is this?' },
            { type: 'image_url', image_url: { url: 'https://images.example/node-cat.png', detail: 'low' } },
          ],
        },
      ],
    });
    return completionSummary(completion);
  },

  async image_base64() {
    const stream = await client().chat.completions.create({
      model: MODELS.files,
      stream: true,
      user: 'node-alice',
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'node image base64: describe it.' },
            imagePart(`data:image/png;base64,${PNG_B64}`),
          ],
        },
      ],
    });
    let content = '';
    for await (const chunk of stream) {
      content += chunk.choices[0]?.delta?.content ?? '';
    }
    return { content };
  },

  async pdf_file() {
    const completion = await client().chat.completions.create({
      model: MODELS.files,
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'node pdf: summarise it.' },
            { type: 'file', file: { filename: 'node-report.pdf', file_data: `data:application/pdf;base64,${PDF_B64}` } },
          ],
        },
      ],
    });
    return completionSummary(completion);
  },

  async image_uploads_off() {
    try {
      await client().chat.completions.create({
        model: MODELS.nofiles,
        messages: [
          {
            role: 'user',
            content: [{ type: 'text', text: 'node uploads off' }, imagePart(`data:image/png;base64,${PNG_B64}`)],
          },
        ],
      });
    } catch (e) {
      return { raised: errorSummary(e) };
    }
    return { unexpected: 'no exception' };
  },

  async image_too_large() {
    const big = 'data:image/png;base64,' + 'A'.repeat(Math.floor((10 * 1024 * 1024 + 3) / 3) * 4);
    try {
      await client().chat.completions.create({
        model: MODELS.files,
        messages: [{ role: 'user', content: [{ type: 'text', text: 'node too large' }, imagePart(big)] }],
      });
    } catch (e) {
      return { raised: errorSummary(e) };
    }
    return { unexpected: 'no exception' };
  },

  async image_multi_turn() {
    const first = {
      role: 'user',
      content: [{ type: 'text', text: 'node image turn one.' }, imagePart(`data:image/png;base64,${PNG_B64}`)],
    };
    const c = client();
    const one = await c.chat.completions.create({ model: MODELS.files, messages: [first] });
    const answer = one.choices[0].message.content;
    const two = await c.chat.completions.create({
      model: MODELS.files,
      messages: [first, { role: 'assistant', content: answer }, user('node image turn two.')],
    });
    return { first: answer, second: two.choices[0].message.content };
  },

  async no_retry_quota() {
    const started = performance.now();
    try {
      await client().chat.completions.create({ model: MODELS.quota, messages: [user('node quota exhausted')] });
    } catch (e) {
      return { raised: errorSummary(e), seconds: (performance.now() - started) / 1000 };
    }
    return { unexpected: 'no exception' };
  },
};

const args = process.argv.slice(2).filter((a) => a !== 'all');
const names = args.length > 0 ? args : Object.keys(CASES);
const unknown = names.filter((n) => !(n in CASES));
if (unknown.length > 0) {
  console.error(`node_sdk.mjs: unknown case(s) ${unknown}; known: ${Object.keys(CASES)}`);
  process.exit(2);
}
const results = {};
for (const name of names) {
  try {
    results[name] = await CASES[name]();
  } catch (e) {
    results[name] = { raised: errorSummary(e) };
  }
}
process.stdout.write(JSON.stringify({ sdk: 'node', sdk_version: sdkVersion, cases: results }) + '\n');
