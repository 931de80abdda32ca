// Small server modules on their own: admission, model resolution / chain choice, chain control,
// chat template, error formatting.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Admission } from "../server/policy/admission.ts";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { assistantCue, renderChat } from "../server/api/chat-template.ts";
import { ByteTokenizer, HfTokenizer } from "../models/tokenizer.ts";
import type { ModelInfo } from "../server/engine/types.ts";
import { Sampler } from "../kernels/sampling.ts";
import { EngineError } from "../server/engine/errors.ts";
import { AdmissionError } from "../server/policy/admission.ts";
import { ApiError, errorHeaders, formatPath, httpStatus, toColmError } from "../server/api/errors.ts";
import { ChainControl } from "../server/engine/chain-control.ts";
import { modelId } from "../server/api/models.ts";
import { fixedChainsOf } from "../server/api/request.ts";

const info: ModelInfo = {
  name: "m",
  nChains: 4,
  widths: [32, 64, 96, 128],
  paramCounts: [1, 2, 3, 4],
  vocabSize: 256,
  maxPosition: 256,
  bosTokenId: null,
  eosTokenId: null,
  device: "cpu",
  kvBytesPerToken: 512,
  precision: "f32",
};

describe("Admission", () => {
  test("admits up to maxRunning, queues FIFO up to maxWaiting, refuses beyond with 429", async () => {
    const a = new Admission({ maxRunning: 2, maxWaiting: 2, retryAfterSeconds: 3 });
    const r1 = await a.acquire();
    const r2 = await a.acquire();
    assert.equal(a.running, 2);
    const order: number[] = [];
    const w1 = a.acquire().then((r) => (order.push(1), r));
    const w2 = a.acquire().then((r) => (order.push(2), r));
    assert.equal(a.waiting, 2);
    await assert.rejects(a.acquire(), (e: unknown) => e instanceof AdmissionError && httpStatus(e) === 429 && errorHeaders(e)["Retry-After"] === "3");
    r1();
    r1(); // idempotent
    const g1 = await w1;
    assert.equal(a.running, 2);
    r2();
    const g2 = await w2;
    assert.deepEqual(order, [1, 2]);
    g1();
    g2();
    assert.equal(a.running, 0);
    assert.equal(a.waiting, 0);
  });

  test("weighted requests are capped at maxRunning and keep FIFO order", async () => {
    const a = new Admission({ maxRunning: 3, maxWaiting: 5 });
    const big = await a.acquire(10); // capped to 3
    assert.equal(a.running, 3);
    const two = a.acquire(2);
    const one = a.acquire(1);
    big();
    (await two)();
    (await one)();
    assert.equal(a.running, 0);
  });

  test("an aborted waiter leaves the queue; rejectWaiting empties it", async () => {
    const a = new Admission({ maxRunning: 1, maxWaiting: 3 });
    const r = await a.acquire();
    const ac = new AbortController();
    const w = a.acquire(1, ac.signal);
    ac.abort(new Error("gone"));
    await assert.rejects(w, /gone/);
    assert.equal(a.waiting, 0);
    const w2 = a.acquire();
    a.rejectWaiting(new Error("shutdown"));
    await assert.rejects(w2, /shutdown/);
    r();
    assert.equal(a.running, 0);
  });

  test("KV budget: requests reserve prompt + max_tokens of cache, wait first-come first-served, never-fitting ones are a 400", async () => {
    const a = new Admission({ maxRunning: 8, maxWaiting: 4, kvBudgetBytes: 1000 });
    const first = await a.acquire(1, undefined, 600);
    assert.equal(a.kvReservedBytes, 600);
    let bigIn = false;
    let smallIn = false;
    const big = a.acquire(1, undefined, 700).then((r) => ((bigIn = true), r));
    const small = a.acquire(1, undefined, 100).then((r) => ((smallIn = true), r)); // fits, but waits its turn
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(bigIn, false);
    assert.equal(smallIn, false, "no overtaking: the big request would starve");
    first();
    const [releaseBig, releaseSmall] = await Promise.all([big, small]);
    assert.equal(a.kvReservedBytes, 800);
    releaseBig();
    releaseSmall();
    assert.equal(a.kvReservedBytes, 0);
    await assert.rejects(a.acquire(1, undefined, 1001), (e: unknown) => e instanceof AdmissionError && httpStatus(e) === 400 && e.code === "kv_budget_exceeded");
  });
});

describe("model resolution and chain choice", () => {
  test("the model id and the chains field fix a size, or leave it elastic", () => {
    assert.equal(fixedChainsOf("m", undefined, info), undefined);
    assert.equal(fixedChainsOf("m:c2", undefined, info), 2);
    assert.equal(fixedChainsOf("m", 3, info), 3);
    assert.equal(fixedChainsOf("m:c3", 3, info), 3);
    for (const bad of ["x", "m:c0", "m:c5", "m:c02", "m:", "m:cx", "x:c1"]) {
      assert.throws(() => fixedChainsOf(bad, null, info), (e: unknown) => e instanceof ApiError && httpStatus(e) === 404 && e.param === "model", bad);
    }
    assert.throws(() => fixedChainsOf("m", 5, info), (e: unknown) => e instanceof ApiError && httpStatus(e) === 400 && e.param === "chains");
    assert.throws(() => fixedChainsOf("m:c1", 2, info), (e: unknown) => e instanceof ApiError && e.param === "chains");
    assert.equal(modelId(info, 3), "m:c3");
  });
});

describe("ChainControl", () => {
  test("reports the index of the first token at a new count, including a switch before the first token", () => {
    const c = new ChainControl(4);
    const seen: Array<[number, number]> = [];
    c.onApplied((k, i) => seen.push([k, i]));
    assert.equal(c.current, 4);
    c.target = 2;
    assert.equal(c.choose(0), 2);
    assert.equal(c.choose(1), 2);
    c.target = 3;
    assert.equal(c.current, 2);
    assert.equal(c.choose(2), 3);
    assert.equal(c.current, 3);
    assert.deepEqual(seen, [
      [2, 0],
      [3, 2],
    ]);
  });
});

describe("chat template and errors", () => {
  test("renderChat", () => {
    assert.equal(renderChat([{ role: "user", content: "Hi" }]), "User: Hi\n\nAssistant: ");
    assert.equal(
      renderChat([
        { role: "developer", content: "d" },
        { role: "tool", content: "" },
        { role: "assistant", content: [{ type: "text", text: "a" }, { type: "text", text: "b" }] },
      ]),
      "System: d\n\nTool: \n\nAssistant: ab\n\nAssistant: ",
    );
  });

  test("the prompt's cue: 'Assistant: ' for the byte tokenizer, 'Assistant:' for a BPE whose words carry their space", () => {
    assert.equal(assistantCue(new ByteTokenizer()), "Assistant: ");
    // The long-context model's tokenizer (GPT-2-style byte-level BPE, models/train/bpe.py).
    const bpe = new HfTokenizer(JSON.parse(readFileSync(join(import.meta.dirname, "..", "models", "train", "tokenizer-long.json"), "utf8")));
    assert.equal(assistantCue(bpe), "Assistant:");
    const prompt = renderChat([{ role: "user", content: "Hi" }], assistantCue(bpe));
    assert.equal(prompt, "User: Hi\n\nAssistant:");
    // With the space the prompt would end in a lone " " token, which " The" (one token) never follows.
    const ids = bpe.encode("User: Hi\n\nAssistant: ");
    assert.equal(bpe.decode(ids.slice(-1)), " ");
    assert.deepEqual(bpe.encode(`${prompt} The`).slice(0, -1), bpe.encode(prompt));
  });

  test("formatPath, and every error maps to one status by its kind", () => {
    assert.equal(formatPath(["messages", 0, "content"]), "messages[0].content");
    assert.equal(formatPath([]), null);
    assert.equal(httpStatus(toColmError(new Error("x"))), 500);
    assert.equal(httpStatus(toColmError({ type: "entity.too.large", limit: 10 })), 413);
    const e = toColmError(new EngineError("too long", "context_length_exceeded", "max_tokens"));
    assert.equal(httpStatus(e), 400);
    assert.equal(e.code, "context_length_exceeded");
    assert.equal(e.param, "max_tokens");
    // The sampler's refusals are the request's fault too, naming the field as the API spells it.
    let sampling: unknown;
    try {
      new Sampler({ topP: 0 }, 10);
    } catch (err) {
      sampling = err;
    }
    const mapped = toColmError(sampling);
    assert.equal(httpStatus(mapped), 400);
    assert.equal(mapped.param, "top_p");
  });

});
