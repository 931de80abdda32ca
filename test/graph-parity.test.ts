// onnxruntime graph vs the TypeScript reference forward (spec §3), every chain count, at every
// precision: a quantized model's graph against the reference run on its dequantized weights.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { referenceForward } from "../kernels/reference.ts";
import { TINY_EQUAL, TINY_UNEQUAL, makeCheckpoint } from "./helpers/checkpoints.ts";
import { PRECISIONS_UNDER_TEST, TEST_BLOCK_SIZE, fullForward, loadRunner, maxAbsDiff, type Loaded, type PrecisionUnderTest } from "./helpers/run.ts";
import { colmGraph } from "../ops/colm-graph.ts";
import { loadCheckpoint } from "../models/checkpoint.ts";
import { quantizeCheckpoint } from "../kernels/quantize.ts";

function maxAbs(x: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]));
  return m;
}

/**
 * How close the graph must be to the reference. Float32 arithmetic (f32, or quantized weights at
 * accuracy level 0): 1e-4 for logits and hidden states, 1e-5 for keys and values, as before. At
 * level 4 MatMulNBits quantizes every linear's input to int8 per block (an error of up to 1/254 of
 * the block's largest value per element, compounding over the layers): measured 0.9–2.5% of the
 * largest logit (and key) on these models, so 5% of the largest value.
 */
function tolerance(p: PrecisionUnderTest, ref: ArrayLike<number>, exact: number): number {
  return p.accuracyLevel === 4 ? 0.05 * maxAbs(ref) : exact;
}

/** Rows whose reference top-2 margin exceeds 2·tol: their greedy token must be the reference's. */
function assertGreedyWhereClear(got: Float32Array, ref: Float32Array, V: number, tol: number): void {
  for (let t = 0; t < ref.length / V; t++) {
    const row = ref.subarray(t * V, (t + 1) * V);
    const best = row.indexOf(maxOf(row));
    const second = maxOf(row.filter((_, v) => v !== best));
    if (row[best] - second <= 2 * tol) continue;
    const mine = got.subarray(t * V, (t + 1) * V);
    assert.equal(mine.indexOf(maxOf(mine)), best, `row ${t}: greedy token differs with a top-2 margin of ${row[best] - second}`);
  }
}
const maxOf = (x: Float32Array): number => x.reduce((m, v) => Math.max(m, v), -Infinity);

for (const p of PRECISIONS_UNDER_TEST) {
  for (const [label, config] of [["equal chains", TINY_EQUAL], ["unequal chains, tied head", TINY_UNEQUAL]] as const) {
    describe(`onnxruntime matches the reference forward (${label}, ${p.label})`, () => {
      let m: Loaded;
      before(async () => {
        m = await loadRunner(makeCheckpoint(config, 7), p.precision, p.accuracyLevel, p.native);
      });
      after(() => m.runner.close());

      const tokens = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46];
      for (let k = 1; k <= config.chain_heads.length; k++) {
        test(`k=${k}: logits, hidden states and KV within tolerance; greedy tokens identical where clear`, async () => {
          const ref = referenceForward(m.ckpt.config, m.ckpt.weights, tokens, k);
          const ort = await fullForward(m.runner, tokens, k);
          const tol = tolerance(p, ref.logits, 1e-4);
          assert.ok(maxAbsDiff(ort.logits, ref.logits) < tol, `max |Δlogit| ${maxAbsDiff(ort.logits, ref.logits)}, tolerance ${tol}`);
          assert.ok(maxAbsDiff(ort.hidden, ref.hidden) < tolerance(p, ref.hidden, 1e-4));
          for (let l = 0; l < m.ckpt.config.n_layers; l++) {
            assert.ok(maxAbsDiff(ort.cache.read(l, "keys"), ref.keys[l]) < tolerance(p, ref.keys[l], 1e-5), `layer ${l} keys`);
            assert.ok(maxAbsDiff(ort.cache.read(l, "values"), ref.values[l]) < tolerance(p, ref.values[l], 1e-5), `layer ${l} values`);
          }
          assertGreedyWhereClear(ort.logits, ref.logits, m.ckpt.config.vocab_size, tol);
        });
      }
    });
  }
}

// One weight set, held once (issue: resident memory ≤ 1.5× the weight bytes): onnxruntime prepacks
// a MatMul weight once per node that reads it, and only for a node at most one If below the
// weight (two deep it runs unpacked, measured at half the bandwidth). So every weight block
// must have exactly one reader, and that reader must sit at depth 0 or 1. The same for a quantized
// model's matrices (MatMulNBits prepacks them the same way) and their scales.
describe("one weight set: every weight block has one reader, at most one If deep", () => {
  for (const bits of [undefined, 4] as const) {
    for (const [label, config] of [["equal chains", TINY_EQUAL], ["unequal chains, tied head", TINY_UNEQUAL]] as const) {
      test(`${label}, ${bits ? `q${bits}` : "f32"}`, () => {
        const f32 = loadCheckpoint(makeCheckpoint(config, 7));
        const readers = colmGraph(bits ? quantizeCheckpoint(f32, bits, TEST_BLOCK_SIZE) : f32).weightReaders();
        // Rotary tables are read by every attention; a float32 tied embedding is also the head (a quantized one has its own head).
        const shared = config.tie_embeddings && !bits ? /^(rope\.|embed\.)/ : /^rope\./;
        let blocks = 0;
        for (const [name, depths] of readers) {
          if (shared.test(name)) continue;
          blocks++;
          assert.equal(depths.length, 1, `${name} is read by ${depths.length} nodes`);
          assert.ok(depths[0] <= 1, `${name} is read ${depths[0]} subgraphs deep`);
        }
        const n = config.chain_heads.length;
        const L = config.n_layers;
        if (!bits) {
          // Per chain and layer: 2 norms and q, o, gate, up, down; k and v once per layer; embedding, head, final norm per chain.
          assert.equal(blocks, L * (7 * n + 2) + n * (config.tie_embeddings ? 1 : 3));
        } else {
          // Matrices (bytes and scales each): q, o, gate, up, down per chain and layer, k and v per layer, embedding and head per chain; norms as float32.
          assert.equal(blocks, 2 * (L * (5 * n + 2) + 2 * n) + L * 2 * n + n);
        }
      });
    }
  }
});
