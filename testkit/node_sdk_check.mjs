// The official OpenAI Node SDK (npm `openai`, major 6: the last to run on Node 20) against
// a running bridge. testkit/test_node_sdk.py runs it and checks what it prints.
//
//   BASE_URL      the SDK's baseURL, e.g. http://127.0.0.1:8080/v1 (required)
//   API_KEY       the SDK's apiKey (default "unused"; the bridge's CLAUDE_AUTH_KEY if set)
//   OPENAI_SDK_DIR  the installed package directory (.../node_modules/openai); else the
//                 first NODE_PATH entry holding openai/, else
//                 ~/.cache/claude-bridge/node/node_modules/openai
//
// Install: npm install --no-save --no-audit --no-fund --prefix ~/.cache/claude-bridge/node openai@6
//
// Prints one JSON object on stdout: for each call the reply text, finish_reason, usage and
// chunk counts, and for the calls that must fail the error the SDK raised. Any other error
// exits non-zero with the error on stderr.

import { loadSdk } from "./node_sdk_loader.mjs";

function usageOf(u) {
  if (!u) return null;
  return {
    prompt_tokens: u.prompt_tokens,
    completion_tokens: u.completion_tokens,
    total_tokens: u.total_tokens,
    cached_tokens: u.prompt_tokens_details?.cached_tokens ?? null,
  };
}

function errorOf(err) {
  return {
    raised: true,
    class: err?.constructor?.name ?? typeof err,
    is_api_error: err instanceof SDK.APIError,
    status: err?.status ?? null,
    type: err?.type ?? null,
    code: err?.code ?? null,
    param: err?.param ?? null,
    message: String(err?.message ?? err),
  };
}

function user(text) {
  return [{ role: "user", content: text }];
}

async function complete(client, body, options) {
  const r = await client.chat.completions.create(body, options);
  return {
    object: r.object,
    model: r.model,
    content: r.choices[0].message.content,
    role: r.choices[0].message.role,
    finish_reason: r.choices[0].finish_reason,
    usage: usageOf(r.usage),
  };
}

async function stream(client, body, options) {
  const s = await client.chat.completions.create(
    { ...body, stream: true, stream_options: { include_usage: true } }, options);
  const out = { content: "", finish_reason: null, usage: null, chunks: 0, content_chunks: 0,
                role: null, objects: [] };
  for await (const chunk of s) {
    out.chunks += 1;
    if (!out.objects.includes(chunk.object)) out.objects.push(chunk.object);
    const choice = chunk.choices[0];
    if (choice?.delta?.role) out.role = choice.delta.role;
    if (choice?.delta?.content) {
      out.content += choice.delta.content;
      out.content_chunks += 1;
    }
    if (choice?.finish_reason) out.finish_reason = choice.finish_reason;
    if (chunk.usage) out.usage = usageOf(chunk.usage);
  }
  return out;
}

// Runs FN, which must throw: returns what it threw, or {raised: false}.
async function mustFail(fn) {
  try {
    await fn();
  } catch (err) {
    return errorOf(err);
  }
  return { raised: false };
}

const { mod: SDK, version } = await loadSdk();
const OpenAI = SDK.OpenAI ?? SDK.default;

async function main() {
  const baseURL = process.env.BASE_URL;
  if (!baseURL) throw new Error("BASE_URL is not set");
  const apiKey = process.env.API_KEY || "unused";
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });

  const out = { sdk_version: version, node_version: process.version };
  for (const [name, model] of [["claude", "claude-code"], ["ollama", "ollama/llama3.2"]]) {
    out[`${name}_json`] = await complete(client, { model, messages: user("hello") });
    out[`${name}_stream`] = await stream(client, { model, messages: user("hello") });
    // A session: two turns with the same X-Session-ID, the second one streamed.
    const headers = { "X-Session-ID": `node-sdk-${name}` };
    out[`${name}_session`] = [
      await complete(client, { model, messages: user("first") }, { headers }),
      await stream(client, { model, messages: user("second") }, { headers }),
    ];
  }

  // Errors the SDK must raise as its own classes.
  out.bad_request = await mustFail(() =>
    client.chat.completions.create({ model: "claude-code", messages: [] }));
  out.midstream_error = await mustFail(() =>
    stream(client, { model: "claude-code", messages: user("[fake:midstream-error]") }));
  const wrongKey = new OpenAI({ baseURL, apiKey: "wrong-key", maxRetries: 0, timeout: 60_000 });
  out.wrong_key = await mustFail(() =>
    wrongKey.chat.completions.create({ model: "claude-code", messages: user("hello") }));
  return out;
}

try {
  process.stdout.write(JSON.stringify(await main(), null, 2) + "\n");
} catch (err) {
  process.stderr.write(`node_sdk_check: ${err?.stack ?? err}\n`);
  process.exit(1);
}
