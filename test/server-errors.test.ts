// Bad inputs: every one gets the right status and an OpenAI-shaped error, changes nothing, and
// the server keeps serving (/health stays 200).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import request from "supertest";
import type { ColmApp } from "../server/api/app.ts";
import type { Engine } from "../server/engine/types.ts";
import { serveTestModel, WsClient, startApp, type RunningApp } from "./helpers/server-fixture.ts";

let engine: Engine;
let running: RunningApp;
let colm: ColmApp;
serveTestModel(5, {}, (s) => {
  ({ engine, running } = s);
  colm = running.colm;
});

interface Case {
  name: string;
  method?: "get" | "post" | "put" | "delete";
  path?: string;
  /** Object → JSON; string → sent raw. */
  body?: unknown;
  contentType?: string;
  status: number;
  param: string | null;
  code: string | null;
  type?: string;
}

const C = "/v1/completions";
const CHAT = "/v1/chat/completions";
const ok = { model: "tiny", prompt: "hi", max_tokens: 2 };
const chatOk = { model: "tiny", messages: [{ role: "user", content: "hi" }], max_tokens: 2 };
const invalid = (name: string, patch: Record<string, unknown>, param: string | null, path = C, base: object = ok): Case => ({
  name,
  path,
  body: { ...base, ...patch },
  status: 400,
  param,
  code: "invalid_value",
});

/** A required field left out: OpenAI's "Missing required parameter" naming it. */
const missing = (name: string, patch: Record<string, unknown>, param: string, path = C, base: object = ok): Case => ({
  ...invalid(name, patch, param, path, base),
  code: "missing_required_parameter",
});

const cases: Case[] = [
  { name: "bad JSON", path: C, body: '{"model": "tiny", "prompt":', contentType: "application/json", status: 400, param: null, code: "invalid_json" },
  { name: "plain-text body", path: C, body: "hello there", contentType: "text/plain", status: 400, param: null, code: "invalid_json" },
  { name: "JSON array body", path: C, body: "[1,2]", contentType: "application/json", status: 400, param: null, code: "invalid_value" },
  { name: "empty body", path: C, body: "", contentType: "application/json", status: 400, param: "model", code: "missing_required_parameter" },
  { name: "oversized body (> 1 MB)", path: C, body: { ...ok, prompt: "x".repeat(1_100_000) }, status: 413, param: null, code: "request_too_large" },
  missing("model missing", { model: undefined }, "model"),
  invalid("model is a number", { model: 5 }, "model"),
  { name: "unknown model", path: C, body: { ...ok, model: "gpt-4o" }, status: 404, param: "model", code: "model_not_found" },
  { name: "size beyond n", path: C, body: { ...ok, model: "tiny:c9" }, status: 404, param: "model", code: "model_not_found" },
  { name: "size 0", path: C, body: { ...ok, model: "tiny:c0" }, status: 404, param: "model", code: "model_not_found" },
  missing("prompt missing", { prompt: undefined }, "prompt"),
  invalid("prompt is a number", { prompt: 12 }, "prompt"),
  invalid("prompt is an empty array", { prompt: [] }, "prompt"),
  invalid("prompt mixes ids and strings", { prompt: [1, "a"] }, "prompt"),
  invalid("token id outside the vocabulary", { prompt: [72, 300] }, "prompt"),
  invalid("negative token id", { prompt: [-1] }, "prompt[0]"),
  { name: "empty prompt (no BOS)", path: C, body: { ...ok, prompt: "" }, status: 400, param: "prompt", code: "empty_prompt" },
  invalid("max_tokens is a string", { max_tokens: "5" }, "max_tokens"),
  invalid("max_tokens 0", { max_tokens: 0 }, "max_tokens"),
  invalid("max_tokens not an integer", { max_tokens: 1.5 }, "max_tokens"),
  invalid("temperature above 2", { temperature: 3 }, "temperature"),
  invalid("temperature negative", { temperature: -0.5 }, "temperature"),
  invalid("top_p above 1", { top_p: 1.5 }, "top_p"),
  invalid("top_k fractional", { top_k: 2.5 }, "top_k"),
  invalid("min_p negative", { min_p: -0.1 }, "min_p"),
  invalid("n 0", { n: 0 }, "n"),
  invalid("n too large", { n: 100 }, "n"),
  invalid("stop is a number", { stop: 5 }, "stop"),
  invalid("five stop strings", { stop: ["a", "b", "c", "d", "e"] }, "stop"),
  invalid("empty stop string", { stop: "" }, "stop"),
  invalid("logprobs above 20", { logprobs: 21 }, "logprobs"),
  invalid("logit_bias key not a token id", { logit_bias: { abc: 1 } }, "logit_bias"),
  invalid("logit_bias key outside the vocabulary", { logit_bias: { "999": 1 } }, "logit_bias"),
  invalid("logit_bias value out of range", { logit_bias: { "5": 200 } }, "logit_bias.5"),
  invalid("presence_penalty above 2", { presence_penalty: 3 }, "presence_penalty"),
  invalid("frequency_penalty below -2", { frequency_penalty: -3 }, "frequency_penalty"),
  invalid("repetition_penalty 0", { repetition_penalty: 0 }, "repetition_penalty"),
  invalid("seed is a string", { seed: "x" }, "seed"),
  invalid("echo is a string", { echo: "yes" }, "echo"),
  invalid("stream is a string", { stream: "true" }, "stream"),
  invalid("chains beyond n", { chains: 5 }, "chains"),
  invalid("chains 0", { chains: 0 }, "chains"),
  invalid("chains contradicts the model id", { model: "tiny:c3", chains: 2 }, "chains"),
  invalid("latency_budget negative", { latency_budget: { ttft_ms: -1 } }, "latency_budget.ttft_ms"),
  invalid("latency_budget unknown key", { latency_budget: { fast: 1 } }, "latency_budget.fast"),
  invalid("latency_budget is a string", { latency_budget: "fast" }, "latency_budget"),
  { name: "prompt longer than the context", path: C, body: { ...ok, prompt: "x".repeat(300) }, status: 400, param: "prompt", code: "context_length_exceeded" },
  { name: "prompt + max_tokens over the context", path: C, body: { ...ok, prompt: "x".repeat(200), max_tokens: 100 }, status: 400, param: "max_tokens", code: "context_length_exceeded" },
  { name: "a prompt that alone fills the context", path: C, body: { ...ok, prompt: "x".repeat(300), max_tokens: 1 }, status: 400, param: "prompt", code: "context_length_exceeded" },
  missing("chat: messages missing", { messages: undefined }, "messages", CHAT, chatOk),
  missing("chat: a user message without content", { messages: [{ role: "user" }] }, "messages[0].content", CHAT, chatOk),
  invalid("chat: a user message with null content", { messages: [{ role: "user", content: null }] }, "messages[0].content", CHAT, chatOk),
  invalid("chat: messages empty", { messages: [] }, "messages", CHAT, chatOk),
  invalid("chat: unknown role", { messages: [{ role: "wizard", content: "x" }] }, "messages[0].role", CHAT, chatOk),
  invalid("chat: content is a number", { messages: [{ role: "user", content: 5 }] }, "messages[0].content", CHAT, chatOk),
  invalid("chat: image content part", { messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] }, "messages[0].content[0].type", CHAT, chatOk),
  invalid("chat: top_logprobs without logprobs", { top_logprobs: 2 }, "top_logprobs", CHAT, chatOk),
  invalid("chat: max_completion_tokens 0", { max_completion_tokens: 0 }, "max_completion_tokens", CHAT, chatOk),
  invalid("chat: logprobs is a number", { logprobs: 3 }, "logprobs", CHAT, chatOk),
  { name: "chat: conversation longer than the context", path: CHAT, body: { ...chatOk, messages: [{ role: "user", content: "y".repeat(400) }] }, status: 400, param: "messages", code: "context_length_exceeded" },
  { name: "chat: unknown model", path: CHAT, body: { ...chatOk, model: "tiny:c7" }, status: 404, param: "model", code: "model_not_found" },
  { name: "unknown route", method: "get", path: "/v1/engines", status: 404, param: null, code: "not_found" },
  { name: "unknown route outside /v1", method: "post", path: "/generate", body: ok, status: 404, param: null, code: "not_found" },
  { name: "wrong method on completions", method: "get", path: C, status: 405, param: null, code: "method_not_allowed" },
  { name: "plain HTTP GET on the WebSocket path", method: "get", path: "/v1/stream", status: 426, param: null, code: "upgrade_required" },
  { name: "wrong method on models", method: "delete", path: "/v1/models", status: 405, param: null, code: "method_not_allowed" },
];

describe("bad HTTP inputs", () => {
  test(`the table has at least 25 rows (${cases.length})`, () => {
    assert.ok(cases.length >= 25);
  });

  for (const c of cases) {
    test(`${c.name} → ${c.status} ${c.code ?? ""}`, async () => {
      const method = c.method ?? "post";
      let req = request(colm.app)[method](c.path ?? C);
      if (c.contentType) req = req.set("Content-Type", c.contentType);
      const res = c.body === undefined ? await req : await req.send(c.body as object);
      assert.equal(res.status, c.status, JSON.stringify(res.body));
      assert.match(res.headers["content-type"], /application\/json/);
      assert.deepEqual(Object.keys(res.body), ["error"]);
      const e = res.body.error;
      assert.deepEqual(Object.keys(e).sort(), ["code", "message", "param", "type"]);
      assert.equal(typeof e.message, "string");
      assert.ok(e.message.length > 0);
      assert.equal(e.type, c.type ?? "invalid_request_error");
      assert.equal(e.param, c.param);
      assert.equal(e.code, c.code);
      if (c.status === 405) assert.ok(res.headers.allow);
    });
  }

  test("after all of them: /health is 200, nothing is running, no KV is held, and requests still work", async () => {
    assert.equal((await request(colm.app).get("/health")).status, 200);
    assert.equal(colm.admission.running, 0);
    assert.equal(colm.admission.waiting, 0);
    assert.equal(engine.kvBytesInUse(), 0);
    const res = await request(colm.app).post(C).send(ok);
    assert.equal(res.status, 200);
  });
});

describe("bad WebSocket messages", () => {
  const wsCases: Array<{ name: string; msg: unknown; param: string | null; code: string; status?: number; id?: unknown }> = [
    { name: "not JSON", msg: "{nope", param: null, code: "invalid_json" },
    { name: "no type", msg: { id: "a", prompt: "x" }, param: "type", code: "missing_required_parameter", id: "a" },
    { name: "unknown type", msg: { type: "explode", id: "a" }, param: "type", code: "invalid_value", id: "a" },
    { name: "generate without id", msg: { type: "generate", model: "tiny", prompt: "x" }, param: "id", code: "missing_required_parameter" },
    { name: "generate with neither prompt nor messages", msg: { type: "generate", id: "g1", model: "tiny" }, param: "prompt", code: "missing_prompt", id: "g1" },
    { name: "generate with a bad temperature", msg: { type: "generate", id: "g2", model: "tiny", prompt: "x", temperature: 9 }, param: "temperature", code: "invalid_value", id: "g2" },
    { name: "generate for an unknown model", msg: { type: "generate", id: "g3", model: "nope", prompt: "x" }, param: "model", code: "model_not_found", id: "g3" },
    { name: "generate too long", msg: { type: "generate", id: "g4", model: "tiny", prompt: "z".repeat(250), max_tokens: 20 }, param: "max_tokens", code: "context_length_exceeded", id: "g4" },
    { name: "generate with n 2", msg: { type: "generate", id: "g5", model: "tiny", prompt: "x", n: 2 }, param: "n", code: "invalid_value", id: "g5" },
    { name: "switch for an unknown id", msg: { type: "switch", id: "zz", chains: 2 }, param: "id", code: "unknown_id", id: "zz" },
    { name: "switch with chains 0", msg: { type: "switch", id: "zz", chains: 0 }, param: "chains", code: "invalid_value", id: "zz" },
    { name: "cancel for an unknown id", msg: { type: "cancel", id: 7 }, param: "id", code: "unknown_id", id: 7 },
    { name: "id of the wrong type", msg: { type: "cancel", id: { x: 1 } }, param: "id", code: "invalid_value" },
  ];

  test("each gets an OpenAI-shaped error message and the socket stays open", async () => {
    const client = await WsClient.open(running.wsUrl);
    for (const c of wsCases) {
      const from = client.received.length;
      client.send(typeof c.msg === "string" ? c.msg : c.msg);
      const m = await client.waitFor((x) => x.type === "error", 5000, from);
      assert.deepEqual(Object.keys(m.error).sort(), ["code", "message", "param", "type"], c.name);
      assert.equal(m.error.code, c.code, c.name);
      assert.equal(m.error.param, c.param, c.name);
      assert.equal(m.error.type, "invalid_request_error", c.name);
      assert.equal(m.id, c.id, c.name);
    }
    client.ws.send(Buffer.from([1, 2, 3]));
    const bin = await client.waitFor((x) => x.type === "error" && x.error.code === "invalid_message", 5000);
    assert.equal(bin.error.param, null);
    // still usable
    client.send({ type: "generate", id: "after", model: "tiny", prompt: "ok", max_tokens: 2 });
    const done = await client.waitFor((x) => x.type === "done" && x.id === "after");
    assert.equal(done.usage.completion_tokens, 2);
    assert.equal(client.closed, null);
    await client.close();
    assert.equal((await request(colm.app).get("/health")).status, 200);
  });

  test("upgrade on another path → 404; oversized frame closes with 1009", async () => {
    await assert.rejects(WsClient.open(running.wsUrl.replace("/v1/stream", "/v1/other")), /404/);
    const client = await WsClient.open(running.wsUrl);
    client.send({ type: "generate", id: "big", model: "tiny", prompt: "x".repeat(2_000_000) });
    await new Promise<void>((resolve) => client.ws.once("close", () => resolve()));
    assert.equal(client.closed?.code, 1009);
    assert.equal((await request(colm.app).get("/health")).status, 200);
  });
});

describe("KV cache budget (COLM_KV_BYTES)", () => {
  test("a request that could outgrow the budget is a 400 naming max_tokens; one that fits is served; capacity is reported", async () => {
    const perToken = engine.info.kvBytesPerToken;
    const budgeted = await startApp(engine, { kvBudgetBytes: 40 * perToken });
    try {
      const tooBig = await request(budgeted.colm.app).post("/v1/completions").send({ model: "tiny", prompt: "hello", max_tokens: 50 });
      assert.equal(tooBig.status, 400);
      assert.equal(tooBig.body.error.code, "kv_budget_exceeded");
      assert.equal(tooBig.body.error.param, "max_tokens");
      const fits = await request(budgeted.colm.app).post("/v1/completions").send({ model: "tiny", prompt: "hello", max_tokens: 8 });
      assert.equal(fits.status, 200);
      const metrics = await request(budgeted.colm.app).get("/metrics");
      assert.match(metrics.text, new RegExp(`^colm_kv_cache_bytes_capacity ${40 * perToken}$`, "m"));
    } finally {
      await budgeted.close();
    }
  });
});
