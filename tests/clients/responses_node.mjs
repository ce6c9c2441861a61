// The official `openai` npm package's Responses API against a running opendify.
//
// Run by tests/sdk_responses.rs, which starts a fake Dify and the real binary, then checks
// this script's output and what the fake Dify saw. By hand (after `npm ci --prefix tests/clients`):
//
//   OPENDIFY_BASE_URL=http://127.0.0.1:5000/v1 OPENDIFY_API_KEY=local-dev-key \
//   OPENDIFY_MODEL=my-app node tests/clients/responses_node.mjs [CASE ...]
//
// No CASE (or `all`) runs every case. Prints one JSON object on stdout:
// `{"sdk": "node", "versions": {...}, "cases": {CASE: result, ...}}`. A case that throws
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
    `responses_node.mjs: the openai package is missing (${e.message}); install it with:\n` +
      '  npm ci --prefix tests/clients',
  );
  process.exit(3);
}

const BASE_URL = process.env.OPENDIFY_BASE_URL;
const API_KEY = process.env.OPENDIFY_API_KEY;
const MODEL = process.env.OPENDIFY_MODEL || 'my-app';
if (!BASE_URL || !API_KEY) {
  console.error('responses_node.mjs: set OPENDIFY_BASE_URL and OPENDIFY_API_KEY');
  process.exit(2);
}

// The fixed model names tests/sdk_responses.rs configures besides MODEL.
const MODELS = {
  memory: 'memory-app', // generated answers, conversation ids checked like Dify
  flaky: 'flaky-app', // a stream with a Dify error event in the middle
  endless: 'endless-app', // a stream that runs until /stop
};

const INSTRUCTIONS = 'node: answer in one sentence.';
const TIMEOUT_MS = 10_000;
const LINGER_MS = 1000;

function client() {
  return new OpenAI({ baseURL: BASE_URL, apiKey: API_KEY, maxRetries: 2, timeout: TIMEOUT_MS });
}

// The text of a response's output_text parts, as the SDK's `output_text` joins them (the
// SDK adds that field to whole responses, not to those inside raw stream events).
function textOf(r) {
  const parts = (r.output ?? []).flatMap((o) => (o.type === 'message' ? o.content ?? [] : []));
  return parts
    .filter((c) => c.type === 'output_text')
    .map((c) => c.text)
    .join('');
}

// What a user reads of a Response object.
function responseSummary(r, requestId = null) {
  return {
    id: r.id,
    object: r.object,
    status: r.status,
    model: r.model,
    output_text: r.output_text ?? textOf(r),
    output: (r.output ?? []).map((o) => ({
      type: o.type,
      id: o.id ?? null,
      status: o.status ?? null,
      role: o.role ?? null,
      content: (o.content ?? []).map((c) => c.type),
    })),
    usage: r.usage ?? null,
    error: r.error ?? null,
    previous_response_id: r.previous_response_id ?? null,
    instructions: r.instructions ?? null,
    store: r.store ?? null,
    request_id: requestId ?? r._request_id ?? null,
  };
}

const LIFECYCLE = new Set([
  'response.created',
  'response.in_progress',
  'response.completed',
  'response.failed',
  'response.incomplete',
]);

function eventSummary(ev) {
  const out = { type: ev.type, seq: ev.sequence_number ?? null };
  for (const name of ['output_index', 'content_index', 'item_id', 'delta', 'text', 'code', 'message', 'param']) {
    if (ev[name] !== undefined && ev[name] !== null) out[name] = ev[name];
  }
  if (LIFECYCLE.has(ev.type)) out.response = responseSummary(ev.response);
  if (ev.item) out.item = { type: ev.item.type, id: ev.item.id ?? null, status: ev.item.status ?? null };
  if (ev.part) out.part = { type: ev.part.type, text: ev.part.text ?? null };
  return out;
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

// Every event of a stream; an error in the middle is reported with what came before.
async function readEvents(stream) {
  const events = [];
  try {
    for await (const ev of stream) events.push(eventSummary(ev));
  } catch (e) {
    return { events, raised: errorSummary(e) };
  }
  return { events };
}

// --- cases -----------------------------------------------------------------------------

const CASES = {
  async blocking() {
    const { data, request_id } = await client()
      .responses.create({ model: MODEL, input: 'node blocking: what is the capital of France?' })
      .withResponse();
    return responseSummary(data, request_id);
  },

  async streaming() {
    const { data: stream, response } = await client()
      .responses.create({ model: MODEL, stream: true, input: 'node streaming: what is the capital of France?' })
      .withResponse();
    const out = await readEvents(stream);
    out.content_type = response.headers.get('content-type');
    out.request_id = response.headers.get('x-request-id');
    return out;
  },

  // The SDK's accumulating helper (`responses.stream`).
  async stream_helper() {
    const stream = client().responses.stream({ model: MODEL, input: 'node helper: what is the capital of France?' });
    const types = [];
    const deltas = [];
    stream.on('event', (ev) => types.push(ev.type));
    stream.on('response.output_text.delta', (ev) => deltas.push(ev.delta));
    const final = await stream.finalResponse();
    return { ...responseSummary(final), types, deltas };
  },

  // Turn 1 (blocking, with instructions) starts a conversation; turn 2 (streamed) and
  // turn 3 (the helper, message items, instructions again) continue it by id.
  async three_turns() {
    const c = client();
    const user = 'node-turns-user';
    const r1 = await c.responses.create({
      model: MODELS.memory,
      input: 'node turn 1: my name is Ada.',
      instructions: INSTRUCTIONS,
      user,
    });
    const stream = await c.responses.create({
      model: MODELS.memory,
      stream: true,
      input: 'node turn 2: what is my name?',
      previous_response_id: r1.id,
      user,
    });
    const events = await readEvents(stream);
    const completed = events.events.filter((e) => e.type === 'response.completed');
    const r2 = completed.length > 0 ? completed[0].response : null;
    const turn2 = { events: events.events.map((e) => e.type), raised: events.raised ?? null, response: r2 };
    if (!r2) return { turn1: responseSummary(r1), turn2, unexpected: 'turn 2 did not complete' };
    const s3 = c.responses.stream({
      model: MODELS.memory,
      input: [{ role: 'user', content: [{ type: 'input_text', text: 'node turn 3: and my name again?' }] }],
      instructions: INSTRUCTIONS,
      previous_response_id: r2.id,
      user,
    });
    const r3 = await s3.finalResponse();
    return { turn1: responseSummary(r1), turn2, turn3: responseSummary(r3) };
  },

  async unknown_previous() {
    await client().responses.create({
      model: MODEL,
      input: 'node unknown previous: hello?',
      previous_response_id: 'resp_00000000000000000000000000000000',
    });
    return { unexpected: 'no exception' };
  },

  async store_false() {
    const c = client();
    const r1 = await c.responses.create({
      model: MODELS.memory,
      input: 'node unstored 1: my name is Grace.',
      store: false,
      user: 'node-unstored-user',
    });
    const out = { first: responseSummary(r1) };
    try {
      const r2 = await c.responses.create({
        model: MODELS.memory,
        input: 'node unstored 2: what is my name?',
        previous_response_id: r1.id,
        user: 'node-unstored-user',
      });
      return { ...out, second: responseSummary(r2), unexpected: 'the unstored id was continued' };
    } catch (e) {
      return { ...out, raised: errorSummary(e) };
    }
  },

  // What a plain streaming user gets when Dify fails mid-answer.
  async midstream_error() {
    const stream = await client().responses.create({ model: MODELS.flaky, stream: true, input: 'node midstream error' });
    return readEvents(stream);
  },

  // The same through the helper: what `finalResponse()` gives.
  async midstream_helper() {
    const stream = client().responses.stream({ model: MODELS.flaky, input: 'node midstream helper' });
    const types = [];
    const deltas = [];
    stream.on('event', (ev) => types.push(ev.type));
    stream.on('response.output_text.delta', (ev) => deltas.push(ev.delta));
    try {
      const final = await stream.finalResponse();
      return { types, deltas, final: responseSummary(final) };
    } catch (e) {
      return { types, deltas, raised: errorSummary(e) };
    }
  },

  // The same Dify failure for a blocking request.
  async midstream_blocking() {
    try {
      const r = await client().responses.create({ model: MODELS.flaky, input: 'node midstream blocking' });
      return { response: responseSummary(r) };
    } catch (e) {
      return { raised: errorSummary(e) };
    }
  },

  async cancel_stream() {
    const stream = await client().responses.create({
      model: MODELS.endless,
      stream: true,
      input: 'node cancel: talk forever',
      safety_identifier: 'node-cancel-user',
    });
    let first = null;
    for await (const ev of stream) {
      if (ev.type === 'response.output_text.delta') {
        first = ev.delta;
        stream.controller.abort();
        break;
      }
    }
    const closedAt = Date.now() / 1000;
    // Stay alive a moment: the Rust test checks that the proxy's /stop arrived before
    // `linger_until`, i.e. because of the abort and not because this process exited.
    await new Promise((resolve) => setTimeout(resolve, LINGER_MS));
    return { first_delta: first, closed_at: closedAt, linger_until: Date.now() / 1000 };
  },

  async tools_refused() {
    await client().responses.create({
      model: MODEL,
      input: 'node tools: what is the weather?',
      tools: [{ type: 'function', name: 'get_weather', parameters: { type: 'object', properties: {} }, strict: false }],
      // Forcing a call of the client's tool is what a Dify app cannot do.
      tool_choice: 'required',
    });
    return { unexpected: 'no exception' };
  },
};

const args = process.argv.slice(2).filter((a) => a !== 'all');
const names = args.length > 0 ? args : Object.keys(CASES);
const unknown = names.filter((n) => !(n in CASES));
if (unknown.length > 0) {
  console.error(`responses_node.mjs: unknown case(s) ${unknown}; known: ${Object.keys(CASES)}`);
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
process.stdout.write(JSON.stringify({ sdk: 'node', versions: { openai: sdkVersion }, cases: results }) + '\n');
