// The official `openai` npm package against the running server (completions and chat,
// streaming and not, models, errors).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { serveTestModel, type RunningApp } from "./helpers/server-fixture.ts";

let running: RunningApp;
let client: OpenAI;
serveTestModel(13, { apiKey: "sk-test" }, (s) => {
  running = s.running;
  client = new OpenAI({ baseURL: `${running.url}/v1`, apiKey: "sk-test", maxRetries: 0, timeout: 20_000 });
});

describe("openai SDK", () => {
  test("models.list and models.retrieve", async () => {
    const ids: string[] = [];
    for await (const m of client.models.list()) ids.push(m.id);
    assert.deepEqual(ids, ["tiny", "tiny:c1", "tiny:c2", "tiny:c3", "tiny:c4"]);
    const m = await client.models.retrieve("tiny:c2");
    assert.equal(m.id, "tiny:c2");
    assert.equal((m as unknown as { chains: number }).chains, 2);
  });

  test("completions.create, non-streaming", async () => {
    const r = await client.completions.create({ model: "tiny:c2", prompt: "In the beginning", max_tokens: 6, temperature: 0, logprobs: 2 });
    assert.equal(r.object, "text_completion");
    assert.equal(r.model, "tiny:c2");
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0].finish_reason, "length");
    assert.equal(r.choices[0].logprobs?.tokens?.length, 6);
    // The 16-token prompt is one whole block; if an earlier request cached it, all but its last token are reused.
    assert.deepEqual({ ...r.usage, prompt_tokens_details: undefined }, { prompt_tokens: 16, completion_tokens: 6, total_tokens: 22, prompt_tokens_details: undefined });
    assert.ok([0, 15].includes(r.usage!.prompt_tokens_details!.cached_tokens!), JSON.stringify(r.usage));
  });

  test("completions.create, streaming, equals the non-streamed text", async () => {
    const plain = await client.completions.create({ model: "tiny", prompt: "Let there be", max_tokens: 10, temperature: 0 });
    const stream = await client.completions.create({
      model: "tiny",
      prompt: "Let there be",
      max_tokens: 10,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage: OpenAI.CompletionUsage | null | undefined;
    let finish: string | null = null;
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        text += c.text;
        if (c.finish_reason) finish = c.finish_reason;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(text, plain.choices[0].text);
    assert.equal(finish, "length");
    assert.deepEqual(usage, plain.usage);
  });

  test("extension fields pass through the SDK (chains, latency_budget)", async () => {
    const r = await client.completions.create({
      model: "tiny",
      prompt: "ext",
      max_tokens: 2,
      // @ts-expect-error colm-serve extensions
      chains: 1,
      latency_budget: { ttft_ms: 5000 },
    });
    assert.equal(r.model, "tiny:c1");
    assert.equal((r.choices[0] as unknown as { chains: number }).chains, 1);
  });

  test("chat.completions.create, non-streaming and streaming", async () => {
    const messages: OpenAI.ChatCompletionMessageParam[] = [
      { role: "system", content: "Answer in the style of the King James Bible." },
      { role: "user", content: "What was in the beginning?" },
    ];
    const r = await client.chat.completions.create({ model: "tiny:c3", messages, max_tokens: 8, temperature: 0, seed: 1 });
    assert.equal(r.object, "chat.completion");
    assert.equal(r.model, "tiny:c3");
    assert.equal(r.choices[0].message.role, "assistant");
    assert.equal(typeof r.choices[0].message.content, "string");
    assert.ok(r.usage && r.usage.completion_tokens <= 8);
    const stream = await client.chat.completions.create({ model: "tiny:c3", messages, max_tokens: 8, temperature: 0, seed: 1, stream: true });
    let content = "";
    let role: string | undefined;
    for await (const chunk of stream) {
      const d = chunk.choices[0]?.delta;
      if (d?.role) role = d.role;
      content += d?.content ?? "";
    }
    assert.equal(role, "assistant");
    assert.equal(content, r.choices[0].message.content);
  });

  test("errors map to the SDK's error classes with param and code", async () => {
    await assert.rejects(client.completions.create({ model: "nope", prompt: "x" }), (e: unknown) => {
      assert.ok(e instanceof OpenAI.NotFoundError);
      assert.equal(e.code, "model_not_found");
      assert.equal(e.param, "model");
      return true;
    });
    await assert.rejects(client.completions.create({ model: "tiny", prompt: "x", temperature: 7 }), (e: unknown) => {
      assert.ok(e instanceof OpenAI.BadRequestError);
      assert.equal(e.param, "temperature");
      assert.equal(e.type, "invalid_request_error");
      return true;
    });
    await assert.rejects(client.completions.create({ model: "tiny", prompt: "x".repeat(250), max_tokens: 50 }), (e: unknown) => {
      assert.ok(e instanceof OpenAI.BadRequestError);
      assert.equal(e.code, "context_length_exceeded");
      return true;
    });
    const wrongKey = new OpenAI({ baseURL: `${running.url}/v1`, apiKey: "sk-wrong", maxRetries: 0 });
    await assert.rejects(wrongKey.models.list(), (e: unknown) => e instanceof OpenAI.AuthenticationError);
  });
});
