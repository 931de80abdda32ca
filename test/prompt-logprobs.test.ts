// Prompt logprobs (vLLM's prompt_logprobs, read by lm-evaluation-harness through echo + logprobs):
// on a real onnxruntime session, each prompt token's logprob given the tokens before it equals the
// log-softmax of the reference forward's logits (kernels/reference.ts) at every position and every
// chain count; asking for them changes neither the completion nor a concurrent sequence.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadModel, EngineError, type ColmEngine } from "../server/engine/engine.ts";
import type { GeneratedToken, GenerateOptions, GenerationSummary, PromptLogprob, StepStats } from "../server/engine/types.ts";
import { referenceForward } from "../kernels/reference.ts";
import { loadCheckpoint, type Checkpoint } from "../models/checkpoint.ts";
import { tokenText } from "../models/tokenizer.ts";
import { TINY_EQUAL, TINY_UNEQUAL, makeCheckpoint } from "./helpers/checkpoints.ts";

const KJV = join(import.meta.dirname, "..", "models", "colm-kjv");
const TOL = 1e-4;

interface Run {
  tokens: GeneratedToken[];
  summary: GenerationSummary;
  prompt: PromptLogprob[] | null;
  /** How many times onPromptLogprobs was called, and the order of callbacks and tokens. */
  calls: number;
  order: string[];
}

async function run(engine: ColmEngine, prompt: number[], options: GenerateOptions): Promise<Run> {
  const r: Run = { tokens: [], summary: null!, prompt: null, calls: 0, order: [] };
  const it = engine.generate(prompt, {
    ...options,
    onPromptLogprobs: (lp) => {
      r.calls++;
      r.prompt = lp;
      r.order.push("prompt");
    },
  });
  for (;;) {
    const next = await it.next();
    if (next.done) {
      r.summary = next.value;
      return r;
    }
    r.order.push("token");
    r.tokens.push(next.value);
  }
}

/** Row-wise log-softmax in float64 of a [T, V] matrix. */
function logSoftmax(logits: Float32Array, T: number, V: number): Float64Array[] {
  return Array.from({ length: T }, (_, t) => {
    const row = logits.subarray(t * V, (t + 1) * V);
    let max = -Infinity;
    for (const v of row) max = Math.max(max, v);
    let sum = 0;
    for (const v of row) sum += Math.exp(v - max);
    const lse = max + Math.log(sum);
    return Float64Array.from(row, (v) => v - lse);
  });
}

/** Checks prompt logprobs against the reference forward of sub-model k over the prompt. */
function assertMatchesReference(engine: ColmEngine, ckpt: Checkpoint, prompt: number[], k: number, n: number, got: PromptLogprob[] | null, label: string): void {
  assert.ok(got, `${label}: onPromptLogprobs was called`);
  assert.equal(got.length, prompt.length, `${label}: one entry per prompt token`);
  assert.equal(got[0], null, `${label}: the first prompt token has no logprob`);
  const V = engine.info.vocabSize;
  const ref = logSoftmax(referenceForward(ckpt.config, ckpt.weights, prompt, k).logits, prompt.length, V);
  for (let t = 1; t < prompt.length; t++) {
    const e: PromptLogprob = got[t];
    assert.ok(e, `${label}: entry ${t} present`);
    const dist = ref[t - 1];
    assert.equal(e.tokenId, prompt[t], `${label}: entry ${t} is the prompt token`);
    assert.ok(Math.abs(e.logprob - dist[prompt[t]]) < TOL, `${label} t=${t}: logprob ${e.logprob} vs reference ${dist[prompt[t]]}`);
    assert.equal(e.topLogprobs.length, n, `${label} t=${t}: top-${n}`);
    e.topLogprobs.forEach((alt, i) => {
      assert.ok(Math.abs(alt.logprob - dist[alt.tokenId]) < TOL, `${label} t=${t}: alternative ${alt.tokenId}`);
      assert.equal(alt.token, tokenText(engine.tokenizer, alt.tokenId));
      if (i > 0) {
        const prev = e.topLogprobs[i - 1];
        assert.ok(prev.logprob > alt.logprob || (prev.logprob === alt.logprob && prev.tokenId < alt.tokenId), `${label} t=${t}: sorted, ties by lower id`);
      }
    });
    if (n > 0) {
      // The reference's best token (up to float noise: anything within TOL of the best counts).
      const best = Math.max(...dist);
      assert.ok(best - dist[e.topLogprobs[0].tokenId] < TOL, `${label} t=${t}: top-1 is the best token`);
      // The N-th alternative is at least as likely as every token left out.
      const ids = new Set(e.topLogprobs.map((a) => a.tokenId));
      const floor = e.topLogprobs[n - 1].logprob;
      dist.forEach((lp, id) => assert.ok(ids.has(id) || lp <= floor + TOL, `${label} t=${t}: token ${id} (${lp}) left out of the top-${n} (floor ${floor})`));
    }
  }
}

const MODELS = [
  ["equal chains", () => makeCheckpoint(TINY_EQUAL, 31)],
  ["unequal chains, tied head", () => makeCheckpoint(TINY_UNEQUAL, 32)],
  ["bundled colm-kjv", () => KJV],
] as const;

for (const [label, dir] of MODELS) {
  describe(`prompt logprobs (${label})`, () => {
    let engine: ColmEngine;
    let ckpt: Checkpoint;
    before(async () => {
      const d = dir();
      engine = await loadModel(d, { threads: 1 });
      ckpt = loadCheckpoint(d);
    });
    after(() => engine.close());
    const prompt = label === "bundled colm-kjv" ? [...new TextEncoder().encode("In the beginning God created the heaven")] : [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43];

    test("match log_softmax of the reference forward at every position and every k (1e-4); first entry null; top-N sorted", async () => {
      for (let k = 1; k <= engine.info.nChains; k++) {
        for (const n of [0, 5]) {
          const r = await run(engine, prompt, { chains: k, maxTokens: 1, promptLogprobs: n, sampling: { temperature: 0 } });
          assert.equal(r.calls, 1);
          assertMatchesReference(engine, ckpt, prompt, k, n, r.prompt, `k=${k} n=${n}`);
        }
      }
    });

    test("greedy completions (tokens and their logprobs) are the same with and without promptLogprobs", async () => {
      const schedules: [string, Omit<GenerateOptions, "maxTokens">][] = [];
      for (let k = 1; k <= engine.info.nChains; k++) schedules.push([`k=${k}`, { chains: k }]);
      schedules.push(["switching", { chooseChains: (i) => ((i * 3) % engine.info.nChains) + 1 }]);
      for (const [name, o] of schedules) {
        const base: GenerateOptions = { ...o, maxTokens: 12, stopOnEos: false, sampling: { temperature: 0, logprobs: 3 } };
        const plain = await run(engine, prompt, base);
        const full = await run(engine, prompt, { ...base, chain1Prefill: false });
        const withLp = await run(engine, prompt, { ...base, promptLogprobs: 2 });
        assert.equal(plain.calls, 0);
        assert.equal(withLp.calls, 1);
        assert.deepEqual(withLp.tokens.map((t) => t.tokenId), plain.tokens.map((t) => t.tokenId), `${name}: same tokens`);
        assert.deepEqual(withLp.tokens.map((t) => t.chains), plain.tokens.map((t) => t.chains), `${name}: same chain counts`);
        assert.deepEqual(full.tokens.map((t) => t.tokenId), plain.tokens.map((t) => t.tokenId), `${name}: full-size prefill agrees too`);
        withLp.tokens.forEach((t, i) => assert.ok(Math.abs(t.logprob! - plain.tokens[i].logprob!) < TOL, `${name} token ${i}: logprob`));
        assert.equal(withLp.summary.finishReason, "length");
        assert.equal(withLp.summary.completionTokens, 12);
        // The prompt logprobs are those of the first token's chain count.
        assertMatchesReference(engine, ckpt, prompt, withLp.tokens[0].chains, 2, withLp.prompt, name);
      }
    });
  });
}

describe("prompt logprobs: engine behaviour", () => {
  let engine: ColmEngine;
  let ckpt: Checkpoint;
  const steps: StepStats[] = [];
  before(async () => {
    const dir = makeCheckpoint(TINY_EQUAL, 33);
    // prefillChunk 3: while another sequence decodes, a prompt goes in 3 tokens per step, so
    // prompt logprobs come from several chunks run at k through the cache path.
    engine = await loadModel(dir, { threads: 1, maxBatch: 4, prefillChunk: 3 });
    engine.onStep((s) => steps.push(s));
    ckpt = loadCheckpoint(dir);
  });
  after(() => engine.close());
  const prompt = [10, 20, 30, 40, 50, 60, 70, 80, 90, 5, 15];

  test("called exactly once, before the first token is yielded", async () => {
    const r = await run(engine, prompt, { chains: 2, maxTokens: 4, promptLogprobs: 1, sampling: { temperature: 0 } });
    assert.deepEqual(r.order, ["prompt", "token", "token", "token", "token"]);
  });

  test("maxTokens 0: the prompt is prefilled, the prompt logprobs come, then 'length' with no tokens", async () => {
    steps.length = 0;
    const r = await run(engine, prompt, { chains: 3, maxTokens: 0, promptLogprobs: 4 });
    assert.equal(r.calls, 1);
    assert.equal(r.tokens.length, 0);
    assert.equal(r.summary.finishReason, "length");
    assert.equal(r.summary.completionTokens, 0);
    assert.equal(r.summary.promptTokens, prompt.length);
    assertMatchesReference(engine, ckpt, prompt, 3, 4, r.prompt, "maxTokens 0");
    assert.ok(steps.length > 0 && steps.every((s) => s.kind === "prefill" && s.chains === 3), "prefill only, at k");
    assert.equal(steps.reduce((a, s) => a + s.tokens, 0), prompt.length);
    assert.equal(engine.kvBytesInUse(), 0, "the row is freed");
    assert.deepEqual(engine.load, { running: 0, waiting: 0 });
    // Without promptLogprobs maxTokens 0 still runs nothing.
    steps.length = 0;
    const plain = await run(engine, prompt, { chains: 3, maxTokens: 0 });
    assert.equal(plain.calls, 0);
    assert.equal(plain.summary.finishReason, "length");
    assert.equal(steps.length, 0);
  });

  test("a one-token prompt gives [null]", async () => {
    const r = await run(engine, [42], { chains: 4, maxTokens: 0, promptLogprobs: 3 });
    assert.deepEqual(r.prompt, [null]);
  });

  test("chooseChains: prompt logprobs at chainsFor(0)", async () => {
    const r = await run(engine, prompt, { chooseChains: (i) => (i === 0 ? 2 : 4), maxTokens: 3, promptLogprobs: 2, sampling: { temperature: 0 } });
    assert.deepEqual(r.tokens.map((t) => t.chains), [2, 4, 4]);
    assertMatchesReference(engine, ckpt, prompt, 2, 2, r.prompt, "chooseChains");
  });

  for (const kA of [1, 3]) {
    test(`batched with a sequence decoding at k=${kA}, in chunks: prompt logprobs and both completions unchanged`, async () => {
      const other = [7, 7, 8, 9];
      const optsA: GenerateOptions = { chains: kA, maxTokens: 40, stopOnEos: false, sampling: { temperature: 0 } };
      const optsB: GenerateOptions = { chains: 3, maxTokens: 6, stopOnEos: false, promptLogprobs: 5, sampling: { temperature: 0 } };
      const aloneA = await run(engine, other, optsA);
      const aloneB = await run(engine, prompt, optsB);
      steps.length = 0;
      const a = run(engine, other, optsA);
      while (engine.load.running < 1) await new Promise((resolve) => setImmediate(resolve));
      const b = run(engine, prompt, optsB);
      const [ra, rb] = await Promise.all([a, b]);
      // B's prompt went in in chunks of at most 3 tokens at k=3, between A's decode steps.
      const firstDecode = steps.findIndex((s) => s.kind === "decode"); // A's prompt is in before it
      const chunks = steps.flatMap((s, i) => (i > firstDecode && s.kind === "prefill" && s.chains === 3 ? [i] : []));
      assert.ok(chunks.length >= 3 && chunks.every((i) => steps[i].tokens <= 3), `chunked prefill: ${JSON.stringify(steps)}`);
      const decodesBetween = steps.slice(chunks[0], chunks[chunks.length - 1]).filter((s) => s.kind === "decode").length;
      assert.ok(decodesBetween >= chunks.length - 1, "A kept decoding while B's prompt went in");
      if (kA === 3) assert.ok(steps.some((s) => s.kind === "decode" && s.rows === 2), "A and B shared batched decode steps");
      assert.deepEqual(ra.tokens.map((t) => t.tokenId), aloneA.tokens.map((t) => t.tokenId));
      assert.deepEqual(rb.tokens.map((t) => t.tokenId), aloneB.tokens.map((t) => t.tokenId));
      assert.equal(rb.calls, 1);
      rb.prompt!.forEach((e, t) => {
        const ref = aloneB.prompt![t];
        if (t === 0) return assert.equal(e, null);
        assert.ok(Math.abs(e!.logprob - ref!.logprob) < 1e-5, `t=${t}`);
        assert.deepEqual(e!.topLogprobs.map((x) => x.tokenId), ref!.topLogprobs.map((x) => x.tokenId));
      });
      assertMatchesReference(engine, ckpt, prompt, 3, 5, rb.prompt, "batched");
    });
  }

  test("promptLogprobs outside 0 … 20 is refused", async () => {
    for (const bad of [-1, 21, 1.5, Number.NaN]) {
      await assert.rejects(
        run(engine, prompt, { maxTokens: 1, promptLogprobs: bad }),
        (e: unknown) => e instanceof EngineError && e.code === "invalid_value" && e.param === "prompt_logprobs",
      );
    }
  });

  test("an exception in onPromptLogprobs ends that generation and frees its row", async () => {
    const it = engine.generate(prompt, {
      chains: 2,
      maxTokens: 5,
      promptLogprobs: 0,
      onPromptLogprobs: () => {
        throw new Error("consumer bug");
      },
    });
    await assert.rejects(it.next(), /consumer bug/);
    // The scheduler drops the abandoned sequence at its next step.
    for (let i = 0; i < 50 && (engine.load.running || engine.kvBytesInUse()); i++) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(engine.kvBytesInUse(), 0);
    assert.deepEqual(engine.load, { running: 0, waiting: 0 });
  });
});
