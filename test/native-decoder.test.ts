// The native kernel (kernels/native/colm_decode.cc), which runs quantized models, against
// onnxruntime's graph at the same precision, and the exactness it promises: a row's result does not
// depend on its batch, and a call of T tokens (a verification step, a prompt in passes) equals T
// single steps, bit for bit. The spec §5 invariants and the reference forward run on it too
// (spec-invariants and graph-parity, labels "q8" and "q4").
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { ColmConfigJson } from "../models/config.ts";
import { loadCheckpoint } from "../models/checkpoint.ts";
import { normGainsOf } from "../models/quantized.ts";
import { quantizeCheckpoint } from "../kernels/quantize.ts";
import { KvCache } from "../kernels/kv-cache.ts";
import { NativeDecoder, compileAddon, nativeAddon, weightsInMemory } from "../kernels/native-decoder.ts";
import { ModelRunner, type StepResult } from "../ops/runner.ts";
import { loadModel } from "../server/engine/engine.ts";
import type { GenerateOptions } from "../server/engine/types.ts";
import { TINY_EQUAL, TINY_UNEQUAL, makeCheckpoint, tempDir } from "./helpers/checkpoints.ts";
import { TEST_BLOCK_SIZE, maxAbsDiff, range } from "./helpers/run.ts";

/** Head width 32 (the kernel's vector attention), chains one block wide, FFN prefixes unaligned to groups. */
const TINY_WIDE: ColmConfigJson = { ...TINY_EQUAL, vocab_size: 300, head_dim: 32, chain_heads: [1, 1, 2], kv_heads: 1, ffn_chain_dims: [32, 64, 96] };
const MODELS = [["equal chains", TINY_EQUAL, TEST_BLOCK_SIZE], ["unequal chains, tied head", TINY_UNEQUAL, TEST_BLOCK_SIZE], ["head width 32, block 32", TINY_WIDE, 32]] as const;
const PROMPT = range(20, 3).map((t) => (t * 7) % 97);

const available = "addon" in nativeAddon();
const why = available ? undefined : `native kernel unavailable: ${"reason" in nativeAddon() ? (nativeAddon() as { reason: string }).reason : ""}`;

/** PROMPT prefilled at chain 1 in a fresh cache, row b without its last b tokens. */
async function prefilled(r: ModelRunner, rows = 1): Promise<KvCache> {
  const c = r.config;
  const cache = new KvCache(c.n_layers, c.kv_heads, c.head_dim, 64, rows);
  for (let b = 0; b < rows; b++) {
    const prompt = PROMPT.slice(0, PROMPT.length - b); // rows of different lengths
    const out = await r.stepRows([prompt], 1, cache, [], b);
    cache.append(out.newKeys, out.newValues, prompt.length, b, 1);
  }
  return cache;
}

const argmax = (x: Float32Array): number => x.indexOf(x.reduce((m, v) => Math.max(m, v), -Infinity));

for (const bits of [8, 4] as const) {
  for (const [label, cfg, blockSize] of MODELS) {
    describe(`native kernel, q${bits}, ${label}`, { skip: why }, () => {
      let native: ModelRunner;
      let ort: ModelRunner;
      before(async () => {
        const ckpt = quantizeCheckpoint(loadCheckpoint(makeCheckpoint(cfg, 5)), bits, blockSize);
        native = await ModelRunner.create(ckpt, { threads: 2, reusedOutputFloats: 0 });
        ort = await ModelRunner.create(ckpt, { threads: 1, reusedOutputFloats: 0, native: "off" });
        assert.ok(native.native, "a quantized model gets the native kernel");
        assert.equal(ort.native, undefined);
      });
      after(async () => {
        await native.close();
        await ort.close();
      });

      test("a prompt and decode steps match onnxruntime at every chain count (int8 activations: 5% of the largest logit)", async () => {
        const V = native.config.vocab_size;
        for (let k = 1; k <= native.config.nChains; k++) {
          const [a, b] = [await prefilled(native), await prefilled(ort)];
          for (let l = 0; l < native.config.n_layers; l++) {
            const [ka, kb] = [a.keyBuffer(l), b.keyBuffer(l)];
            assert.ok(maxAbsDiff(ka, kb) <= 0.05 * Math.max(1, ...Array.from(kb, Math.abs)), `prompt keys, layer ${l}`);
          }
          let token = 11;
          for (let s = 0; s < 6; s++) {
            const x = await native.step([token], k, a, [0]);
            const y = await ort.step([token], k, b, [0]);
            const tol = 0.05 * y.logits.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
            assert.ok(maxAbsDiff(x.logits, y.logits) <= tol, `k=${k} step ${s}: logits differ by ${maxAbsDiff(x.logits, y.logits)} > ${tol}`);
            for (let l = 0; l < x.newKeys.length; l++) assert.ok(maxAbsDiff(x.newKeys[l], y.newKeys[l]) <= 0.05 * Math.max(1, ...Array.from(y.newKeys[l], Math.abs)), `k=${k} layer ${l} keys`);
            const sorted = Float32Array.from(y.logits).sort();
            if (sorted[V - 1] - sorted[V - 2] > 2 * tol) assert.equal(argmax(x.logits), argmax(y.logits), `k=${k} step ${s}: greedy token differs`);
            a.append(x.newKeys, x.newValues, 1);
            b.append(y.newKeys, y.newValues, 1);
            token = argmax(y.logits);
          }
        }
      });

      test("a row's result does not depend on its batch: three rows of different lengths and sizes, bit for bit", async () => {
        const n = native.config.nChains;
        const chains = [n, 1, Math.max(1, n - 1)];
        const together = await prefilled(native, 3);
        const batch = await native.stepRows([[4], [9], [13]], chains, together, [0, 1, 2]);
        const batchKeys = batch.newKeys.map((k) => k.slice()); // the runner's reused buffers: the next call overwrites them
        const V = native.config.vocab_size;
        for (let b = 0; b < 3; b++) {
          const alone = await prefilled(native, 3);
          const one = await native.stepRows([[[4], [9], [13]][b]], chains[b], alone, [0], b);
          assert.deepEqual(batch.logits.subarray(b * V, (b + 1) * V), one.logits, `row ${b} logits`);
          const kvSize = one.newKeys[0].length;
          for (let l = 0; l < one.newKeys.length; l++) assert.deepEqual(batchKeys[l].subarray(b * kvSize, (b + 1) * kvSize), one.newKeys[l], `row ${b} layer ${l} keys`);
        }
      });

      test("the thread count changes no bit: one thread and two give the same prompt and decode logits", async () => {
        const ckpt = quantizeCheckpoint(loadCheckpoint(makeCheckpoint(cfg, 5)), bits, blockSize);
        const one = await ModelRunner.create(ckpt, { threads: 1, reusedOutputFloats: 0 });
        try {
          const n = native.config.nChains;
          const [a, b] = [await prefilled(native), await prefilled(one)];
          for (let l = 0; l < native.config.n_layers; l++) assert.deepEqual(a.keyBuffer(l), b.keyBuffer(l), `prompt keys, layer ${l}`);
          const [x, y] = [await native.step([7, 3], n, a, [0, 1]), await one.step([7, 3], n, b, [0, 1])];
          assert.deepEqual(x.logits, y.logits);
        } finally {
          await one.close();
        }
      });

      test("calls in flight at once (each on a worker thread) run one at a time and each gets its own outputs", async () => {
        const n = native.config.nChains;
        const [a, b] = [await prefilled(native), await prefilled(native)];
        const [x, y] = await Promise.all([native.step(range(6, 2), n, a, range(6)), native.step(range(6, 2), n, b, range(6))]);
        assert.deepEqual(x.logits, y.logits);
        for (let l = 0; l < x.newKeys.length; l++) assert.deepEqual(x.newKeys[l], y.newKeys[l], `layer ${l}`);
        assert.notEqual(x.newKeys[0].buffer, y.newKeys[0].buffer, "the second call does not share the first one's reused buffers");
      });

      test("a verification step of T tokens equals T single steps, bit for bit (speculative decoding stays exact)", async () => {
        const n = native.config.nChains;
        const tokens = [21, 8, 33, 5];
        const once = await native.step(tokens, n, await prefilled(native), range(tokens.length));
        const cache = await prefilled(native);
        const V = native.config.vocab_size;
        for (const [t, token] of tokens.entries()) {
          const one: StepResult = await native.step([token], n, cache, [0]);
          assert.deepEqual(once.logits.subarray(t * V, (t + 1) * V), one.logits, `token ${t}`);
          cache.append(one.newKeys, one.newValues, 1);
        }
      });

      test("a long call runs in passes of 128 rows: two rows of 90 tokens equal the same tokens one by one, bit for bit", async () => {
        const c = native.config;
        const rows = [range(90, 1).map((t) => (t * 13) % c.vocab_size), range(90, 1).map((t) => (t * 29) % c.vocab_size)];
        const together = new KvCache(c.n_layers, c.kv_heads, c.head_dim, 96, 2);
        const all = await native.stepRows(rows, [c.nChains, 1], together, range(180));
        const V = c.vocab_size;
        for (const [b, row] of rows.entries()) {
          const cache = new KvCache(c.n_layers, c.kv_heads, c.head_dim, 96, 1);
          for (const [t, token] of row.entries()) {
            const one = await native.step([token], b === 0 ? c.nChains : 1, cache, [0]);
            assert.deepEqual(all.logits.subarray((b * 90 + t) * V, (b * 90 + t + 1) * V), one.logits, `row ${b} token ${t}`);
            cache.append(one.newKeys, one.newValues, 1);
          }
        }
      });
    });
  }
}

describe("native kernel: the portable path (a CPU without AVX-512 VNNI)", { skip: why }, () => {
  test("built for any x86-64, it gives the fast path's logits (int8 activations: 5% of the largest) and says it is not fast", { timeout: 120_000 }, async () => {
    const portable = compileAddon(join(tempDir("colm-portable-"), "colm_decode.node"), true);
    assert.equal(portable.fast, false);
    for (const [label, cfg, blockSize] of MODELS) {
      for (const bits of [8, 4] as const) {
        const ckpt = quantizeCheckpoint(loadCheckpoint(makeCheckpoint(cfg, 5)), bits, blockSize);
        const weights = weightsInMemory(ckpt.quantized!, normGainsOf(ckpt.weights));
        const decoders = [NativeDecoder.create(ckpt.config, weights, 2), NativeDecoder.create(ckpt.config, weights, 1, portable)];
        const c = ckpt.config;
        const outs = await Promise.all(decoders.map((d) => {
          assert.ok(d instanceof NativeDecoder);
          const kv = () => Array.from({ length: c.n_layers }, () => new Float32Array(2 * PROMPT.length * c.kv_heads * c.head_dim));
          const empty = Array.from({ length: c.n_layers }, () => new Float32Array(2 * c.kv_heads * c.head_dim));
          return d.step({ B: 2, T: PROMPT.length, tokens: Int32Array.from([...PROMPT, ...PROMPT.slice().reverse()]), chains: Int32Array.of(c.nChains, 1), past: Int32Array.of(0, 0), pastKeys: empty, pastValues: empty, capacity: 1, logitRows: Int32Array.from(range(2 * PROMPT.length)), newKeys: kv(), newValues: kv() });
        }));
        const tol = 0.05 * outs[0].logits.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
        assert.ok(maxAbsDiff(outs[0].logits, outs[1].logits) <= tol, `${label} q${bits}: ${maxAbsDiff(outs[0].logits, outs[1].logits)} > ${tol}`);
      }
    }
  });
});

describe("native kernel: where it is used", { skip: why }, () => {
  test("a float32 model, or float32 compute on quantized weights, runs on onnxruntime alone", async () => {
    const ckpt = loadCheckpoint(makeCheckpoint(TINY_EQUAL, 5));
    const f32 = await ModelRunner.create(ckpt, { threads: 1 });
    const level0 = await ModelRunner.create(quantizeCheckpoint(ckpt, 4, TEST_BLOCK_SIZE), { threads: 1, accuracyLevel: 0 });
    assert.equal(f32.native, undefined);
    assert.equal(level0.native, undefined);
    await f32.close();
    await level0.close();
  });

  test("an unsupported block size is refused with a reason, and the runner keeps onnxruntime", async () => {
    const cfg = { ...TINY_EQUAL, head_dim: 128, chain_heads: [1, 1], ffn_chain_dims: [128, 128] };
    const ckpt = quantizeCheckpoint(loadCheckpoint(makeCheckpoint(cfg, 5)), 4, 128);
    const made = NativeDecoder.create(ckpt.config, weightsInMemory(ckpt.quantized!, normGainsOf(ckpt.weights)), 1);
    assert.ok(!(made instanceof NativeDecoder) && /block size must be 16, 32 or 64/.test(made.reason), JSON.stringify(made));
    const logged: string[] = [];
    const r = await ModelRunner.create(ckpt, { threads: 1, log: (m) => logged.push(m) });
    assert.equal(r.native, undefined);
    assert.match(logged.join("\n"), /native kernel unavailable \(block size must be 16, 32 or 64\); the model runs on onnxruntime/);
    const out = await r.step([1, 2], 2, new KvCache(2, 1, 128), [1]);
    assert.equal(out.logits.length, cfg.vocab_size);
    await r.close();
  });

  test("a prefix-cache hit, speculation and a batch change no bit of a quantized model's output (tokens and logprobs)", async () => {
    const engine = await loadModel(makeCheckpoint(TINY_WIDE, 9), { quant: "q8", threads: 2, log: () => {} });
    try {
      assert.ok(engine.runner.native);
      const prompt = range(40, 1).map((t) => (t * 37) % 300);
      const run = async (options: Partial<GenerateOptions> = {}): Promise<{ ids: number[]; logprobs: number[]; cached: number }> => {
        const ids: number[] = [];
        const logprobs: number[] = [];
        const it = engine.generate(prompt, { maxTokens: 10, chains: 3, sampling: { temperature: 0, logprobs: 2 }, stopOnEos: false, ...options });
        for (;;) {
          const r = await it.next();
          if (r.done) return { ids, logprobs, cached: r.value.cachedTokens };
          ids.push(r.value.tokenId);
          assert.ok(r.value.logprob !== undefined && r.value.logprob < 0);
          logprobs.push(r.value.logprob);
        }
      };
      const first = await run();
      const hit = await run();
      assert.equal(first.cached, 0);
      assert.ok(hit.cached >= 32, `prefix-cache hit: ${hit.cached} tokens`);
      assert.deepEqual(hit, { ...first, cached: hit.cached });
      const spec = await run({ speculative: { draftTokens: 3, draftChains: 1 }, cache: false });
      assert.deepEqual(spec.ids, first.ids, "self-speculative decoding");
      assert.deepEqual(spec.logprobs, first.logprobs);
      const together = await Promise.all([run({ cache: false }), run({ chains: 1, cache: false })]);
      assert.deepEqual(together[0].ids, first.ids, "batched with another request");
      assert.deepEqual(together[0].logprobs, first.logprobs);
    } finally {
      await engine.close();
    }
  });

  test("the server's load path: a float32 checkpoint quantized at load is quantized once into the cache, and no graph is built", async () => {
    const cacheDir = tempDir("colm-graphs-");
    const engine = await loadModel(makeCheckpoint(TINY_WIDE, 9), { quant: "q4", graphCache: true, graphCacheDir: cacheDir, log: () => {} });
    try {
      assert.ok(engine.runner.native, "native kernel in use");
      const { readdirSync } = await import("node:fs");
      const files = readdirSync(cacheDir);
      assert.deepEqual(files.filter((f) => f.endsWith(".onnx")), [], "the native kernel needs no graph");
      assert.equal(files.filter((f) => f.endsWith(".weights.safetensors")).length, 1, files.join(", "));
      const out: number[] = [];
      for await (const t of engine.generate([1, 2, 3], { maxTokens: 4, sampling: { temperature: 0 } })) out.push(t.tokenId);
      assert.equal(out.length, 4);
    } finally {
      await engine.close();
    }
    assert.ok(existsSync(cacheDir));
  });
});
