import { test } from "node:test";
import assert from "node:assert/strict";
import { Sampler, SamplingError, argmax, topN } from "../kernels/sampling.ts";
import { SeededRng } from "../kernels/rng.ts";
import type { SamplingOptions } from "../server/engine/types.ts";

const V = 1000;

/** Deterministic pseudo-random logits in [-4, 4). */
function randomLogits(seed: number, n = V): Float32Array {
  const rng = new SeededRng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.next() * 8 - 4;
  return out;
}

function draws(options: SamplingOptions, logits: Float32Array, count: number): number[] {
  const sampler = new Sampler(options, logits.length);
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push(sampler.sample(logits, [], []).tokenId);
  return out;
}

function histogram(ids: number[], n: number): number[] {
  const h = new Array<number>(n).fill(0);
  for (const id of ids) h[id]++;
  return h;
}

function softmax(logits: number[]): number[] {
  const m = Math.max(...logits);
  const e = logits.map((l) => Math.exp(l - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

test("rng: same seed → same sequence, values in [0, 1), seeds differ", () => {
  const a = new SeededRng(42);
  const b = new SeededRng(42);
  const c = new SeededRng(43);
  let differ = 0;
  for (let i = 0; i < 1000; i++) {
    const x = a.next();
    assert.equal(x, b.next());
    assert.ok(x >= 0 && x < 1);
    if (x !== c.next()) differ++;
  }
  assert.ok(differ > 990);
  assert.notEqual(new SeededRng().next(), new SeededRng().next());
});

test("greedy (temperature 0) is the argmax, ties to the lowest id", () => {
  for (let s = 0; s < 20; s++) {
    const logits = randomLogits(s);
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    assert.equal(new Sampler({ temperature: 0 }, V).sample(logits, [], []).tokenId, best);
  }
  const tied = new Float32Array([1, 3, 2, 3, 3]);
  assert.equal(new Sampler({ temperature: 0 }, 5).sample(tied, [], []).tokenId, 1);
  assert.equal(argmax(tied, 5), 1);
});

test("same seed → same tokens; different seeds differ over many draws", () => {
  const logits = randomLogits(7);
  const a = draws({ seed: 123 }, logits, 200);
  const b = draws({ seed: 123 }, logits, 200);
  const c = draws({ seed: 124 }, logits, 200);
  assert.deepEqual(a, b);
  assert.ok(a.filter((t, i) => t !== c[i]).length > 150);
  // Same with truncation on, which takes other code paths.
  const opts = { seed: 9, topK: 50, topP: 0.9, minP: 0.01, temperature: 0.8 };
  assert.deepEqual(draws(opts, logits, 100), draws(opts, logits, 100));
});

test("top-k = 1 and a tiny top-p are greedy", () => {
  for (let s = 0; s < 10; s++) {
    const logits = randomLogits(100 + s);
    const best = argmax(logits, V);
    for (const id of draws({ topK: 1, seed: s, temperature: 1.5 }, logits, 20)) assert.equal(id, best);
    for (const id of draws({ topP: 1e-6, seed: s, temperature: 1.5 }, logits, 20)) assert.equal(id, best);
  }
});

test("top-k keeps exactly the k most likely tokens", () => {
  const logits = randomLogits(5);
  const allowed = new Set(topN(logits, V, 10));
  const seen = new Set(draws({ topK: 10, seed: 1 }, logits, 3000));
  for (const id of seen) assert.ok(allowed.has(id), `token ${id} is outside the top 10`);
  assert.equal(seen.size, 10);
});

test("top-p keeps the smallest most-likely set holding p of the mass", () => {
  // probabilities ∝ 8, 4, 2, 1, 1 → 0.5, 0.25, 0.125, 0.0625, 0.0625
  const logits = new Float32Array([8, 4, 2, 1, 1].map(Math.log));
  const h = histogram(draws({ topP: 0.7, seed: 3 }, logits, 6000), 5);
  assert.ok(h[0] > 0 && h[1] > 0);
  assert.equal(h[2] + h[3] + h[4], 0);
  // Renormalised: 2/3 and 1/3.
  assert.ok(Math.abs(h[0] / 6000 - 2 / 3) < 0.03, `share of token 0: ${h[0] / 6000}`);
  const h2 = histogram(draws({ topP: 0.8, seed: 3 }, logits, 3000), 5);
  assert.ok(h2[2] > 0 && h2[3] + h2[4] === 0);
});

test("top-p over a large, flat vocabulary still finds the nucleus", () => {
  // Every token is equally likely: the nucleus for p = 0.5 is half of the vocabulary (lowest ids
  // on ties), far past the first probability cutoff.
  const flat = new Float32Array(2000);
  const ids = draws({ topP: 0.5, seed: 2 }, flat, 1500);
  assert.ok(ids.every((id) => id < 1000));
  assert.ok(new Set(ids).size > 600);
});

test("min-p drops tokens below min_p × the top probability", () => {
  // probabilities ∝ 10, 5, 1, 0.5 (relative to top: 1, 0.5, 0.1, 0.05)
  const logits = new Float32Array([10, 5, 1, 0.5].map(Math.log));
  const h = histogram(draws({ minP: 0.2, seed: 4 }, logits, 3000), 4);
  assert.ok(h[0] > 0 && h[1] > 0);
  assert.equal(h[2] + h[3], 0);
  const h2 = histogram(draws({ minP: 0.08, seed: 4 }, logits, 3000), 4);
  assert.ok(h2[2] > 0);
  assert.equal(h2[3], 0);
  // Combined with top-k, min-p filters the candidates.
  const h3 = histogram(draws({ minP: 0.2, topK: 3, seed: 4 }, logits, 3000), 4);
  assert.equal(h3[2] + h3[3], 0);
});

test("temperature sharpens (T < 1) and flattens (T > 1) the distribution as softmax(l / T) says", () => {
  const raw = [2, 1, 0, -1];
  const logits = new Float32Array(raw);
  const n = 20000;
  for (const T of [0.5, 1, 2]) {
    const h = histogram(draws({ temperature: T, seed: 11 }, logits, n), 4);
    const expected = softmax(raw.map((l) => l / T));
    for (let i = 0; i < 4; i++) {
      // 4.5 standard deviations of a binomial share.
      const sd = Math.sqrt((expected[i] * (1 - expected[i])) / n);
      assert.ok(Math.abs(h[i] / n - expected[i]) < 4.5 * sd + 1e-3, `T=${T} token ${i}: ${h[i] / n} vs ${expected[i]}`);
    }
  }
  const sharp = histogram(draws({ temperature: 0.5, seed: 1 }, logits, 5000), 4)[0];
  const flat = histogram(draws({ temperature: 2, seed: 1 }, logits, 5000), 4)[0];
  assert.ok(sharp > flat);
});

test("logit_bias: +100 forces a token, -100 bans one", () => {
  const logits = randomLogits(21);
  for (const id of draws({ logitBias: { 17: 100 }, seed: 5 }, logits, 50)) assert.equal(id, 17);
  assert.equal(new Sampler({ temperature: 0, logitBias: { 17: 100 } }, V).sample(logits, [], []).tokenId, 17);
  const best = argmax(logits, V);
  assert.notEqual(new Sampler({ temperature: 0, logitBias: { [best]: -100 } }, V).sample(logits, [], []).tokenId, best);
  const two = new Float32Array([0, 0]);
  for (const id of draws({ logitBias: { 0: -100 }, seed: 6 }, two, 200)) assert.equal(id, 1);
  assert.throws(() => new Sampler({ logitBias: { [V]: 1 } }, V), SamplingError);
});

test("repetition penalty divides positive logits and multiplies negative ones (prompt + generated)", () => {
  const logits = new Float32Array([3, 2.5, -1, -1.2]);
  const greedy = (opts: SamplingOptions, prompt: number[], generated: number[]) =>
    new Sampler({ temperature: 0, logprobs: 4, ...opts }, 4).sample(logits, prompt, generated);
  // Token 0 in the prompt: 3 / 2 = 1.5 < 2.5 → token 1 wins.
  assert.equal(greedy({ repetitionPenalty: 2 }, [0], []).tokenId, 1);
  // Token 0 generated: same effect.
  assert.equal(greedy({ repetitionPenalty: 2 }, [], [0]).tokenId, 1);
  // 1.1: 3 / 1.1 ≈ 2.73 > 2.5 → token 0 still wins.
  assert.equal(greedy({ repetitionPenalty: 1.1 }, [0], []).tokenId, 0);
  // Negative logits get more negative: -1 · 1.5 = -1.5 < -1.2 → token 3 outranks token 2.
  const r = greedy({ repetitionPenalty: 1.5 }, [0, 1, 2], []);
  const order = r.topLogprobs!.map((t) => t.tokenId);
  assert.deepEqual(order, [0, 1, 3, 2]);
  // Counted once per distinct token: logit ratio between 0 and 1 is unchanged when both repeat.
  const lp = greedy({ repetitionPenalty: 2 }, [0, 0, 0, 1], []).topLogprobs!;
  const byId = new Map(lp.map((t) => [t.tokenId, t.logprob]));
  assert.ok(Math.abs(byId.get(0)! - byId.get(1)! - (1.5 - 1.25)) < 1e-5);
});

test("presence and frequency penalties subtract as OpenAI's formula says, generated tokens only", () => {
  const logits = new Float32Array([3, 2.5, 2, 0]);
  const lps = (opts: SamplingOptions, prompt: number[], generated: number[]) => {
    const r = new Sampler({ temperature: 0, logprobs: 4, ...opts }, 4).sample(logits, prompt, generated);
    return { id: r.tokenId, lp: new Map(r.topLogprobs!.map((t) => [t.tokenId, t.logprob])) };
  };
  // Presence: once per distinct generated token. 3 - 1 = 2 < 2.5.
  assert.equal(lps({ presencePenalty: 1 }, [], [0, 0, 0]).id, 1);
  // Prompt tokens do not count.
  assert.equal(lps({ presencePenalty: 1 }, [0], []).id, 0);
  // Frequency: count · penalty. 3 - 3 · 0.2 = 2.4 < 2.5; 3 - 2 · 0.2 = 2.6 > 2.5.
  assert.equal(lps({ frequencyPenalty: 0.2 }, [], [0, 0, 0]).id, 1);
  assert.equal(lps({ frequencyPenalty: 0.2 }, [], [0, 0]).id, 0);
  // Both: token 0 adjusted to 3 - 2·0.25 - 0.5 = 2.0, token 1 to 2.5 - 0.25 - 0.5 = 1.75.
  const both = lps({ frequencyPenalty: 0.25, presencePenalty: 0.5 }, [], [0, 1, 0]);
  assert.ok(Math.abs(both.lp.get(0)! - both.lp.get(1)! - 0.25) < 1e-5);
  // Negative penalties encourage repetition.
  assert.equal(lps({ presencePenalty: -1.5 }, [], [2]).id, 2);
});

test("penalty counts are incremental across calls and recounted when generated shrinks", () => {
  const logits = new Float32Array([3, 2.5, 2, 0]);
  const sampler = new Sampler({ temperature: 0, frequencyPenalty: 0.2 }, 4);
  const prompt = [3];
  const generated: number[] = [];
  const picks: number[] = [];
  for (let i = 0; i < 6; i++) {
    const id = sampler.sample(logits, prompt, generated).tokenId;
    generated.push(id);
    picks.push(id);
  }
  // Fresh samplers per step must agree with the incremental one.
  const fresh: number[] = [];
  for (let i = 0; i < 6; i++) fresh.push(new Sampler({ temperature: 0, frequencyPenalty: 0.2 }, 4).sample(logits, prompt, picks.slice(0, i)).tokenId);
  assert.deepEqual(picks, fresh);
  assert.ok(new Set(picks).size > 1);
  assert.equal(sampler.sample(logits, prompt, []).tokenId, 0);
});

test("logprobs: log-softmax of the biased logits, sums to 1, top-N sorted, independent of temperature", () => {
  const logits = randomLogits(31);
  const sampler = new Sampler({ logprobs: 5, seed: 1, temperature: 0.3, topK: 3 }, V);
  const r = sampler.sample(logits, [], []);
  assert.ok(r.logprob !== undefined && r.logprob <= 0);
  const top = r.topLogprobs!;
  assert.equal(top.length, 5);
  for (let i = 1; i < top.length; i++) assert.ok(top[i - 1].logprob >= top[i].logprob);
  assert.deepEqual(top.map((t) => t.tokenId), topN(logits, V, 5));
  // Reference log-sum-exp in double precision.
  let m = -Infinity;
  for (const l of logits) m = Math.max(m, l);
  let s = 0;
  for (const l of logits) s += Math.exp(l - m);
  const lse = m + Math.log(s);
  // The chosen token's logprob equals log-softmax at that id, under the model (T = 1) distribution.
  assert.ok(Math.abs(r.logprob! - (logits[r.tokenId] - lse)) < 1e-5);
  // A 20-token vocabulary with top-20: exp(logprob) over the whole vocabulary sums to 1.
  const twenty = randomLogits(32, 20);
  const whole = new Sampler({ logprobs: 20, seed: 3, presencePenalty: 0.7, repetitionPenalty: 1.3 }, 20).sample(twenty, [1, 2], [3, 3]);
  assert.equal(new Set(whole.topLogprobs!.map((t) => t.tokenId)).size, 20);
  assert.ok(Math.abs(whole.topLogprobs!.reduce((acc, t) => acc + Math.exp(t.logprob), 0) - 1) < 1e-6);
  // Five tokens with a bias.
  const small = new Float32Array([0.3, -2, 5, 1, 1]);
  const all = new Sampler({ logprobs: 5, temperature: 0, logitBias: { 1: 3 } }, 5).sample(small, [], []);
  const sum = all.topLogprobs!.reduce((s, t) => s + Math.exp(t.logprob), 0);
  assert.ok(Math.abs(sum - 1) < 1e-6);
  assert.equal(all.topLogprobs![0].tokenId, 2);
  // Bias is included: token 1 (-2 + 3 = 1) ties tokens 3 and 4, ordered by id.
  assert.deepEqual(all.topLogprobs!.map((t) => t.tokenId), [2, 1, 3, 4, 0]);
  // logprobs 0: the chosen token's logprob, no alternatives.
  const zero = new Sampler({ logprobs: 0, temperature: 0 }, 5).sample(small, [], []);
  assert.deepEqual(zero.topLogprobs, []);
  assert.ok(zero.logprob! < 0);
  // Not requested: absent.
  assert.equal(new Sampler({ temperature: 0 }, 5).sample(small, [], []).logprob, undefined);
});

test("invalid options are rejected with SamplingError", () => {
  assert.throws(() => new Sampler({ temperature: -1 }, 10), SamplingError);
  assert.throws(() => new Sampler({ topP: 0 }, 10), SamplingError);
  assert.throws(() => new Sampler({ topK: 1.5 }, 10), SamplingError);
  assert.throws(() => new Sampler({ logprobs: 21 }, 10), SamplingError);
  assert.throws(() => new Sampler({}, 10).sample(new Float32Array(5), [], []), SamplingError);
});

test("vocab-32000 sampling paths run and agree with greedy where they must", () => {
  const logits = randomLogits(77, 32000);
  const best = argmax(logits, 32000);
  const sampler = new Sampler({ topK: 40, topP: 0.95, minP: 0.05, temperature: 0.7, seed: 1, logprobs: 3 }, 32000);
  const allowed = new Set(topN(logits, 32000, 40));
  for (let i = 0; i < 20; i++) assert.ok(allowed.has(sampler.sample(logits, [1, 2, 3], []).tokenId));
  assert.equal(new Sampler({ topP: 1e-9, seed: 2 }, 32000).sample(logits, [], []).tokenId, best);
});
