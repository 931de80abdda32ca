// onnxruntime graph vs the TypeScript reference forward (spec §3), every chain count.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { referenceForward } from "../kernels/reference.ts";
import { TINY_EQUAL, TINY_UNEQUAL, makeCheckpoint } from "./helpers/checkpoints.ts";
import { fullForward, loadRunner, maxAbsDiff, type Loaded } from "./helpers/run.ts";
import { colmGraph } from "../ops/colm-graph.ts";
import { loadCheckpoint } from "../models/checkpoint.ts";

for (const [label, config] of [["equal chains", TINY_EQUAL], ["unequal chains, tied head", TINY_UNEQUAL]] as const) {
  describe(`onnxruntime matches the reference forward (${label})`, () => {
    let m: Loaded;
    before(async () => {
      m = await loadRunner(makeCheckpoint(config, 7));
    });
    after(() => m.runner.close());

    const tokens = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46];
    for (let k = 1; k <= config.chain_heads.length; k++) {
      test(`k=${k}: logits, hidden states and KV within 1e-4`, async () => {
        const ref = referenceForward(m.ckpt.config, m.ckpt.weights, tokens, k);
        const ort = await fullForward(m.runner, tokens, k);
        assert.ok(maxAbsDiff(ort.logits, ref.logits) < 1e-4, `max |Δlogit| ${maxAbsDiff(ort.logits, ref.logits)}`);
        assert.ok(maxAbsDiff(ort.hidden, ref.hidden) < 1e-4);
        for (let l = 0; l < m.ckpt.config.n_layers; l++) {
          assert.ok(maxAbsDiff(ort.cache.read(l, "keys"), ref.keys[l]) < 1e-5, `layer ${l} keys`);
          assert.ok(maxAbsDiff(ort.cache.read(l, "values"), ref.values[l]) < 1e-5, `layer ${l} values`);
        }
      });
    }
  });
}

// One weight set, held once (issue: resident memory ≤ 1.5× the weight bytes): onnxruntime prepacks
// a MatMul weight once per node that reads it, and only for a node at most one If below the
// weight (two deep it runs unpacked, measured at half the bandwidth). So every weight block
// must have exactly one reader, and that reader must sit at depth 0 or 1.
describe("one weight set: every weight block has one reader, at most one If deep", () => {
  for (const [label, config] of [["equal chains", TINY_EQUAL], ["unequal chains, tied head", TINY_UNEQUAL]] as const) {
    test(label, () => {
      const readers = colmGraph(loadCheckpoint(makeCheckpoint(config, 7))).weightReaders();
      const shared = config.tie_embeddings ? /^(rope\.|embed\.)/ : /^rope\./; // rotary tables; a tied embedding is also the head
      let blocks = 0;
      for (const [name, depths] of readers) {
        if (shared.test(name)) continue;
        blocks++;
        assert.equal(depths.length, 1, `${name} is read by ${depths.length} nodes`);
        assert.ok(depths[0] <= 1, `${name} is read ${depths[0]} subgraphs deep`);
      }
      // Per chain and layer: 2 norms and q, o, gate, up, down; k and v once per layer; embedding, head, final norm per chain.
      const n = config.chain_heads.length;
      assert.equal(blocks, config.n_layers * (7 * n + 2) + n * (config.tie_embeddings ? 1 : 3));
    });
  }
});
