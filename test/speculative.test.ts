// Self-speculative decoding (issue 18): sub-model 1 drafts, the requested size verifies.
// Exactness is the whole contract: greedy output identical to plain decoding at every k (with
// switches, stop strings, penalties, logprobs, batching), sampled output from the target's own
// distribution (chi-square over many seeded draws), the KV cache after rejections equal to a
// plain run's, and a cancelled speculating generation frees everything.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadModel, type ColmEngine } from "../server/engine/engine.ts";
import { Sequence } from "../server/engine/sequence.ts";
import { prefillRow } from "../server/engine/scheduler.ts";
import { speculativeRound } from "../server/engine/speculation.ts";
import type { GenerateOptions, GeneratedToken, StepStats } from "../server/engine/types.ts";
import { Sampler } from "../kernels/sampling.ts";
import { emptyDraft, extendDraft, verifyDraft } from "../kernels/speculative.ts";
import { SeededRng } from "../kernels/rng.ts";
import { CostModel } from "../server/policy/cost-model.ts";
import { DEFAULT_MAX_DRAFT, DraftPolicy } from "../server/policy/draft-policy.ts";
import { TINY_EQUAL, makeCheckpoint } from "./helpers/checkpoints.ts";
import { fullForward, maxAbsDiff, newCache } from "./helpers/run.ts";

const BUNDLED = join(import.meta.dirname, "..", "models", "colm-kjv");

async function collect(engine: ColmEngine, prompt: number[], options: GenerateOptions): Promise<GeneratedToken[]> {
  const out: GeneratedToken[] = [];
  for await (const t of engine.generate(prompt, options)) out.push(t);
  return out;
}

const ids = (tokens: GeneratedToken[]) => tokens.map((t) => t.tokenId);

/** χ² critical value at p = 0.001 (Wilson–Hilferty). */
function chiSquareCritical(df: number): number {
  const z = 3.09;
  return df * (1 - 2 / (9 * df) + z * Math.sqrt(2 / (9 * df))) ** 3;
}

/** χ² statistic of observed counts against probabilities; cells expecting < 5 are pooled. */
function chiSquare(observed: Map<string, number>, expected: Map<string, number>, draws: number): { stat: number; df: number } {
  let stat = 0;
  let cells = 0;
  let pooledO = 0;
  let pooledE = 0;
  for (const [key, p] of expected) {
    const e = p * draws;
    const o = observed.get(key) ?? 0;
    if (e < 5) {
      pooledO += o;
      pooledE += e;
      continue;
    }
    stat += (o - e) ** 2 / e;
    cells++;
  }
  for (const [key, o] of observed) if (!expected.has(key)) pooledO += o; // impossible outcomes
  if (pooledE > 0 || pooledO > 0) {
    stat += (pooledO - pooledE) ** 2 / Math.max(pooledE, 1e-9);
    cells++;
  }
  return { stat, df: cells - 1 };
}

describe("speculative sampling rule (kernels/speculative.ts)", () => {
  test("the first emitted token follows the target distribution for any draft (χ², top-k/top-p/min-p/temperature/penalties)", () => {
    const V = 12;
    const rng = new SeededRng(5);
    const logits = (scale: number) => Float32Array.from({ length: V }, () => (rng.next() - 0.5) * scale);
    const target = [logits(6), logits(6), logits(6)];
    const draftLogits = [logits(6), logits(6)]; // an unrelated draft: many rejections
    const settings = [{ temperature: 1 }, { temperature: 0.7, topK: 5 }, { temperature: 1.3, topP: 0.8, minP: 0.05 }, { temperature: 1, presencePenalty: 1.5, logitBias: { 3: 2 } }];
    for (const sampling of settings) {
      // The exact target distribution of the first token, from a reference sampler.
      const p = new Sampler(sampling, V).distribution(target[0], [1, 2], [7], new Float32Array(V));
      const expected = new Map(Array.from(p, (v, i) => [String(i), v] as [string, number]).filter(([, v]) => v > 0));
      const observed = new Map<string, number>();
      let rejections = 0;
      const draws = 6000;
      for (let s = 0; s < draws; s++) {
        const sampler = new Sampler({ ...sampling, seed: s }, V);
        const draft = emptyDraft(sampler);
        for (const l of draftLogits) extendDraft(draft, sampler, l, [1, 2], [7]);
        const flat = new Float32Array(3 * V);
        target.forEach((t, i) => flat.set(t, i * V));
        const verdict = verifyDraft(draft, sampler, flat, [1, 2], [7]);
        if (verdict.accepted === 0) rejections++;
        const key = String(verdict.tokens[0].tokenId);
        observed.set(key, (observed.get(key) ?? 0) + 1);
      }
      const { stat, df } = chiSquare(observed, expected, draws);
      assert.ok(rejections > draws / 10, `the draft must disagree often enough to test the residual (${rejections})`);
      assert.ok(stat < chiSquareCritical(df), `${JSON.stringify(sampling)}: χ² ${stat.toFixed(1)} ≥ ${chiSquareCritical(df).toFixed(1)} (df ${df})`);
    }
  });

  test("greedy: drafts equal to the target's argmax are accepted, the first other one is replaced by it", () => {
    const V = 5;
    const sampler = new Sampler({ temperature: 0 }, V);
    const row = (best: number) => Float32Array.from({ length: V }, (_, i) => (i === best ? 3 : 0));
    const draft = emptyDraft(sampler);
    for (const best of [2, 4, 1]) extendDraft(draft, sampler, row(best), [0], []);
    assert.deepEqual(draft.tokens, [2, 4, 1]);
    const target = new Float32Array(4 * V);
    [2, 4, 3, 0].forEach((best, i) => target.set(row(best), i * V));
    const verdict = verifyDraft(draft, sampler, target, [0], []);
    assert.equal(verdict.accepted, 2);
    assert.deepEqual(verdict.tokens.map((t) => t.tokenId), [2, 4, 3]);
  });
});

describe("speculative decoding on the bundled model: greedy output identical to plain decoding", () => {
  let engine: ColmEngine;
  let prompts: number[][];
  before(async () => {
    engine = await loadModel(BUNDLED, { threads: 1, prefixCacheBytes: 0 });
    prompts = ["In the beginning God created", "And the LORD spake unto Moses, saying,", "Blessed are the poor in spirit: for"].map((t) => engine.tokenizer.encode(t));
  });
  after(() => engine.close());

  test("every target k, draft k_d < k, several draft lengths", async () => {
    const steps: StepStats[] = [];
    engine.onStep((s) => steps.push(s));
    for (const prompt of prompts) {
      for (let k = 2; k <= engine.info.nChains; k++) {
        const plain = ids(await collect(engine, prompt, { chains: k, maxTokens: 40, sampling: { temperature: 0 }, stopOnEos: false }));
        for (const [draftChains, draftTokens] of [[1, 1], [1, 4], [k - 1, 3], [1, 7]]) {
          const spec = ids(await collect(engine, prompt, { chains: k, maxTokens: 40, sampling: { temperature: 0 }, stopOnEos: false, speculative: { draftChains, draftTokens } }));
          assert.deepEqual(spec, plain, `k=${k} draft ${draftChains}×${draftTokens}`);
        }
      }
    }
    const verifies = steps.filter((s) => s.kind === "verify");
    const accepted = verifies.reduce((a, s) => a + s.speculation!.accepted, 0);
    const rejected = verifies.reduce((a, s) => a + s.speculation!.rejected, 0);
    assert.ok(accepted > 0 && rejected > 0, `both paths taken (accepted ${accepted}, rejected rounds ${rejected})`);
  });

  test("with a switch schedule, stop strings, penalties, logit_bias and logprobs", async () => {
    // A switch takes effect at the next round, so the spec run's tokens say which count made each;
    // the plain run replays those counts token by token and must give the same tokens and logprobs.
    const schedule = (i: number) => [4, 4, 2, 3, 3, 3, 4, 1, 4, 2][Math.floor(i / 3) % 10];
    const sampling = { temperature: 0, repetitionPenalty: 1.3, frequencyPenalty: 0.4, logitBias: { 101: 2.5 }, logprobs: 3 };
    let switches = 0;
    for (const prompt of prompts) {
      const base: GenerateOptions = { maxTokens: 48, sampling, stop: ["Lord"], stopOnEos: false };
      const spec = await collect(engine, prompt, { ...base, chooseChains: schedule, speculative: { draftTokens: 3 } });
      const counts = spec.map((t) => t.chains);
      switches += counts.filter((c, i) => i > 0 && c !== counts[i - 1]).length;
      const plain = await collect(engine, prompt, { ...base, chooseChains: (i) => counts[i] ?? counts[counts.length - 1] });
      assert.deepEqual(ids(spec), ids(plain));
      assert.deepEqual(spec.map((t) => t.text).join(""), plain.map((t) => t.text).join(""));
      spec.forEach((t, i) => {
        assert.ok(Math.abs(t.logprob! - plain[i].logprob!) < 1e-4, `logprob of token ${i}: ${t.logprob} vs ${plain[i].logprob}`);
        assert.deepEqual(t.topLogprobs!.map((x) => x.tokenId), plain[i].topLogprobs!.map((x) => x.tokenId));
      });
    }
    assert.ok(switches >= 3, `the schedule switched sizes mid-generation (${switches})`);
  });

  test("max_tokens and the context end are respected exactly", async () => {
    const prompt = prompts[0];
    for (const maxTokens of [1, 2, 3, 5, 9]) {
      const plain = ids(await collect(engine, prompt, { chains: 4, maxTokens, sampling: { temperature: 0 }, stopOnEos: false }));
      const spec = ids(await collect(engine, prompt, { chains: 4, maxTokens, sampling: { temperature: 0 }, stopOnEos: false, speculative: { draftTokens: 6 } }));
      assert.deepEqual(spec, plain, `max_tokens ${maxTokens}`);
    }
    const long = Array.from({ length: engine.info.maxPosition - 6 }, (_, i) => prompt[i % prompt.length]);
    const room = engine.info.maxPosition - long.length;
    const plain = ids(await collect(engine, long, { chains: 4, maxTokens: room, sampling: { temperature: 0 }, stopOnEos: false }));
    const spec = ids(await collect(engine, long, { chains: 4, maxTokens: room, sampling: { temperature: 0 }, stopOnEos: false, speculative: { draftTokens: 4 } }));
    assert.deepEqual(spec, plain);
    assert.equal(spec.length, room);
  });

  test("batched: speculating and plain rows at several sizes in one loop equal their solo runs", async () => {
    const jobs: GenerateOptions[] = [
      { chains: 4, maxTokens: 30, sampling: { temperature: 0 }, stopOnEos: false, speculative: { draftTokens: 4 } },
      { chains: 4, maxTokens: 30, sampling: { temperature: 0 }, stopOnEos: false },
      { chains: 3, maxTokens: 25, sampling: { temperature: 0 }, stopOnEos: false, speculative: { draftTokens: 2 } },
      { chains: 2, maxTokens: 35, sampling: { temperature: 0 }, stopOnEos: false, speculative: { draftTokens: 4 } },
      { chains: 4, maxTokens: 20, sampling: { temperature: 0 }, stopOnEos: false, speculative: { draftTokens: 4 } },
    ];
    const solo: number[][] = [];
    for (const [i, o] of jobs.entries()) solo.push(ids(await collect(engine, prompts[i % prompts.length], o)));
    const together = await Promise.all(jobs.map((o, i) => collect(engine, prompts[i % prompts.length], o)));
    together.forEach((t, i) => assert.deepEqual(ids(t), solo[i], `job ${i}`));
  });

  test("a cancelled speculating generation frees its row and keys/values", async () => {
    const controller = new AbortController();
    let n = 0;
    for await (const _ of engine.generate(prompts[1], { chains: 4, maxTokens: 200, sampling: { temperature: 0 }, stopOnEos: false, signal: controller.signal, speculative: { draftTokens: 5 } })) {
      if (++n === 3) controller.abort();
    }
    assert.ok(n >= 3 && n < 200);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(engine.kvBytesInUse(), 0);
    assert.deepEqual(engine.load, { running: 0, waiting: 0 });
    // and the engine still serves
    const after = await collect(engine, prompts[1], { chains: 4, maxTokens: 5, sampling: { temperature: 0 }, stopOnEos: false, speculative: { draftTokens: 5 } });
    assert.equal(after.length, 5);
  });
});

describe("speculative decoding on a small random model", () => {
  let engine: ColmEngine;
  before(async () => {
    engine = await loadModel(makeCheckpoint(TINY_EQUAL, 11), { threads: 1, prefixCacheBytes: 0 });
  });
  after(() => engine.close());

  test("sampled output keeps the target's distribution: χ² over 3-token continuations (top-k 4, T = 1)", async () => {
    const V = engine.info.vocabSize;
    const prompt = [5, 17, 42, 8];
    const k = 4;
    const sampling = { temperature: 1, topK: 4 };
    // Exact target probabilities of every 3-token continuation, from full forwards at k.
    const dist = async (tokens: number[]): Promise<Map<number, number>> => {
      const out = await fullForward(engine.runner, tokens, k);
      const row = out.logits.subarray((tokens.length - 1) * V, tokens.length * V);
      const top = Array.from(row.keys()).sort((a, b) => row[b] - row[a] || a - b).slice(0, 4);
      const z = top.reduce((a, i) => a + Math.exp(row[i] - row[top[0]]), 0);
      return new Map(top.map((i) => [i, Math.exp(row[i] - row[top[0]]) / z]));
    };
    const expected = new Map<string, number>();
    for (const [a, pa] of await dist(prompt)) {
      for (const [b, pb] of await dist([...prompt, a])) {
        for (const [c, pc] of await dist([...prompt, a, b])) expected.set(`${a},${b},${c}`, pa * pb * pc);
      }
    }
    const steps: StepStats[] = [];
    engine.onStep((s) => steps.push(s));
    const observed = new Map<string, number>();
    const draws = 2000;
    for (let seed = 0; seed < draws; seed++) {
      const toks = ids(await collect(engine, prompt, { chains: k, maxTokens: 3, sampling: { ...sampling, seed }, stopOnEos: false, speculative: { draftTokens: 2 } }));
      const key = toks.join(",");
      observed.set(key, (observed.get(key) ?? 0) + 1);
    }
    const verifies = steps.filter((s) => s.kind === "verify");
    assert.equal(verifies.length, draws, "every generation speculated its 2nd and 3rd tokens in one round");
    const rejected = verifies.reduce((a, s) => a + s.speculation!.rejected, 0);
    const accepted = verifies.reduce((a, s) => a + s.speculation!.accepted, 0);
    assert.ok(rejected > draws / 10 && accepted > draws / 10, `both paths taken often (accepted ${accepted}, rejected ${rejected})`);
    const { stat, df } = chiSquare(observed, expected, draws);
    assert.ok(df >= 10, `enough cells (${df + 1})`);
    assert.ok(stat < chiSquareCritical(df), `χ² ${stat.toFixed(1)} ≥ ${chiSquareCritical(df).toFixed(1)} (df ${df})`);
  });

  test("a seeded sampled request that asks for speculation is reproducible", async () => {
    const options: GenerateOptions = { chains: 4, maxTokens: 30, sampling: { temperature: 0.9, topP: 0.95, seed: 42 }, stopOnEos: false, speculative: { draftTokens: 3 } };
    const a = ids(await collect(engine, [1, 2, 3], options));
    const b = ids(await collect(engine, [1, 2, 3], options));
    assert.deepEqual(a, b);
  });

  test("keys/values after rounds with rejections equal a plain run's (length and contents)", async () => {
    const info = engine.info;
    const prompt = [3, 9, 27, 81, 50];
    const k = 4;
    const options: GenerateOptions = { chains: k, maxTokens: 24, sampling: { temperature: 0 }, stopOnEos: false };
    const run = async (speculate: boolean) => {
      const cache = newCache(engine.runner);
      const seq = new Sequence(prompt, { ...options, speculative: { draftTokens: 3 } }, info, engine.tokenizer);
      seq.prefilled((await prefillRow(engine.runner, cache, 0, prompt, k))!);
      seq.sampleNext(false);
      let rejected = 0;
      while (!seq.done) {
        const drafts = speculate ? seq.draftsFor(k, 1, cache.lengths[0]).tokens : 0;
        if (drafts > 0) {
          await speculativeRound(engine.runner, cache, [seq], 0, { chains: k, draftChains: 1, drafts, sampled: false }, (s) => (rejected += s.speculation?.rejected ?? 0));
        } else {
          const out = await engine.runner.stepRows([[seq.lastToken]], k, cache, [0], 0);
          cache.append(out.newKeys, out.newValues, 1, 0, 1);
          seq.logits = out.logits.slice();
        }
        if (seq.logits) seq.sampleNext(cache.lengths[0] >= info.maxPosition);
      }
      return { cache, tokens: [...seq.generated], rejected };
    };
    const plain = await run(false);
    const spec = await run(true);
    assert.deepEqual(spec.tokens, plain.tokens);
    assert.ok(spec.rejected > 0, "some drafts were rejected");
    assert.equal(spec.cache.lengths[0], plain.cache.lengths[0]);
    for (let l = 0; l < engine.runner.config.n_layers; l++) {
      for (const which of ["keys", "values"] as const) {
        const d = maxAbsDiff(spec.cache.read(l, which, 0), plain.cache.read(l, which, 0));
        assert.ok(d < 1e-5, `layer ${l} ${which}: max |Δ| ${d}`);
      }
    }
  });
});

describe("draft policy (auto)", () => {
  const costs = (perRowMs: number) => {
    const model = new CostModel({ nChains: 4 });
    for (let i = 0; i < 40; i++) {
      const B = i % 2 ? 8 : 1;
      model.observe({ kind: "decode", rows: B, tokens: B, chains: 1, ms: 0.4 + perRowMs * 0.25 * B });
      model.observe({ kind: "decode", rows: B, tokens: B, chains: 4, ms: 1 + perRowMs * B });
    }
    assert.ok(Math.abs(model.decodeStepMs(4, 16)! - (1 + 16 * perRowMs)) < 1e-6);
    return model;
  };

  test("speculates alone when drafts are cheap and often accepted, not at a large compute-bound batch", () => {
    const policy = new DraftPolicy({ mode: "auto", nChains: 4, costs: costs(0.05), maxDraft: 6 });
    for (let i = 0; i < 50; i++) policy.observe({ kind: "verify", rows: 1, tokens: 5, chains: 4, ms: 1.2, speculation: { draftChains: 1, drafted: 4, accepted: 4, rejected: 0, sampled: false } });
    assert.ok(policy.acceptance(1, 4) > 0.9);
    assert.equal(policy.acceptance(1, 4, true), 0.7, "sampled generations' acceptance is learnt apart (still the prior)");
    assert.ok(policy.choose({ chains: 4, draftChains: 1, batch: 1, sampled: false }) >= 3);
    const busy = new DraftPolicy({ mode: "auto", nChains: 4, costs: costs(2), maxDraft: 6 });
    assert.equal(busy.choose({ chains: 4, draftChains: 1, batch: 16, sampled: false }), 0);
  });

  test("a rarely accepted draft is not used", () => {
    const policy = new DraftPolicy({ mode: "auto", nChains: 4, costs: costs(0.05), maxDraft: 6 });
    for (let i = 0; i < 50; i++) policy.observe({ kind: "verify", rows: 1, tokens: 5, chains: 4, ms: 1.2, speculation: { draftChains: 1, drafted: 4, accepted: 0, rejected: 1, sampled: false } });
    assert.equal(policy.choose({ chains: 4, draftChains: 1, batch: 1, sampled: false }), 0);
  });

  test("modes and requests: off, on, explicit, and seeded sampling left alone by auto", () => {
    const model = costs(0.05);
    const auto = new DraftPolicy({ mode: "auto", nChains: 4, costs: model });
    assert.equal(typeof auto.optionsFor(undefined, { temperature: 0 })?.draftTokens, "function");
    assert.equal(auto.optionsFor(undefined, { temperature: 0.8, seed: 3 }), undefined);
    assert.equal(auto.optionsFor(false, { temperature: 0 }), undefined);
    assert.deepEqual(auto.optionsFor({ draftChains: 2, maxDraft: 5 }, { temperature: 0.8, seed: 3 }), { draftChains: 2, draftTokens: 5 });
    assert.equal(new DraftPolicy({ mode: "off", nChains: 4, costs: model }).optionsFor(undefined, { temperature: 0 }), undefined);
    assert.deepEqual(new DraftPolicy({ mode: "on", nChains: 4, costs: model, maxDraft: 3 }).optionsFor(undefined, { temperature: 0 }), { draftChains: 1, draftTokens: DEFAULT_MAX_DRAFT });
  });
});
