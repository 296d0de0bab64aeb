// Client tools through the official OpenAI Node SDK (npm `openai`, major 6) against a running
// bridge whose Claude backend is testkit/fake_claude.py. testkit/test_node_sdk.py runs it and
// checks what it prints.
//
//   BASE_URL        the SDK's baseURL, e.g. http://127.0.0.1:8080/v1 (required)
//   API_KEY         the SDK's apiKey (default "unused")
//   OPENAI_SDK_DIR  the installed package directory (.../node_modules/openai); else the first
//                   NODE_PATH entry holding openai/, else ~/.cache/claude-bridge/node/node_modules/openai
//
// Two conversations: one tool round trip (JSON: the call, then the tool result and the
// answer), and one streamed (the call's chunks as they came, then the answer streamed).
// The fake CLI calls the client's function named by a `[fake:mcp-call:NAME:{json}]` marker
// and answers `FAKE-REPLY tool results: NAME=<result>` once it has the result.

import { loadSdk } from "./node_sdk_loader.mjs";

const TOOLS = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather for a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
}];

function ask(city) {
  return [{ role: "user", content: `[fake:mcp-call:get_weather:${JSON.stringify({ city })}]` }];
}

// The tool round trip, JSON both ways.
async function roundTrip(client) {
  const messages = ask("Paris");
  const first = await client.chat.completions.create({ model: "claude-code", messages, tools: TOOLS });
  const choice = first.choices[0];
  const calls = choice.message.tool_calls ?? [];
  messages.push(choice.message);
  for (const call of calls) {
    messages.push({ role: "tool", tool_call_id: call.id, content: "sunny, 21 C" });
  }
  const final = await client.chat.completions.create({ model: "claude-code", messages, tools: TOOLS });
  return {
    finish_reason: choice.finish_reason,
    content: choice.message.content,
    calls: calls.map((c) => ({ id: c.id, type: c.type, name: c.function.name,
                               arguments: c.function.arguments })),
    final_finish_reason: final.choices[0].finish_reason,
    final_content: final.choices[0].message.content,
    final_tool_calls: final.choices[0].message.tool_calls ?? null,
  };
}

// The same, streamed: every tool_calls delta as it came, and the answer's text chunks.
async function streamed(client) {
  const messages = ask("Oslo");
  const stream = await client.chat.completions.create(
    { model: "claude-code", messages, tools: TOOLS, stream: true,
      stream_options: { include_usage: true } });
  const out = { tool_deltas: [], finish_reason: null, usage: null, chunk_ids: [], text: "" };
  for await (const chunk of stream) {
    if (!out.chunk_ids.includes(chunk.id)) out.chunk_ids.push(chunk.id);
    const choice = chunk.choices[0];
    if (chunk.usage) out.usage = chunk.usage;
    if (!choice) continue;
    for (const delta of choice.delta?.tool_calls ?? []) out.tool_deltas.push(delta);
    if (choice.delta?.content) out.text += choice.delta.content;
    if (choice.finish_reason) out.finish_reason = choice.finish_reason;
  }
  // The SDK's own stream helper assembles the call from the same kind of chunks.
  const head = out.tool_deltas.find((d) => d.id);
  const args = out.tool_deltas.filter((d) => d.index === 0).map((d) => d.function?.arguments ?? "")
    .join("");
  messages.push({ role: "assistant", content: null, tool_calls: [
    { id: head?.id, type: "function", function: { name: head?.function?.name, arguments: args } }] });
  messages.push({ role: "tool", tool_call_id: head?.id, content: "rain" });
  const answer = client.chat.completions.stream({ model: "claude-code", messages, tools: TOOLS });
  let text = "";
  for await (const chunk of answer) text += chunk.choices[0]?.delta?.content ?? "";
  const final = await answer.finalChatCompletion();
  out.answer_text = text;
  out.answer_final_content = final.choices[0].message.content;
  out.answer_finish_reason = final.choices[0].finish_reason;
  return out;
}

const { mod: SDK, version } = await loadSdk();
const OpenAI = SDK.OpenAI ?? SDK.default;

async function main() {
  const baseURL = process.env.BASE_URL;
  if (!baseURL) throw new Error("BASE_URL is not set");
  const client = new OpenAI({ baseURL, apiKey: process.env.API_KEY || "unused", maxRetries: 0,
                              timeout: 30_000 });
  return { sdk_version: version, round_trip: await roundTrip(client),
           streamed: await streamed(client) };
}

try {
  process.stdout.write(JSON.stringify(await main(), null, 2) + "\n");
} catch (err) {
  process.stderr.write(`node_tools_check: ${err?.stack ?? err}\n`);
  process.exit(1);
}
