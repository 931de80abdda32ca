// Spec §5: every invariant of the model, checked on the real onnxruntime graph.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { writeFileSync } from "node:fs";
import { parseConfig } from "../models/config.ts";
import { randomTensors } from "../kernels/random-checkpoint.ts";
import { writeSafetensors } from "../models/safetensors.ts";
import { KvCache } from "../kernels/kv-cache.ts";
import { TINY_EQUAL, TINY_UNEQUAL, makeCheckpoint, tempDir } from "./helpers/checkpoints.ts";
import { PRECISIONS_UNDER_TEST, fullForward, pathTolerance, leadingColumns, loadRunner, maxAbsDiff, newCache, range, type Loaded } from "./helpers/run.ts";

const TOKENS = [5, 17, 42, 8, 64, 23, 91, 3, 77, 12, 50, 6];

// Every invariant at every precision: a quantized model keeps each chain block on its own (its own
// blocks and scales), so what holds exactly at float32 holds exactly for its quantized weights.
for (const p of PRECISIONS_UNDER_TEST) {
describe(`§5.1 chain causality: weights of chains > k never touch sub-model k (${p.label})`, () => {
  const config = parseConfig(TINY_EQUAL);
  const n = config.nChains;
  for (let k = 1; k < n; k++) {
    test(`perturbing chains > ${k}: k=${k} bit-identical, k=${k + 1} changes`, async () => {
      const base = makeCheckpoint(TINY_EQUAL, 3);
      // Same weights, then every value that belongs only to chains > k is perturbed.
      const tensors = randomTensors(config, 3);
      const { dk, fk, hidden: D } = config;
      const perturbRows = (data: Float32Array, rowsFrom: number, cols: number): void => {
        for (let i = rowsFrom * cols; i < data.length; i++) if (data[i] !== 0) data[i] += 0.5;
      };
      for (const t of tensors) {
        const [rows, cols] = t.shape;
        if (t.shape.length === 1) for (let i = dk[k]; i < D; i++) t.data[i] += 0.5; // gains of chains > k
        else if (/embed|lm_head/.test(t.name)) for (let r = 0; r < rows; r++) for (let c = dk[k]; c < D; c++) t.data[r * D + c] += 0.5;
        else if (/gate_proj|up_proj/.test(t.name)) perturbRows(t.data, fk[k], cols);
        else if (/q_proj|o_proj|down_proj/.test(t.name)) perturbRows(t.data, dk[k], cols);
      }
      const changed = tempDir();
      writeFileSync(join(changed, "config.json"), JSON.stringify(TINY_EQUAL));
      writeSafetensors(join(changed, "model.safetensors"), tensors);
      const a = await loadRunner(base, p.precision, p.accuracyLevel, p.native);
      const b = await loadRunner(changed, p.precision, p.accuracyLevel, p.native);
      try {
        const ak = await fullForward(a.runner, TOKENS, k);
        const bk = await fullForward(b.runner, TOKENS, k);
        assert.deepEqual(bk.logits, ak.logits, "sub-model k must be bit-identical");
        const ak1 = await fullForward(a.runner, TOKENS, k + 1);
        const bk1 = await fullForward(b.runner, TOKENS, k + 1);
        assert.ok(maxAbsDiff(ak1.logits, bk1.logits) > 1e-3, "sub-model k+1 must see the change");
      } finally {
        await a.runner.close();
        await b.runner.close();
      }
    });
  }
});

for (const [label, cfg] of [["equal chains", TINY_EQUAL], ["unequal chains", TINY_UNEQUAL]] as const) {
  describe(`§5.2–5.6 (${label}, ${p.label})`, () => {
    let m: Loaded;
    before(async () => {
      m = await loadRunner(makeCheckpoint(cfg, 11), p.precision, p.accuracyLevel, p.native);
    });
    after(() => m.runner.close());
    const n = cfg.chain_heads.length;

    test("§5.2 prefix property: sub-model k's hidden states are the first d_k dims of the full model's", async () => {
      const full = await fullForward(m.runner, TOKENS, n);
      const D = m.ckpt.config.hidden;
      for (let k = 1; k < n; k++) {
        const sub = await fullForward(m.runner, TOKENS, k);
        const dk = m.ckpt.config.dk[k];
        assert.ok(maxAbsDiff(sub.hidden, leadingColumns(full.hidden, TOKENS.length, D, dk)) < 1e-5, `k=${k}`);
      }
    });

    test("§5.3 shared KV: every sub-model writes the same keys and values", async () => {
      const ref = await fullForward(m.runner, TOKENS, 1);
      for (let k = 2; k <= n; k++) {
        const out = await fullForward(m.runner, TOKENS, k);
        for (let l = 0; l < m.ckpt.config.n_layers; l++) {
          assert.ok(maxAbsDiff(out.newKeys[l], ref.newKeys[l]) < 1e-6, `k=${k} layer ${l} keys`);
          assert.ok(maxAbsDiff(out.newValues[l], ref.newValues[l]) < 1e-6, `k=${k} layer ${l} values`);
        }
      }
    });

    test("§5.4 prefill acceleration is exact: chain 1 over t_1…t_{T-1}, then k on t_T", async () => {
      for (let k = 1; k <= n; k++) {
        const whole = await fullForward(m.runner, TOKENS, k);
        const cache = newCache(m.runner);
        const pre = await m.runner.step(TOKENS.slice(0, -1), 1, cache, []);
        assert.equal(pre.logits.length, 0, "the chain-1 prefill computes no logits");
        cache.append(pre.newKeys, pre.newValues, TOKENS.length - 1);
        const last = await m.runner.step(TOKENS.slice(-1), k, cache, [0]);
        const V = m.ckpt.config.vocab_size;
        const expected = whole.logits.subarray((TOKENS.length - 1) * V);
        assert.ok(maxAbsDiff(last.logits, expected) < pathTolerance(p, expected), `k=${k}: ${maxAbsDiff(last.logits, expected)}`);
      }
    });

    test("§5.5 seamless switching: k changes at every token, no recomputation, logits as if k' ran all along", async () => {
      const V = m.ckpt.config.vocab_size;
      const cache = new KvCache(m.ckpt.config.n_layers, m.ckpt.config.kv_heads, m.ckpt.config.head_dim, 2); // forces growth
      const schedule = range(TOKENS.length).map((i) => (i % n) + 1);
      for (let i = 0; i < TOKENS.length; i++) {
        const out = await m.runner.step([TOKENS[i]], schedule[i], cache, [0]);
        cache.append(out.newKeys, out.newValues, 1);
        const fresh = await fullForward(m.runner, TOKENS.slice(0, i + 1), schedule[i]);
        const d = maxAbsDiff(out.logits, fresh.logits.subarray(i * V));
        assert.ok(d < pathTolerance(p, fresh.logits), `token ${i} at k=${schedule[i]}: ${d}`);
      }
    });

    test("§5.6 small KV cache: 2·L·kv_heads·hd values per token, not 2·L·D", async () => {
      const c = m.ckpt.config;
      const cache = newCache(m.runner);
      const out = await m.runner.step(TOKENS, n, cache, []);
      cache.append(out.newKeys, out.newValues, TOKENS.length);
      assert.equal(cache.bytesPerToken, 2 * c.n_layers * c.kv_heads * c.head_dim * 4);
      assert.equal(cache.bytesInUse, TOKENS.length * cache.bytesPerToken);
      assert.ok(cache.bytesPerToken < 2 * c.n_layers * c.hidden * 4);
      for (let l = 0; l < c.n_layers; l++) assert.equal(out.newKeys[l].length, TOKENS.length * c.kv_heads * c.head_dim);
      // The step returns keys head-major, as the cache stores them: each head's block lands whole.
      const T = TOKENS.length;
      for (let h = 0; h < c.kv_heads; h++) {
        const held = cache.keyBuffer(0).subarray(h * cache.capacity * c.head_dim, (h * cache.capacity + T) * c.head_dim);
        assert.deepEqual(held, out.newKeys[0].subarray(h * T * c.head_dim, (h + 1) * T * c.head_dim));
      }
    });
  });
}
}
