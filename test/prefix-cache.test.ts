// Automatic prefix caching on the real engine: a cached prefix (chain 1's keys/values, whatever
// size wrote it) serves every chain count, and a hit never changes what a request gets: greedy
// tokens identical and logprobs within float tolerance of the same engine with no cache.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { KvCache } from "../kernels/kv-cache.ts";
import { loadModel, type ColmEngine } from "../server/engine/engine.ts";
import { PrefixCache } from "../server/engine/prefix-cache.ts";
import type { GenerateOptions, GenerationSummary, StepStats } from "../server/engine/types.ts";
import { TINY_EQUAL, makeCheckpoint } from "./helpers/checkpoints.ts";

interface Run {
  ids: number[];
  logprobs: number[];
  chains: number[];
  summary: GenerationSummary;
}

async function run(engine: ColmEngine, prompt: number[], options: Partial<GenerateOptions> = {}, onToken?: (i: number) => void): Promise<Run> {
  const out: Omit<Run, "summary"> = { ids: [], logprobs: [], chains: [] };
  const it = engine.generate(prompt, { maxTokens: 8, sampling: { temperature: 0, logprobs: 1 }, stopOnEos: false, ...options });
  for (let step = await it.next(); ; step = await it.next()) {
    if (step.done) return { ...out, summary: step.value };
    out.ids.push(step.value.tokenId);
    out.logprobs.push(step.value.logprob!);
    out.chains.push(step.value.chains);
    onToken?.(out.ids.length);
  }
}

/** Same tokens and chain counts; logprobs within 1e-5. */
function assertSame(got: Run, want: Run, label: string): void {
  assert.deepEqual(got.ids, want.ids, `${label}: tokens`);
  assert.deepEqual(got.chains, want.chains, `${label}: chains`);
  got.logprobs.forEach((lp, i) => assert.ok(Math.abs(lp - want.logprobs[i]) < 1e-5, `${label}: logprob ${i}: ${lp} vs ${want.logprobs[i]}`));
}

const prompt = (seed: number, n: number): number[] => Array.from({ length: n }, (_, j) => (seed * 13 + j * 7 + 3) % 97);
const BLOCK = 8;

describe("prefix cache (engine)", () => {
  let dir: string;
  let cached: ColmEngine;
  let plain: ColmEngine;
  before(async () => {
    dir = makeCheckpoint(TINY_EQUAL, 29);
    cached = await loadModel(dir, { threads: 1, maxBatch: 4, prefixBlockTokens: BLOCK });
    plain = await loadModel(dir, { threads: 1, maxBatch: 4, prefixCacheBytes: 0 });
  });
  after(async () => {
    await cached.close();
    await plain.close();
  });

  test("miss, full hit (all but the last prompt token), partial hit; each output is the uncached one", async () => {
    const p = prompt(1, 40);
    const first = await run(cached, p, { chains: 2 });
    assert.equal(first.summary.cachedTokens, 0, "miss");
    const again = await run(cached, p, { chains: 2 });
    assert.equal(again.summary.cachedTokens, 39, "5 blocks, all but the last token reused");
    const partial = [...p.slice(0, 20), ...prompt(2, 15)];
    const third = await run(cached, partial, { chains: 2 });
    assert.equal(third.summary.cachedTokens, 16, "2 whole blocks in common");
    for (const [r, q] of [[first, p], [again, p], [third, partial]] as const) assertSame(r, await run(plain, q, { chains: 2 }), `prompt of ${q.length}`);
  });

  test("cross-size reuse: written at k=1 and read at k=4, written at k=4 and read at k=1 and k=3, and under a switch schedule", async () => {
    for (const [write, reads] of [[1, [4, 2]], [4, [1, 3]]] as const) {
      const p = prompt(10 + write, 48);
      await run(cached, p, { chains: write, maxTokens: 3 });
      for (const k of reads) {
        const r = await run(cached, p, { chains: k });
        assert.equal(r.summary.cachedTokens, 47, "6 blocks, all but the last token");
        assertSame(r, await run(plain, p, { chains: k }), `written at ${write}, read at ${k}`);
      }
    }
    const schedule = (i: number) => [4, 4, 1, 1, 2, 3, 4, 1][i % 8];
    const p = prompt(11, 48);
    const r = await run(cached, p, { chooseChains: schedule });
    assert.equal(r.summary.cachedTokens, 47);
    assertSame(r, await run(plain, p, { chooseChains: schedule }), "switching");
  });

  test("turn 2 of a conversation reuses turn 1's prompt and its generated tokens", async () => {
    const turn1 = prompt(20, 30);
    const answer = await run(cached, turn1, { chains: 3, maxTokens: 20 });
    const turn2 = [...turn1, ...answer.ids, ...prompt(21, 5)];
    const r = await run(cached, turn2, { chains: 3 });
    // The row held turn1 + 19 generated tokens (the last sampled token was never fed): 48 tokens, 6 blocks.
    assert.equal(r.summary.cachedTokens, 48);
    assertSame(r, await run(plain, turn2, { chains: 3 }), "turn 2");
  });

  test("salts isolate: a block is shared only between requests with the same salt", async () => {
    const p = prompt(30, 33);
    await run(cached, p, { cacheSalt: "tenant-a", maxTokens: 1 });
    assert.equal((await run(cached, p, { cacheSalt: "tenant-b", maxTokens: 1 })).summary.cachedTokens, 0);
    assert.equal((await run(cached, p, { maxTokens: 1 })).summary.cachedTokens, 0, "no salt is its own tenant");
    assert.equal((await run(cached, p, { cacheSalt: "tenant-a", maxTokens: 1 })).summary.cachedTokens, 32);
  });

  test("cache: false neither reads nor writes; prompt logprobs read nothing but write", async () => {
    const p = prompt(40, 33);
    const before = cached.prefixCache!.stats();
    await run(cached, p, { cache: false, maxTokens: 2 });
    assert.equal(cached.prefixCache!.stats().storedBlocks, before.storedBlocks, "nothing stored");
    let promptLps: unknown;
    const withLps = await run(cached, p, { promptLogprobs: 1, onPromptLogprobs: (l) => (promptLps = l), maxTokens: 2 });
    assert.equal(withLps.summary.cachedTokens, 0);
    assert.ok(cached.prefixCache!.stats().storedBlocks > before.storedBlocks, "prompt-logprobs request stored its blocks");
    let again: unknown;
    const second = await run(cached, p, { promptLogprobs: 1, onPromptLogprobs: (l) => (again = l), maxTokens: 2 });
    assert.equal(second.summary.cachedTokens, 0, "still every prompt position at k");
    assert.deepEqual(again, promptLps);
    assert.equal((await run(cached, p, { maxTokens: 1 })).summary.cachedTokens, 32);
  });

  test("a hit inside a batched step: a cached prompt joins rows that are decoding, everyone gets their solo output", async () => {
    const shared = prompt(50, 45);
    await run(cached, shared, { maxTokens: 1 });
    const steps: StepStats[] = [];
    cached.onStep((s) => steps.push(s));
    const long = prompt(51, 20);
    const running = run(cached, long, { chains: 4, maxTokens: 30 });
    while (cached.load.running < 1) await new Promise((r) => setImmediate(r));
    const hit = await run(cached, shared, { chains: 4, maxTokens: 6 });
    const other = await running;
    assert.equal(hit.summary.cachedTokens, 40, "5 whole blocks of the 45-token prompt");
    assertSame(hit, await run(plain, shared, { chains: 4, maxTokens: 6 }), "the hit");
    assertSame(other, await run(plain, long, { chains: 4, maxTokens: 30 }), "the row decoding beside it");
    assert.ok(steps.some((s) => s.kind === "decode" && s.rows >= 2), "they shared decode steps");
    assert.ok(steps.some((s) => s.kind === "prefix_copy" && s.tokens === 40));
  });

  test("cancelling one of two sequences sharing a cached prefix leaves the other and the cache intact", async () => {
    const system = prompt(60, 40);
    await run(cached, system, { maxTokens: 1 });
    const a = [...system, ...prompt(61, 6)];
    const b = [...system, ...prompt(62, 6)];
    const controller = new AbortController();
    const [ra, rb] = await Promise.all([
      run(cached, a, { chains: 4, maxTokens: 40, signal: controller.signal }, (i) => i === 2 && controller.abort()),
      run(cached, b, { chains: 1, maxTokens: 12 }),
    ]);
    assert.equal(ra.summary.finishReason, "cancelled");
    assert.equal(ra.summary.cachedTokens, 40);
    assert.equal(rb.summary.cachedTokens, 40);
    assertSame(rb, await run(plain, b, { chains: 1, maxTokens: 12 }), "the survivor");
    const rc = await run(cached, a, { chains: 3 });
    assert.ok(rc.summary.cachedTokens >= 40, "the cancelled sequence's blocks are still cached");
    assertSame(rc, await run(plain, a, { chains: 3 }), "a later hit");
    assert.equal(cached.prefixCache!.stats().heldBlocks, 0, "nothing held once every sequence left");
    assert.equal(cached.kvBytesInUse(), 0);
  });

  test("eviction under a small budget while sequences run: the cache never exceeds it and outputs do not change", async () => {
    const info = cached.info;
    const limit = 5 * BLOCK * info.kvBytesPerToken;
    const small = await loadModel(dir, { threads: 1, maxBatch: 3, prefixBlockTokens: BLOCK, prefixCacheBytes: limit });
    try {
      let peak = 0;
      const watch = () => (peak = Math.max(peak, small.prefixCache!.bytes));
      const prompts = [0, 1, 2, 3, 4, 5].map((i) => prompt(70 + i, 30 + i));
      const results = await Promise.all(prompts.map((p, i) => run(small, p, { chains: (i % 4) + 1, maxTokens: 10 }, watch)));
      const s = small.prefixCache!.stats();
      assert.ok(peak <= limit && s.bytes <= limit, `peak ${peak} ≤ ${limit}`);
      assert.ok(s.evictedBlocks > 0, "blocks were evicted");
      for (const [i, p] of prompts.entries()) assertSame(results[i], await run(plain, p, { chains: (i % 4) + 1, maxTokens: 10 }), `prompt ${i}`);
      // The most recent prompt is still cached, so a repeat hits.
      const last = prompts[prompts.length - 1];
      const again = await run(small, last, { chains: 2 });
      assert.ok(again.summary.cachedTokens > 0);
      assertSame(again, await run(plain, last, { chains: 2 }), "hit after evictions");
    } finally {
      await small.close();
    }
  });
});

describe("PrefixCache", () => {
  const layers = 2;
  const kvHeads = 1;
  const hd = 2;
  const bytesPerToken = 2 * layers * kvHeads * hd * 4;
  /** A one-row KvCache holding `tokens`, each token's keys/values its id (so copies can be checked). */
  function filled(tokens: number[]): KvCache {
    const kv = new KvCache(layers, kvHeads, hd, 8, 2);
    const per = (v: number) => Array.from({ length: layers }, () => new Float32Array(kvHeads * tokens.length * hd).map((_, i) => tokens[Math.floor(i / hd)] + v));
    kv.append(per(0), per(0.5), tokens.length, 0, 1);
    return kv;
  }

  test("copies exactly the cached keys/values into a row, all but the last prompt token", () => {
    const cache = new PrefixCache(Infinity, bytesPerToken, 4);
    const tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9];
    const kv = filled(tokens);
    const chain = cache.store(tokens, 9, undefined, kv, 0);
    assert.equal(chain.length, 2);
    cache.release(chain);
    const blocks = cache.reuse(tokens.slice(0, 8), undefined, 7, kv, 1);
    assert.equal(blocks.length, 2);
    assert.equal(kv.lengths[1], 7);
    for (let l = 0; l < layers; l++) {
      assert.deepEqual(kv.read(l, "keys", 1), kv.read(l, "keys", 0).subarray(0, 7 * hd));
      assert.deepEqual(kv.read(l, "values", 1), kv.read(l, "values", 0).subarray(0, 7 * hd));
    }
    assert.deepEqual({ ...cache.stats(), limitBytes: 0 }, { ...cache.stats(), limitBytes: 0, blocks: 2, heldBlocks: 2, hitTokens: 7, queryTokens: 8 });
  });

  test("least recently used leaves go first; held blocks stay under the cache's own limit; admission may take anything", () => {
    const block = 4 * bytesPerToken;
    const cache = new PrefixCache(3 * block, bytesPerToken, 4);
    const a = [1, 1, 1, 1, 2, 2, 2, 2];
    const b = [3, 3, 3, 3];
    const c = [5, 5, 5, 5, 6, 6, 6, 6];
    cache.release(cache.store(a, 8, undefined, filled(a), 0));
    const heldB = cache.store(b, 4, undefined, filled(b), 0); // held by a running sequence
    assert.equal(cache.stats().blocks, 3);
    cache.release(cache.store(c, 8, undefined, filled(c), 0)); // needs 2 blocks: a's leaf, then a's root, go; b is held
    assert.equal(cache.cachedTokens(a, undefined, 8), 0);
    assert.equal(cache.cachedTokens(b, undefined, 4), 4);
    assert.equal(cache.cachedTokens(c, undefined, 8), 8);
    assert.equal(cache.stats().evictedBlocks, 2);
    cache.limitBy(() => 0);
    assert.equal(cache.store([7, 7, 7, 7], 4, undefined, filled([7, 7, 7, 7]), 0).length, 0, "no headroom: nothing stored");
    assert.equal(cache.bytes, block, "the free blocks went trying; the held one stays");
    assert.equal(cache.evict(block), block, "admission takes a held block too");
    assert.equal(cache.bytes, 0);
    cache.release(heldB);
    assert.equal(cache.stats().heldBlocks, 0);
  });
});
