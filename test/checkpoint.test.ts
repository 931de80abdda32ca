// Checkpoint format (spec §2, §4): configs, safetensors, and the errors bad inputs get.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { writeFileSync, readFileSync, unlinkSync, copyFileSync, readdirSync } from "node:fs";
import { quantizeCheckpoint, writeQuantizedCheckpoint } from "../kernels/quantize.ts";
import { parseConfig, ConfigError } from "../models/config.ts";
import { loadCheckpoint, CheckpointError, parameterCount } from "../models/checkpoint.ts";
import { SafetensorsFile, SafetensorsError, writeSafetensors } from "../models/safetensors.ts";
import { randomTensors } from "../kernels/random-checkpoint.ts";
import { TINY_EQUAL, TINY_UNEQUAL, makeCheckpoint, tempDir } from "./helpers/checkpoints.ts";

describe("config.json", () => {
  const bad: [string, Record<string, unknown>, RegExp][] = [
    ["wrong architecture", { architecture: "llama" }, /architecture/],
    ["head count not a multiple of kv_heads", { chain_heads: [2, 3, 2, 2], kv_heads: 2 }, /chain_heads\.1: 3 query heads is not a multiple of kv_heads \(2\)/],
    ["chain count mismatch", { ffn_chain_dims: [8, 8] }, /ffn_chain_dims: has 2 chains but chain_heads has 4/],
    ["odd head_dim", { head_dim: 7 }, /head_dim: must be even/],
    ["negative vocab", { vocab_size: -1 }, /vocab_size/],
    ["eos outside vocab", { eos_token_id: 500 }, /eos_token_id: 500 is outside the vocabulary/],
    ["missing n_layers", { n_layers: undefined }, /n_layers/],
    ["string where a number goes", { max_position: "128" }, /max_position/],
  ];
  for (const [what, patch, message] of bad) {
    test(`rejects ${what}, naming the field`, () => {
      assert.throws(() => parseConfig({ ...TINY_EQUAL, ...patch }), (e: unknown) => e instanceof ConfigError && message.test(e.message));
    });
  }

  test("derives chain widths and prefixes", () => {
    const c = parseConfig(TINY_UNEQUAL);
    assert.deepEqual(c.chainWidths, [16, 16, 32]);
    assert.deepEqual(c.dk, [0, 16, 32, 64]);
    assert.deepEqual(c.fk, [0, 16, 40, 80]);
    assert.equal(c.kvWidth, 16);
  });
});

describe("safetensors", () => {
  test("float32 round trip, header validated", () => {
    const dir = tempDir();
    const path = join(dir, "t.safetensors");
    const data = Float32Array.from([1, -2.5, 3e-8, 4]);
    writeSafetensors(path, [{ name: "a", shape: [2, 2], data }]);
    const f = SafetensorsFile.open(path);
    assert.deepEqual(f.entries.get("a")!.shape, [2, 2]);
    assert.deepEqual(f.read("a"), data);
    f.close();
  });

  test("reads float16 and bfloat16", () => {
    const dir = tempDir();
    const path = join(dir, "h.safetensors");
    // 1.0, -2.0, 0.5 in IEEE half; 1.0, -2.0, 0.5 in bfloat16.
    const f16 = Uint16Array.from([0x3c00, 0xc000, 0x3800]);
    const bf16 = Uint16Array.from([0x3f80, 0xc000, 0x3f00]);
    const header = JSON.stringify({
      h: { dtype: "F16", shape: [3], data_offsets: [0, 6] },
      b: { dtype: "BF16", shape: [3], data_offsets: [6, 12] },
    });
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    writeFileSync(path, Buffer.concat([len, Buffer.from(header), Buffer.from(f16.buffer), Buffer.from(bf16.buffer)]));
    const f = SafetensorsFile.open(path);
    assert.deepEqual([...f.read("h")], [1, -2, 0.5]);
    assert.deepEqual([...f.read("b")], [1, -2, 0.5]);
    f.close();
  });

  test("truncated files, bad headers and wrong offsets are errors that say what is wrong", () => {
    const dir = tempDir();
    const path = join(dir, "x.safetensors");
    writeSafetensors(path, [{ name: "w", shape: [4], data: new Float32Array(4) }]);
    const full = readFileSync(path);
    writeFileSync(path, full.subarray(0, full.length - 4));
    assert.throws(() => SafetensorsFile.open(path), (e: unknown) => e instanceof SafetensorsError && /tensor w: .*past the end/.test(e.message));
    writeFileSync(path, Buffer.from([1, 2, 3]));
    assert.throws(() => SafetensorsFile.open(path), /too short/);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(5n);
    writeFileSync(path, Buffer.concat([len, Buffer.from("{oops")]));
    assert.throws(() => SafetensorsFile.open(path), /header is not JSON/);
    const header = JSON.stringify({ w: { dtype: "F32", shape: [3], data_offsets: [0, 8] } });
    len.writeBigUInt64LE(BigInt(header.length));
    writeFileSync(path, Buffer.concat([len, Buffer.from(header), Buffer.alloc(12)]));
    assert.throws(() => SafetensorsFile.open(path), /hold 8 bytes, shape \[3\] F32 needs 12/);
    const i8 = JSON.stringify({ w: { dtype: "I8", shape: [1], data_offsets: [0, 1] } });
    len.writeBigUInt64LE(BigInt(i8.length));
    writeFileSync(path, Buffer.concat([len, Buffer.from(i8), Buffer.alloc(1)]));
    assert.throws(() => SafetensorsFile.open(path), /dtype "I8" is not supported/);
  });
});

describe("checkpoint loading", () => {
  const config = parseConfig(TINY_EQUAL);

  function withTensors(edit: (t: ReturnType<typeof randomTensors>) => ReturnType<typeof randomTensors>): string {
    const dir = tempDir();
    writeFileSync(join(dir, "config.json"), JSON.stringify(TINY_EQUAL));
    writeSafetensors(join(dir, "model.safetensors"), edit(randomTensors(config, 1)));
    return dir;
  }

  test("a random checkpoint loads; weight bytes count only blocks on and below the diagonal", () => {
    const ckpt = loadCheckpoint(makeCheckpoint(TINY_EQUAL));
    assert.equal(ckpt.weightBytes, 4 * parameterCount(config));
    const dense = config.n_layers * (2 * 64 * 64 + 3 * 64 * 96);
    assert.ok(parameterCount(config) < dense + 2 * 97 * 64 + 2 * 16 * 8 * 2 + 64 * 5, "masked blocks are not counted");
  });

  test("missing tensor is named", () => {
    const dir = withTensors((t) => t.filter((x) => x.name !== "layers.1.ffn.up_proj.weight"));
    assert.throws(() => loadCheckpoint(dir), (e: unknown) => e instanceof CheckpointError && /missing tensor layers\.1\.ffn\.up_proj\.weight/.test(e.message));
  });

  test("wrong shape is named with expected and actual", () => {
    const dir = withTensors((t) =>
      t.map((x) => (x.name === "layers.0.attn.k_proj.weight" ? { ...x, shape: [16, 8], data: new Float32Array(128) } : x)),
    );
    assert.throws(() => loadCheckpoint(dir), /layers\.0\.attn\.k_proj\.weight has shape \[16,8\], expected \[8,16\]/);
  });

  test("non-zero masked blocks give a warning naming the tensor, and are ignored", () => {
    const dir = withTensors((t) =>
      t.map((x) => {
        if (x.name !== "layers.0.attn.q_proj.weight") return x;
        const data = x.data.slice();
        data[63] = 0.25; // row 0 (chain 1) reading column 63 (chain 4): above the diagonal
        return { ...x, data };
      }),
    );
    const warnings: string[] = [];
    const ckpt = loadCheckpoint(dir, { onWarning: (m) => warnings.push(m) });
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /layers\.0\.attn\.q_proj\.weight: 1 non-zero values .* masked blocks/);
    const clean = loadCheckpoint(withTensors((t) => t));
    assert.deepEqual(ckpt.weights.layers[0].q, clean.weights.layers[0].q);
  });

  test("missing files are named", () => {
    const dir = makeCheckpoint(TINY_EQUAL);
    unlinkSync(join(dir, "model.safetensors"));
    assert.throws(() => loadCheckpoint(dir), /no model\.safetensors/);
    const other = tempDir();
    assert.throws(() => loadCheckpoint(other), /no config\.json/);
    copyFileSync(join(dir, "config.json"), join(other, "config.json"));
    writeFileSync(join(other, "config.json"), JSON.stringify({ ...TINY_EQUAL, kv_heads: 3 }));
    assert.throws(() => loadCheckpoint(other), /kv_heads|not a multiple/);
  });
});

describe("sharded checkpoints (Hugging Face model.safetensors.index.json)", () => {
  test("shards load as the one file they were split from; a missing shard is named; quantizing leaves the shards behind", () => {
    const whole = makeCheckpoint(TINY_EQUAL, 4);
    const tensors = randomTensors(parseConfig(TINY_EQUAL), 4);
    const dir = tempDir();
    copyFileSync(join(whole, "config.json"), join(dir, "config.json"));
    const half = Math.ceil(tensors.length / 2);
    const files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    writeSafetensors(join(dir, files[0]), tensors.slice(0, half));
    writeSafetensors(join(dir, files[1]), tensors.slice(half));
    const weightMap = Object.fromEntries(tensors.map((t, i) => [t.name, files[i < half ? 0 : 1]]));
    writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    const a = loadCheckpoint(whole);
    const b = loadCheckpoint(dir);
    assert.deepEqual(b.weights, a.weights);
    const out = join(tempDir(), "q8");
    writeQuantizedCheckpoint(quantizeCheckpoint(b, 8, 16), out);
    assert.deepEqual(readdirSync(out).sort(), ["config.json", "model.safetensors"]);
    unlinkSync(join(dir, files[1]));
    assert.throws(() => loadCheckpoint(dir), (e: unknown) => e instanceof CheckpointError && /no model-00002-of-00002\.safetensors/.test(e.message));
  });
});
