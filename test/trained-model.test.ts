// The bundled trained model (models/colm-kjv): the onnxruntime engine reproduces the logits and
// greedy continuations that the independent PyTorch implementation (models/train/) wrote.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { loadModel, type ColmEngine } from "../server/engine/engine.ts";
import { fullForward, maxAbsDiff } from "./helpers/run.ts";

const MODEL = join(import.meta.dirname, "..", "models", "colm-kjv");
const FIXTURES = join(import.meta.dirname, "fixtures", "colm-kjv-golden.json");

interface Golden {
  model_sha256: string;
  sequences: { text: string; tokens: number[]; positions: number[]; logits: Record<string, number[][]> }[];
  greedy: { prompt: string; prompt_tokens: number[]; continuations: Record<string, number[]> }[];
}

describe("bundled model colm-kjv matches the PyTorch golden fixtures", () => {
  const golden = JSON.parse(readFileSync(FIXTURES, "utf8")) as Golden;
  let engine: ColmEngine;
  before(async () => {
    engine = await loadModel(MODEL, { threads: 2 });
  });
  after(() => engine.close());

  test("fixtures were made from the committed weights", () => {
    const sha = createHash("sha256").update(readFileSync(join(MODEL, "model.safetensors"))).digest("hex");
    assert.equal(sha, golden.model_sha256);
  });

  test("logits at every k within 1e-3 of PyTorch's", async () => {
    const V = engine.info.vocabSize;
    for (const seq of golden.sequences) {
      assert.deepEqual(engine.tokenizer.encode(seq.text), seq.tokens, "byte tokenizer agrees with the trainer");
      for (const [k, rows] of Object.entries(seq.logits)) {
        const out = await fullForward(engine.runner, seq.tokens, Number(k));
        seq.positions.forEach((pos, r) => {
          const d = maxAbsDiff(out.logits.subarray(pos * V, (pos + 1) * V), rows[r]);
          assert.ok(d < 1e-3, `${JSON.stringify(seq.text)} k=${k} position ${pos}: max |Δlogit| ${d}`);
        });
      }
    }
  });

  test("32-token greedy continuations at every k are identical (engine path: chain-1 prefill + KV cache)", async () => {
    for (const g of golden.greedy) {
      for (const [k, expected] of Object.entries(g.continuations)) {
        const got: number[] = [];
        for await (const t of engine.generate(g.prompt_tokens, { chains: Number(k), maxTokens: expected.length, sampling: { temperature: 0 }, stopOnEos: false })) {
          got.push(t.tokenId);
        }
        assert.deepEqual(got, expected, `${JSON.stringify(g.prompt)} at k=${k}`);
      }
    }
  });
});
