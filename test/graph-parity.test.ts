// onnxruntime graph vs the TypeScript reference forward (spec §3), every chain count.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { referenceForward } from "../kernels/reference.ts";
import { TINY_EQUAL, TINY_UNEQUAL, makeCheckpoint } from "./helpers/checkpoints.ts";
import { fullForward, loadRunner, maxAbsDiff, type Loaded } from "./helpers/run.ts";

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
