// Several sequences decoded in one batched step (rows of one cache) get exactly the logits each
// gets alone: the foundation of continuous batching.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { KvCache } from "../kernels/kv-cache.ts";
import { TINY_EQUAL, TINY_UNEQUAL, makeCheckpoint } from "./helpers/checkpoints.ts";
import { fullForward, loadRunner, maxAbsDiff, type Loaded } from "./helpers/run.ts";

for (const [label, cfg] of [["equal chains", TINY_EQUAL], ["unequal chains", TINY_UNEQUAL]] as const) {
  describe(`batched rows (${label})`, () => {
    let m: Loaded;
    before(async () => {
      m = await loadRunner(makeCheckpoint(cfg, 21));
    });
    after(() => m.runner.close());

    test("rows of different lengths and chain counts, one decode step each, match each sequence run alone", async () => {
      const c = m.ckpt.config;
      const V = c.vocab_size;
      const rows = 3;
      const prompts = [
        [4, 8, 15, 16, 23],
        [42, 7, 1, 9, 30],
        [11, 12, 13, 14, 15],
      ];
      const cache = new KvCache(c.n_layers, c.kv_heads, c.head_dim, 4, rows); // forces growth
      const pre = await m.runner.stepRows(prompts, 1, cache, []);
      cache.append(pre.newKeys, pre.newValues, 5);
      cache.truncate(3, 1);
      cache.truncate(1, 2);
      const history = prompts.map((p, r) => p.slice(0, cache.lengths[r]));
      for (let step = 0; step < 4; step++) {
        const ks = history.map((_, r) => ((step + r) % c.nChains) + 1); // every row its own sub-model
        const next = history.map((h, r) => (h[h.length - 1] * 7 + r + step) % V);
        const out = await m.runner.stepRows(next.map((t) => [t]), ks, cache, [0, 1, 2]);
        cache.append(out.newKeys, out.newValues, 1);
        for (let r = 0; r < rows; r++) {
          const k = ks[r];
          history[r].push(next[r]);
          const alone = await fullForward(m.runner, history[r], k);
          const expected = alone.logits.subarray((history[r].length - 1) * V);
          const d = maxAbsDiff(out.logits.subarray(r * V, (r + 1) * V), expected);
          assert.ok(d < 1e-4, `step ${step}, row ${r} (length ${history[r].length}) at k=${k}: ${d}`);
          for (let l = 0; l < c.n_layers; l++) assert.ok(maxAbsDiff(cache.read(l, "keys", r), alone.cache.read(l, "keys")) < 1e-5);
        }
      }
    });

    test("a step over a sub-range of rows leaves the other rows alone; moved rows keep decoding", async () => {
      const c = m.ckpt.config;
      const V = c.vocab_size;
      const cache = new KvCache(c.n_layers, c.kv_heads, c.head_dim, 16, 3);
      const a = [5, 6, 7, 8];
      const b = [9, 10, 11];
      let out = await m.runner.stepRows([a], 2, cache, [], 0);
      cache.append(out.newKeys, out.newValues, a.length, 0, 1);
      out = await m.runner.stepRows([b], 1, cache, [], 2); // row 2 only
      cache.append(out.newKeys, out.newValues, b.length, 2, 1);
      assert.deepEqual(cache.lengths, [4, 0, 3]);
      cache.moveRow(2, 1); // compact: rows 0 … 1 in use
      assert.deepEqual(cache.lengths, [4, 3, 0]);
      out = await m.runner.stepRows([[1], [2]], [c.nChains, 2], cache, [0, 1], 0);
      for (const [r, seq, k] of [[0, [...a, 1], c.nChains], [1, [...b, 2], 2]] as const) {
        const alone = await fullForward(m.runner, [...seq], k);
        assert.ok(maxAbsDiff(out.logits.subarray(r * V, (r + 1) * V), alone.logits.subarray((seq.length - 1) * V)) < 1e-4, `row ${r}`);
      }
    });

    test("calls in flight at once each get their own keys and values (the runner's reused buffers serve one call)", async () => {
      const c = m.ckpt.config;
      const prompts = [
        [5, 6, 7, 8],
        [9, 10, 11, 12],
        [13, 14, 15, 16],
      ];
      const alone = await Promise.all(prompts.map((p) => fullForward(m.runner, p, 1))); // concurrent on purpose
      const outs = await Promise.all(prompts.map((p) => m.runner.step(p, 1, new KvCache(c.n_layers, c.kv_heads, c.head_dim), [])));
      for (const [i, out] of outs.entries()) {
        const cache = new KvCache(c.n_layers, c.kv_heads, c.head_dim);
        cache.append(out.newKeys, out.newValues, prompts[i].length);
        for (let l = 0; l < c.n_layers; l++) assert.ok(maxAbsDiff(cache.read(l, "keys"), alone[i].cache.read(l, "keys")) < 1e-6, `prompt ${i} layer ${l}`);
      }
      assert.ok(outs[0].newKeys[0] !== outs[1].newKeys[0]);
    });

    test("fresh prompts of equal length prefill together, at every chain count", async () => {
      // At k < n the chains after k run on no rows, and the chains that run share one fused
      // attention with their heads stacked as extra batch rows: two rows must not mix.
      const c = m.ckpt.config;
      const V = c.vocab_size;
      const prompts = [
        [3, 1, 4, 1, 5, 9],
        [2, 7, 1, 8, 2, 8],
      ];
      for (let k = 1; k <= c.nChains; k++) {
        const cache = new KvCache(c.n_layers, c.kv_heads, c.head_dim, 8, 2);
        const out = await m.runner.stepRows(prompts, k, cache, [5, 11]);
        for (let r = 0; r < 2; r++) {
          const alone = await fullForward(m.runner, prompts[r], k);
          const d = maxAbsDiff(out.logits.subarray(r * V, (r + 1) * V), alone.logits.subarray(5 * V));
          assert.ok(d < 1e-4, `k=${k}, row ${r}: ${d}`);
        }
      }
    });
  });
}
