// HTTP API end to end: real engine on a small random checkpoint, real express app via supertest.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import request from "supertest";
import { createApp, type ColmApp } from "../server/api/app.ts";
import type { Engine } from "../server/engine/types.ts";
import { renderChat } from "../server/api/chat-template.ts";
import { loadTestEngine, parseSse, startApp, writeTestCheckpoint, type TestCheckpoint } from "./helpers/server-fixture.ts";

let ckpt: TestCheckpoint;
let engine: Engine;
let colm: ColmApp;

before(async () => {
  ckpt = await writeTestCheckpoint("tiny", 11);
  engine = await loadTestEngine(ckpt.dir);
  colm = createApp(engine, { log: () => undefined });
});
after(async () => {
  await colm.close();
  await engine.close();
  ckpt.cleanup();
});

const bytes = (s: string) => Buffer.byteLength(s, "utf8");

async function complete(body: Record<string, unknown>) {
  const res = await request(colm.app).post("/v1/completions").send({ model: "tiny", ...body });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body;
}

describe("health and models", () => {
  test("GET /health is 200 with the model", async () => {
    const res = await request(colm.app).get("/health");
    assert.equal(res.status, 200);
    assert.equal(res.body.status, "ok");
    assert.equal(res.body.model, "tiny");
    assert.equal(res.body.chains, 4);
  });

  test("GET /v1/models lists the elastic id and one id per size", async () => {
    const res = await request(colm.app).get("/v1/models");
    assert.equal(res.status, 200);
    assert.equal(res.body.object, "list");
    const ids = res.body.data.map((m: { id: string }) => m.id);
    assert.deepEqual(ids, ["tiny", "tiny:c1", "tiny:c2", "tiny:c3", "tiny:c4"]);
    for (const m of res.body.data) {
      assert.equal(m.object, "model");
      assert.equal(typeof m.created, "number");
      assert.equal(typeof m.owned_by, "string");
    }
    const [elastic, c1, c2, , c4] = res.body.data;
    assert.equal(elastic.elastic, true);
    assert.deepEqual(elastic.chain_options, [1, 2, 3, 4]);
    assert.equal(c1.chains, 1);
    assert.equal(c1.width, 32);
    assert.equal(c2.width, 64);
    assert.equal(c4.width, 128);
    assert.equal(c4.chains, 4);
    assert.deepEqual(res.body.data.slice(1).map((m: { params: number }) => m.params), engine.info.paramCounts);
    assert.ok(c1.params < c2.params && c2.params < c4.params);
  });

  test("GET /v1/models/:id returns one model, 404 for an unknown one", async () => {
    const ok = await request(colm.app).get("/v1/models/tiny:c3");
    assert.equal(ok.status, 200);
    assert.equal(ok.body.chains, 3);
    const missing = await request(colm.app).get("/v1/models/other");
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, "model_not_found");
  });

  test("while loading: /health and /v1/* answer 503, then 200 once the engine is set", async () => {
    const loading = createApp(null, { log: () => undefined });
    const h = await request(loading.app).get("/health");
    assert.equal(h.status, 503);
    assert.equal(h.body.status, "loading");
    const m = await request(loading.app).get("/v1/models");
    assert.equal(m.status, 503);
    assert.equal(m.body.error.code, "model_loading");
    assert.equal((await request(loading.app).get("/metrics")).status, 200);
    loading.setEngine(engine);
    assert.equal((await request(loading.app).get("/health")).status, 200);
    assert.equal((await request(loading.app).get("/v1/models")).status, 200);
    await loading.close();
  });
});

describe("POST /v1/completions", () => {
  test("basic: OpenAI shape, usage, elastic model resolves to the largest size", async () => {
    const body = await complete({ prompt: "In the beginning", max_tokens: 5, temperature: 0 });
    assert.match(body.id, /^cmpl-/);
    assert.equal(body.object, "text_completion");
    assert.equal(typeof body.created, "number");
    assert.equal(body.model, "tiny:c4");
    assert.equal(body.chains, 4);
    assert.equal(body.choices.length, 1);
    const c = body.choices[0];
    assert.equal(c.index, 0);
    assert.equal(typeof c.text, "string");
    assert.equal(c.finish_reason, "length");
    assert.equal(c.logprobs, null);
    assert.equal(c.chains, 4);
    assert.equal(c.chains_per_token, undefined);
    assert.deepEqual(body.usage, { prompt_tokens: bytes("In the beginning"), completion_tokens: 5, total_tokens: bytes("In the beginning") + 5, prompt_tokens_details: { cached_tokens: 0 } });
  });

  test("model ':c<k>' and the chains field fix the size", async () => {
    const a = await complete({ model: "tiny:c2", prompt: "abc", max_tokens: 3, temperature: 0 });
    assert.equal(a.model, "tiny:c2");
    assert.equal(a.chains, 2);
    assert.equal(a.choices[0].chains, 2);
    const b = await complete({ prompt: "abc", max_tokens: 3, temperature: 0, chains: 1 });
    assert.equal(b.model, "tiny:c1");
    assert.equal(b.choices[0].chains, 1);
    const c = await complete({ model: "tiny:c3", chains: 3, prompt: "abc", max_tokens: 3, temperature: 0 });
    assert.equal(c.model, "tiny:c3");
  });

  test("greedy is deterministic; top_k 1 equals greedy; same seed gives the same sample", async () => {
    const g1 = await complete({ prompt: "Let there be light", max_tokens: 12, temperature: 0 });
    const g2 = await complete({ prompt: "Let there be light", max_tokens: 12, temperature: 0 });
    assert.equal(g1.choices[0].text, g2.choices[0].text);
    const k1 = await complete({ prompt: "Let there be light", max_tokens: 12, top_k: 1, temperature: 1 });
    assert.equal(k1.choices[0].text, g1.choices[0].text);
    const s1 = await complete({ prompt: "Let there be light", max_tokens: 12, temperature: 1, seed: 42 });
    const s2 = await complete({ prompt: "Let there be light", max_tokens: 12, temperature: 1, seed: 42 });
    assert.equal(s1.choices[0].text, s2.choices[0].text);
  });

  test("all sampling fields are accepted", async () => {
    const body = await complete({
      prompt: "And God said",
      max_tokens: 4,
      temperature: 0.7,
      top_p: 0.9,
      top_k: 20,
      min_p: 0.05,
      seed: 3,
      presence_penalty: 0.5,
      frequency_penalty: 0.5,
      repetition_penalty: 1.2,
      logit_bias: { "32": -5 },
      user: "tester",
      stop: ["zzzz"],
      stream: false,
      latency_budget: { ttft_ms: 1000, tpot_ms: 500, total_ms: 10000 },
    });
    assert.equal(body.usage.completion_tokens, 4);
  });

  test("logit_bias +100 on one token makes greedy emit only it", async () => {
    const body = await complete({ prompt: "xyz", max_tokens: 6, temperature: 0, logit_bias: { "65": 100 } });
    assert.equal(body.choices[0].text, "AAAAAA");
  });

  test("n > 1 runs n generations; prompt arrays give one choice per prompt and sample", async () => {
    const a = await complete({ prompt: "seed", max_tokens: 3, n: 3, temperature: 1, seed: 1 });
    assert.deepEqual(a.choices.map((c: { index: number }) => c.index), [0, 1, 2]);
    assert.equal(a.usage.completion_tokens, 9);
    assert.equal(a.usage.prompt_tokens, 4);
    const b = await complete({ prompt: ["one", "three"], max_tokens: 2, n: 2, temperature: 0 });
    assert.equal(b.choices.length, 4);
    assert.deepEqual(b.choices.map((c: { index: number }) => c.index), [0, 1, 2, 3]);
    assert.equal(b.usage.prompt_tokens, 3 + 5);
    assert.equal(b.usage.completion_tokens, 8);
    // greedy: both samples of one prompt agree
    assert.equal(b.choices[0].text, b.choices[1].text);
  });

  test("token-id prompts: one array, or an array of arrays", async () => {
    const ids = [...Buffer.from("Hello")];
    const a = await complete({ prompt: ids, max_tokens: 4, temperature: 0 });
    const t = await complete({ prompt: "Hello", max_tokens: 4, temperature: 0 });
    assert.equal(a.choices[0].text, t.choices[0].text);
    assert.equal(a.usage.prompt_tokens, 5);
    const b = await complete({ prompt: [ids, [72, 105]], max_tokens: 2, temperature: 0 });
    assert.equal(b.choices.length, 2);
    assert.equal(b.usage.prompt_tokens, 7);
  });

  test("echo prepends the prompt text", async () => {
    const plain = await complete({ prompt: "Genesis", max_tokens: 4, temperature: 0 });
    const echoed = await complete({ prompt: "Genesis", max_tokens: 4, temperature: 0, echo: true });
    assert.equal(echoed.choices[0].text, "Genesis" + plain.choices[0].text);
    const ids = await complete({ prompt: [71, 101, 110], max_tokens: 2, temperature: 0, echo: true });
    assert.ok(ids.choices[0].text.startsWith("Gen"));
  });

  test("logprobs: legacy {tokens, token_logprobs, top_logprobs, text_offset}", async () => {
    const body = await complete({ prompt: "Exodus", max_tokens: 6, temperature: 0, logprobs: 3 });
    const lp = body.choices[0].logprobs;
    assert.equal(lp.tokens.length, 6);
    assert.equal(lp.token_logprobs.length, 6);
    assert.equal(lp.top_logprobs.length, 6);
    assert.equal(lp.text_offset.length, 6);
    for (let i = 0; i < 6; i++) {
      assert.equal(typeof lp.tokens[i], "string");
      assert.ok(lp.token_logprobs[i] <= 0);
      const alts = Object.values(lp.top_logprobs[i]) as number[];
      assert.ok(alts.length >= 1 && alts.length <= 3);
      // greedy: the chosen token is the most likely one
      assert.ok(Math.abs(Math.max(...alts) - lp.token_logprobs[i]) < 1e-4);
      if (i > 0) assert.ok(lp.text_offset[i] >= lp.text_offset[i - 1]);
    }
    assert.equal(lp.text_offset[0], 0);
    const echoed = await complete({ prompt: "Exodus", max_tokens: 2, temperature: 0, logprobs: 1, echo: true });
    const elp = echoed.choices[0].logprobs;
    assert.equal(elp.tokens.length, 6 + 2);
    assert.equal(elp.token_logprobs[0], null);
    assert.equal(elp.text_offset[6], 6);
  });

  test("echo with logprobs scores the prompt: each token's logprob and top-N given the tokens before it (max_tokens 0 scores only)", async () => {
    // What a greedy generation reported for its own tokens, the echo must report for the same
    // tokens given back as a prompt (lm-evaluation-harness's loglikelihood and is-greedy check).
    const gen = await complete({ prompt: [71, 101, 110], max_tokens: 5, temperature: 0, logprobs: 2, chains: 2 });
    const glp = gen.choices[0].logprobs;
    const ids = [71, 101, 110, ...glp.tokens.map((t: string) => Buffer.from(t, "latin1")[0])];
    const scored = await complete({ prompt: ids, max_tokens: 0, logprobs: 2, echo: true, chains: 2 });
    const slp = scored.choices[0].logprobs;
    assert.equal(scored.choices[0].finish_reason, "length");
    assert.equal(scored.usage.completion_tokens, 0);
    assert.equal(slp.tokens.length, 8);
    assert.equal(slp.token_logprobs[0], null);
    assert.equal(slp.top_logprobs[0], null);
    for (let t = 1; t < 8; t++) {
      assert.ok(slp.token_logprobs[t] <= 0, `prompt token ${t}`);
      assert.ok(Object.keys(slp.top_logprobs[t]).length <= 2);
    }
    for (let i = 0; i < 5; i++) {
      assert.ok(Math.abs(slp.token_logprobs[3 + i] - glp.token_logprobs[i]) < 1e-4, `token ${i}`);
      assert.deepEqual(Object.keys(slp.top_logprobs[3 + i]).sort(), Object.keys(glp.top_logprobs[i]).sort());
    }
    // Streamed, the echoed prompt (with its logprobs) comes first; without echo, 0 tokens is refused.
    const res = await request(colm.app).post("/v1/completions").send({ model: "tiny", prompt: ids, max_tokens: 0, logprobs: 2, echo: true, chains: 2, stream: true });
    const first = (parseSse(res.text)[0] as any).choices[0];
    assert.deepEqual(first.logprobs.token_logprobs, slp.token_logprobs);
    const refused = await request(colm.app).post("/v1/completions").send({ model: "tiny", prompt: "x", max_tokens: 0 });
    assert.equal(refused.status, 400);
    assert.equal(refused.body.error.param, "max_tokens");
  });

  test("stop: the text ends before the stop string, finish_reason stop", async () => {
    // Seeded sampling restricted (by logit_bias) to A, B, C: a reproducible text to cut.
    const base = { prompt: "stop test", max_tokens: 30, temperature: 1, seed: 5, logit_bias: { "65": 100, "66": 100, "67": 100 } };
    const full = await complete(base);
    const text: string = full.choices[0].text;
    assert.match(text, /^[ABC]{30}$/);
    const stop = text.slice(4, 6);
    const cut = await complete({ ...base, stop: [stop, "never-there"] });
    assert.equal(cut.choices[0].finish_reason, "stop");
    assert.equal(cut.choices[0].text, text.slice(0, text.indexOf(stop)));
    const single = await complete({ ...base, stop });
    assert.equal(single.choices[0].text, cut.choices[0].text);
    const streamed = await request(colm.app).post("/v1/completions").send({ model: "tiny", ...base, stop, stream: true });
    const chunks = parseSse(streamed.text).slice(0, -1) as any[];
    assert.equal(chunks.map((c) => c.choices[0].text).join(""), cut.choices[0].text);
    assert.equal(chunks[chunks.length - 1].choices[0].finish_reason, "stop");
  });

  test("max_tokens defaults to 16", async () => {
    const body = await complete({ prompt: "default" });
    assert.equal(body.usage.completion_tokens, 16);
  });
});

describe("POST /v1/completions streaming (SSE)", () => {
  test("chunks concatenate to the non-streamed text; [DONE] last; usage with include_usage", async () => {
    const plain = await complete({ prompt: "Psalm", max_tokens: 8, temperature: 0 });
    const res = await request(colm.app)
      .post("/v1/completions")
      .send({ model: "tiny:c3", prompt: "Psalm", max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true } });
    assert.equal(res.status, 200);
    assert.match(res.headers["content-type"], /^text\/event-stream/);
    const events = parseSse(res.text);
    assert.equal(events[events.length - 1], "[DONE]");
    const chunks = events.slice(0, -1) as any[];
    const usageChunk = chunks[chunks.length - 1];
    assert.deepEqual(usageChunk.choices, []);
    assert.deepEqual(usageChunk.usage, { prompt_tokens: 5, completion_tokens: 8, total_tokens: 13, prompt_tokens_details: { cached_tokens: 0 } }); // shorter than a block: nothing to cache
    const textChunks = chunks.slice(0, -1);
    for (const c of textChunks) {
      assert.equal(c.object, "text_completion");
      assert.equal(c.model, "tiny:c3");
      assert.equal(c.usage, null);
      assert.equal(c.choices[0].chains, 3);
    }
    const last = textChunks[textChunks.length - 1];
    assert.equal(last.choices[0].finish_reason, "length");
    assert.ok(textChunks.slice(0, -1).every((c) => c.choices[0].finish_reason === null));
    const streamed = textChunks.map((c) => c.choices[0].text).join("");
    const c3 = await complete({ model: "tiny:c3", prompt: "Psalm", max_tokens: 8, temperature: 0 });
    assert.equal(streamed, c3.choices[0].text);
    assert.equal(typeof plain.choices[0].text, "string");
  });

  test("no usage chunk without include_usage; echo, logprobs and n stream per choice", async () => {
    const res = await request(colm.app)
      .post("/v1/completions")
      .send({ model: "tiny", prompt: "Ruth", max_tokens: 3, temperature: 0, stream: true, echo: true, logprobs: 2, n: 2 });
    const events = parseSse(res.text);
    assert.equal(events.pop(), "[DONE]");
    const chunks = events as any[];
    assert.ok(chunks.every((c) => c.usage === undefined && c.choices.length === 1));
    for (const index of [0, 1]) {
      const mine = chunks.filter((c) => c.choices[0].index === index).map((c) => c.choices[0]);
      assert.equal(mine[0].text, "Ruth");
      const tokenChunks = mine.filter((c) => c.logprobs && c.logprobs.token_logprobs[0] !== null);
      assert.equal(tokenChunks.length, 3);
      assert.equal(tokenChunks[0].logprobs.text_offset[0], 4);
      assert.equal(mine[mine.length - 1].finish_reason, "length");
    }
  });
});

describe("POST /v1/chat/completions", () => {
  const messages = [
    { role: "system", content: "You are terse." },
    { role: "user", content: [{ type: "text", text: "Who " }, { type: "text", text: "begat Seth?" }] },
    { role: "assistant", content: "Adam." },
    { role: "user", content: "And then?" },
  ];

  test("template renders every role", () => {
    assert.equal(
      renderChat(messages as any),
      "System: You are terse.\n\nUser: Who begat Seth?\n\nAssistant: Adam.\n\nUser: And then?\n\nAssistant: ",
    );
  });

  test("non-streaming: OpenAI shape, usage counts the rendered prompt", async () => {
    const res = await request(colm.app).post("/v1/chat/completions").send({ model: "tiny:c2", messages, max_tokens: 5, temperature: 0 });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const b = res.body;
    assert.match(b.id, /^chatcmpl-/);
    assert.equal(b.object, "chat.completion");
    assert.equal(b.model, "tiny:c2");
    assert.equal(b.chains, 2);
    assert.equal(b.choices[0].message.role, "assistant");
    assert.equal(typeof b.choices[0].message.content, "string");
    assert.ok(["length", "stop"].includes(b.choices[0].finish_reason));
    assert.equal(b.choices[0].chains, 2);
    assert.equal(b.usage.prompt_tokens, bytes(renderChat(messages as any)));
    assert.ok(b.usage.completion_tokens <= 5);
  });

  test("streaming deltas concatenate to the non-streamed content; include_usage", async () => {
    const body = { model: "tiny", messages, max_completion_tokens: 7, temperature: 0 };
    const plain = await request(colm.app).post("/v1/chat/completions").send(body);
    const res = await request(colm.app).post("/v1/chat/completions").send({ ...body, stream: true, stream_options: { include_usage: true } });
    assert.equal(res.status, 200);
    const events = parseSse(res.text);
    assert.equal(events.pop(), "[DONE]");
    const chunks = events as any[];
    assert.ok(chunks.every((c) => c.object === "chat.completion.chunk" && c.model === "tiny:c4"));
    assert.deepEqual(chunks[0].choices[0].delta, { role: "assistant", content: "" });
    const usageChunk = chunks.pop();
    assert.deepEqual(usageChunk.choices, []);
    assert.deepEqual(usageChunk.usage, plain.body.usage);
    const content = chunks.map((c) => c.choices[0].delta.content ?? "").join("");
    assert.equal(content, plain.body.choices[0].message.content);
    assert.equal(chunks[chunks.length - 1].choices[0].finish_reason, plain.body.choices[0].finish_reason);
  });

  test("logprobs + top_logprobs, and n", async () => {
    const res = await request(colm.app)
      .post("/v1/chat/completions")
      .send({ model: "tiny", messages: [{ role: "user", content: "hi" }], max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 2, n: 2 });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.choices.length, 2);
    for (const c of res.body.choices) {
      const content = c.logprobs.content;
      assert.equal(content.length, res.body.usage.completion_tokens / 2);
      for (const t of content) {
        assert.equal(typeof t.token, "string");
        assert.ok(t.logprob <= 0);
        assert.ok(Array.isArray(t.bytes));
        assert.equal(t.top_logprobs.length, 2);
      }
    }
  });
});

describe("admission, API key, shutdown and faults", () => {
  test("queue full → 429 with Retry-After; a waiting request is served later", async () => {
    const small = createApp(engine, { maxRunning: 1, maxWaiting: 1, retryAfterSeconds: 2, log: () => undefined });
    const body = { model: "tiny", prompt: "queue", max_tokens: 120, temperature: 0 };
    const results = await Promise.all([1, 2, 3, 4].map(() => request(small.app).post("/v1/completions").send(body)));
    const statuses = results.map((r) => r.status).sort();
    assert.ok(statuses.filter((s) => s === 200).length >= 2, `statuses ${statuses}`);
    const refused = results.filter((r) => r.status === 429);
    assert.ok(refused.length >= 1, `statuses ${statuses}`);
    for (const r of refused) {
      assert.equal(r.headers["retry-after"], "2");
      assert.equal(r.body.error.type, "rate_limit_error");
      assert.equal(r.body.error.code, "queue_full");
      assert.equal(r.body.error.param, null);
    }
    assert.equal(small.admission.running, 0);
    assert.equal(small.admission.waiting, 0);
    await small.close();
  });

  test("COLM_API_KEY: /v1/* needs the bearer key; /health and /metrics stay open", async () => {
    const keyed = createApp(engine, { apiKey: "s3cret", log: () => undefined });
    for (const auth of [undefined, "Bearer wrong", "s3cret", "Basic s3cret"]) {
      const req = request(keyed.app).get("/v1/models");
      const res = await (auth ? req.set("Authorization", auth) : req);
      assert.equal(res.status, 401);
      assert.deepEqual(Object.keys(res.body.error).sort(), ["code", "message", "param", "type"]);
      assert.equal(res.body.error.code, "invalid_api_key");
    }
    assert.equal((await request(keyed.app).get("/v1/models").set("Authorization", "Bearer s3cret")).status, 200);
    const c = await request(keyed.app).post("/v1/completions").set("Authorization", "Bearer s3cret").send({ model: "tiny", prompt: "k", max_tokens: 1 });
    assert.equal(c.status, 200);
    assert.equal((await request(keyed.app).get("/health")).status, 200);
    assert.equal((await request(keyed.app).get("/metrics")).status, 200);
    await keyed.close();
  });

  test("drain: new requests 503, running streams are cancelled at the deadline with finish_reason", async () => {
    const running = await startApp(engine);
    const res = await fetch(`${running.url}/v1/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: "tiny", prompt: "long", max_tokens: 240, temperature: 0, stream: true }),
    });
    const reader = res.body!.getReader();
    let text = new TextDecoder().decode((await reader.read()).value);
    const drained = running.colm.drain(0);
    const refused = await request(running.colm.app).post("/v1/completions").send({ model: "tiny", prompt: "x", max_tokens: 1 });
    assert.equal(refused.status, 503);
    assert.equal(refused.body.error.code, "server_draining");
    assert.equal((await request(running.colm.app).get("/health")).status, 503);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    await drained;
    const events = parseSse(text);
    assert.equal(events.pop(), "[DONE]");
    const final = (events as any[]).filter((e) => e.choices[0].finish_reason !== null);
    assert.equal(final.length, 1);
    assert.equal(final[0].choices[0].finish_reason, "cancelled");
    assert.ok(events.length < 240);
    await running.close();
  });

  test("drain lets requests that finish within the deadline complete normally", async () => {
    const app2 = createApp(engine, { log: () => undefined });
    const pending = request(app2.app).post("/v1/completions").send({ model: "tiny", prompt: "short", max_tokens: 3, temperature: 0 });
    const p = pending.then((r) => r);
    await new Promise((r) => setTimeout(r, 5));
    await app2.drain(10_000);
    const res = await p;
    if (res.status === 200) assert.equal(res.body.choices[0].finish_reason, "length");
    else assert.equal(res.status, 503); // arrived after drain began
    await app2.close();
  });

  test("an engine failure is a 500 (or an error event mid-stream) and the server keeps serving", async () => {
    const faulty: Engine = {
      info: engine.info,
      tokenizer: engine.tokenizer,
      kvBytesInUse: () => engine.kvBytesInUse(),
      get load() {
        return engine.load;
      },
      onStep: (listener) => engine.onStep(listener),
      close: async () => undefined,
      async *generate(prompt, options) {
        const it = engine.generate(prompt, options);
        let i = 0;
        try {
          for (;;) {
            const step = await it.next();
            if (step.done) return step.value;
            if (i++ === 2) throw new Error("simulated device fault");
            yield step.value;
          }
        } finally {
          await it.return(undefined as never);
        }
      },
    };
    const logs: string[] = [];
    const app3 = createApp(faulty, { log: (l) => logs.push(l) });
    const res = await request(app3.app).post("/v1/completions").send({ model: "tiny", prompt: "boom", max_tokens: 5 });
    assert.equal(res.status, 500);
    assert.deepEqual(res.body, { error: { message: res.body.error.message, type: "server_error", param: null, code: "internal_error" } });
    assert.ok(!res.body.error.message.includes("simulated"), "internal details are not leaked");
    const s = await request(app3.app).post("/v1/chat/completions").send({ model: "tiny", messages: [{ role: "user", content: "x" }], max_tokens: 5, stream: true });
    assert.equal(s.status, 200);
    const events = parseSse(s.text);
    assert.equal(events.pop(), "[DONE]");
    assert.equal((events.pop() as any).error.code, "internal_error");
    assert.ok(logs.some((l) => l.includes("simulated device fault")));
    assert.equal((await request(app3.app).get("/health")).status, 200);
    assert.equal(engine.kvBytesInUse(), 0);
    await app3.close();
  });
});
