// Block quantization (models/quantized.ts, kernels/quantize.ts): the round trip's error per block,
// refusals, the quantized checkpoint folder `npm run quantize` writes, and loading at a precision.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { loadCheckpoint } from "../models/checkpoint.ts";
import { dequantizeMatrix, blocksPerRow, QuantizationError } from "../models/quantized.ts";
import { quantizeCheckpoint, quantizeMatrix, writeQuantizedCheckpoint } from "../kernels/quantize.ts";
import { SeededRng } from "../kernels/rng.ts";
import { loadModel } from "../server/engine/engine.ts";
import { ModelRunner } from "../ops/runner.ts";
import { TINY_EQUAL, TINY_UNEQUAL, makeCheckpoint, tempDir } from "./helpers/checkpoints.ts";
import { SERVER_TEST_CONFIG } from "./helpers/server-fixture.ts";
import { TEST_BLOCK_SIZE, fullForward } from "./helpers/run.ts";

const randomMatrix = (rows: number, cols: number, seed: number): Float32Array => {
  const rng = new SeededRng(seed);
  return Float32Array.from({ length: rows * cols }, () => (rng.next() - 0.5) * 4);
};

describe("quantize → dequantize round trip", () => {
  for (const bits of [8, 4] as const) {
    test(`${bits}-bit: every value within its block's step (|scale|/2; the clipped 4-bit level: |scale|), the largest exact`, () => {
      const rows = 5;
      const cols = 72; // two blocks of 32 and a padded one of 8
      const x = randomMatrix(rows, cols, bits);
      const q = quantizeMatrix(x, rows, cols, bits, 32);
      const nb = blocksPerRow(cols, 32);
      assert.equal(q.data.length, rows * nb * ((32 * bits) / 8));
      const y = dequantizeMatrix(q);
      let halfStep = 0;
      for (let r = 0; r < rows; r++) {
        for (let b = 0; b < nb; b++) {
          const scale = Math.abs(q.scales[r * nb + b]);
          const block = Array.from({ length: Math.min(32, cols - b * 32) }, (_, j) => r * cols + b * 32 + j);
          const extreme = block.reduce((m, i) => (Math.abs(x[i]) > Math.abs(x[m]) ? i : m), block[0]);
          assert.equal(y[extreme], x[extreme] === 0 ? 0 : Math.fround(scale * Math.round(x[extreme] / scale)), "the block's largest value decodes exactly");
          for (const i of block) {
            const err = Math.abs(y[i] - x[i]);
            assert.ok(err <= scale * (bits === 4 ? 1 : 0.5) * (1 + 1e-6), `row ${r} block ${b}: error ${err} > step ${scale}`);
            if (err <= (scale / 2) * (1 + 1e-6)) halfStep++;
          }
        }
      }
      assert.ok(halfStep >= 0.95 * x.length, "nearly every value rounds to the nearest level");
      // 8-bit steps are max|x|/127, 4-bit max|x|/8: the errors scale with them.
      const worst = Math.max(...x.map((v, i) => Math.abs(v - y[i])));
      assert.ok(worst < (bits === 8 ? 2 / 127 : 2 / 8) * 1.01, `worst error ${worst}`);
    });
  }

  test("a zero block encodes as zeros with scale 0; padding past cols encodes the zero point", () => {
    const q = quantizeMatrix(new Float32Array(40), 1, 40, 4, 32);
    assert.deepEqual([...q.scales], [0, 0]);
    assert.ok(q.data.every((b) => b === 0x88));
    assert.ok(dequantizeMatrix(q).every((v) => v === 0));
  });

  test("bad bit widths and block sizes are refused with a clear error", () => {
    const x = new Float32Array(64);
    for (const bits of [0, 2, 3, 16]) assert.throws(() => quantizeMatrix(x, 2, 32, bits, 32), (e: Error) => e instanceof QuantizationError && /bits must be 4 or 8, got/.test(e.message));
    for (const bs of [0, 8, 24, 33, 48]) assert.throws(() => quantizeMatrix(x, 2, 32, 4, bs), /block size must be a power of two ≥ 16, got/);
    assert.throws(() => quantizeMatrix(x, 3, 32, 4, 32), /a 3 × 32 matrix needs 96 values, got 64/);
    const ckpt = loadCheckpoint(makeCheckpoint(TINY_EQUAL, 1)); // chains 16 wide
    assert.throws(() => quantizeCheckpoint(ckpt, 4, 32), /block size 32 does not divide chain width 16/);
  });
});

describe("quantized checkpoint folder", () => {
  for (const config of [TINY_EQUAL, TINY_UNEQUAL]) {
    test(`written and read back: the same matrices, and the runner's logits bit-identical to quantizing at load (tied: ${config.tie_embeddings})`, async () => {
      const src = makeCheckpoint(config, 5);
      const quantized = quantizeCheckpoint(loadCheckpoint(src), 4, TEST_BLOCK_SIZE);
      const out = join(tempDir(), "q4");
      writeQuantizedCheckpoint(quantized, out);
      const loaded = loadCheckpoint(out);
      assert.deepEqual(loaded.config.quantization, { bits: 4, block_size: TEST_BLOCK_SIZE });
      assert.equal(loaded.quantized!.matrices.size, quantized.quantized!.matrices.size);
      for (const [name, m] of quantized.quantized!.matrices) assert.deepEqual(loaded.quantized!.matrices.get(name), m, name);
      assert.deepEqual(loaded.weights, quantized.weights);
      assert.equal(loaded.weightBytes, quantized.weightBytes);
      // 4 bits and a float32 scale per 16 values: 0.75 bytes a weight against 4 (a tied embedding is held twice).
      assert.ok(loaded.weightBytes < (config.tie_embeddings ? 0.4 : 0.25) * loadCheckpoint(src).weightBytes);
      const a = await ModelRunner.create(quantized, { threads: 1 });
      const b = await ModelRunner.create(loaded, { threads: 1 });
      try {
        assert.equal(b.precision, "q4");
        const tokens = [1, 2, 3, 50, 60, 70];
        assert.deepEqual((await fullForward(b, tokens, 3)).logits, (await fullForward(a, tokens, 3)).logits);
      } finally {
        await a.close();
        await b.close();
      }
    });
  }

  test("a quantized checkpoint runs at its stored precision only; requantizing is refused", async () => {
    const out = join(tempDir(), "q8");
    writeQuantizedCheckpoint(quantizeCheckpoint(loadCheckpoint(makeCheckpoint(SERVER_TEST_CONFIG, 3)), 8, 32), out);
    await assert.rejects(loadModel(out, { quant: "q4" }), /is stored at q8 and runs at q8 only; quantize its float32 checkpoint to run at q4/);
    await assert.rejects(loadModel(out, { quant: "f32" }), /is stored at q8 and runs at q8 only/);
    assert.throws(() => quantizeCheckpoint(loadCheckpoint(out), 4, 32), /stored at q8 \(block size 32\); quantize the float32 checkpoint instead/);
  });

  test("npm run quantize writes a folder the server loads directly; bad arguments exit with a usage line", { timeout: 60_000 }, async () => {
    const src = makeCheckpoint(SERVER_TEST_CONFIG, 9);
    const out = join(tempDir(), "cli-q4");
    const log = execFileSync(process.execPath, ["--import", "tsx", "loadtest/quantize.ts", src, "--bits", "4", "--out", out], { encoding: "utf8" });
    assert.match(log, /4-bit, block size 32/);
    assert.deepEqual(readdirSync(out).sort(), ["config.json", "model.safetensors"]);
    const bad = spawnSync(process.execPath, ["--import", "tsx", "loadtest/quantize.ts", src, "--bits", "3", "--out", join(tempDir(), "x")], { encoding: "utf8" });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /bits must be 4 or 8, got 3/);
    assert.equal(spawnSync(process.execPath, ["--import", "tsx", "loadtest/quantize.ts", src], { encoding: "utf8" }).status, 2);

    // The engine on the written folder and on the float32 one quantized at load (through the graph
    // cache, which keys its quantized weights, or its quantized graph without the native kernel,
    // apart from the float32 graph): same greedy tokens.
    const cacheDir = tempDir();
    const stored = await loadModel(out, { device: "cpu" });
    const atLoad = await loadModel(src, { device: "cpu", quant: "q4", graphCache: true, graphCacheDir: cacheDir });
    const f32 = await loadModel(src, { device: "cpu", graphCache: true, graphCacheDir: cacheDir });
    try {
      assert.equal(stored.info.precision, "q4");
      assert.equal(atLoad.info.precision, "q4");
      assert.equal(f32.info.precision, "f32");
      const cached = readdirSync(cacheDir);
      const native = atLoad.runner.native !== undefined;
      assert.equal(cached.filter((f) => f.endsWith(".onnx")).length, native ? 1 : 2, cached.join(", "));
      assert.equal(cached.filter((f) => f.endsWith(".weights.safetensors")).length, native ? 1 : 0, cached.join(", "));
      assert.ok(atLoad.runner.weightBytes < 0.25 * f32.runner.weightBytes);
      const greedy = async (e: typeof stored): Promise<number[]> => {
        const ids: number[] = [];
        for await (const t of e.generate([72, 101, 108, 108, 111], { maxTokens: 12, chains: 4, sampling: { temperature: 0 }, stopOnEos: false })) ids.push(t.tokenId);
        return ids;
      };
      assert.deepEqual(await greedy(atLoad), await greedy(stored));
    } finally {
      await stored.close();
      await atLoad.close();
      await f32.close();
    }
    assert.ok(existsSync(cacheDir));
  });
});
