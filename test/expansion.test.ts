// Chain expansion (spec §6, progressive scaling) through colm-serve's graph, on the committed tiny
// pair test/fixtures/expansion/{old,new} (made by its make.sh: models/train/train_long.py
// --preset tiny2, then --expand-from … --add-chains 2 with the old chains frozen): the grown model's
// sub-models 1 … n_old give the old model's logits, keys and values bit for bit, in float32 and
// quantized; its stored tensors hold the old ones as leading blocks; and a 0.1% change to one
// chain-2 weight is caught at k = 2 and at no smaller k (the check can see what it claims to; a
// one-ulp change of that weight was not visible in the logits: it rounds away in the sums).
// The same check on real models: loadtest/check-expansion.ts --old DIR --new DIR.
import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import { closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SafetensorsFile } from "../models/safetensors.ts";
import { checkExpansion, tokensFromText } from "../loadtest/check-expansion.ts";

const DIR = join(import.meta.dirname, "fixtures", "expansion");
const OLD = join(DIR, "old");
const NEW = join(DIR, "new");
const TEXT = readFileSync(join(import.meta.dirname, "..", "README.md"), "utf8");

describe("chain expansion: the grown model's old sub-models are the old model, bit for bit", () => {
  const tokens = tokensFromText(OLD, TEXT, 256); // the tiny pair's whole context
  const tmp = mkdtempSync(join(tmpdir(), "colm-expansion-"));
  after(() => rmSync(tmp, { recursive: true, force: true }));

  test("the pair: 2 chains grown to 4, the old tensors are the new ones' leading blocks", () => {
    const oldCfg = JSON.parse(readFileSync(join(OLD, "config.json"), "utf8"));
    const newCfg = JSON.parse(readFileSync(join(NEW, "config.json"), "utf8"));
    assert.deepEqual(oldCfg.chain_heads, [2, 2]);
    assert.deepEqual(newCfg.chain_heads, [2, 2, 2, 2]);
    const a = SafetensorsFile.open(join(OLD, "model.safetensors"));
    const b = SafetensorsFile.open(join(NEW, "model.safetensors"));
    try {
      assert.deepEqual([...a.entries.keys()].sort(), [...b.entries.keys()].sort());
      for (const [name, e] of a.entries) {
        const ne = b.entries.get(name)!;
        const x = a.read(name);
        const y = b.read(name);
        const cols = e.shape.length === 2 ? e.shape[1] : 1;
        const ncols = ne.shape.length === 2 ? ne.shape[1] : 1;
        for (let r = 0; r < e.shape[0]; r++) {
          for (let c = 0; c < cols; c++) {
            if (!Object.is(x[r * cols + c], y[r * ncols + c])) assert.fail(`${name}[${r}, ${c}]: old ${x[r * cols + c]}, new ${y[r * ncols + c]}`);
          }
        }
      }
    } finally {
      a.close();
      b.close();
    }
  });

  for (const [precision, blockSize] of [["f32", undefined], ["q8", 16], ["q4", 16]] as const) {
    test(`${precision}: k = 1, 2 over ${tokens.length} tokens, whole prompt and token-by-token decode: every logit, key and value identical`, async () => {
      const r = await checkExpansion(OLD, NEW, tokens, { precision, blockSize, decode: 32 });
      assert.equal(r.rows.length, 4);
      for (const row of r.rows) assert.ok(row.bitIdentical, `k=${row.k} ${row.path}: max |Δlogit| ${row.maxAbsLogits}, max |Δkv| ${row.maxAbsKv}`);
    });
  }

  test("control: one chain-2 weight of the grown model changed by 0.1% is caught at k = 2 only", async () => {
    const bent = join(tmp, "bent");
    mkdirSync(bent);
    copyFileSync(join(NEW, "config.json"), join(bent, "config.json"));
    copyFileSync(join(NEW, "model.safetensors"), join(bent, "model.safetensors"));
    // layers.1.ffn.down_proj.weight is [D, F]; row 16 is chain 2's first output (chain width 16).
    const path = join(bent, "model.safetensors");
    const st = SafetensorsFile.open(path);
    const e = st.entries.get("layers.1.ffn.down_proj.weight")!;
    st.close();
    const fd = openSync(path, "r+");
    try {
      const head = Buffer.alloc(8);
      readSync(fd, head, 0, 8, 0);
      const at = 8 + Number(head.readBigUInt64LE(0)) + e.begin + 4 * (16 * e.shape[1] + 3);
      const v = Buffer.alloc(4);
      readSync(fd, v, 0, 4, at);
      assert.notEqual(v.readFloatLE(0), 0, "a weight chain 2 really reads");
      v.writeFloatLE(v.readFloatLE(0) * (1 + 2 ** -10), 0);
      writeSync(fd, v, 0, 4, at);
    } finally {
      closeSync(fd);
    }
    const r = await checkExpansion(OLD, bent, tokens, { decode: 8 });
    for (const row of r.rows) {
      if (row.k === 1) assert.ok(row.bitIdentical, `k=1 ${row.path} must not see a chain-2 weight`);
      else assert.ok(!row.bitIdentical && row.maxAbsLogits > 0, `k=2 ${row.path} must see it (max |Δ| ${row.maxAbsLogits})`);
      if (process.env.COLM_EXPANSION_VERBOSE) console.log(`control k=${row.k} ${row.path}: max |Δlogit| ${row.maxAbsLogits}`);
    }
    assert.equal(r.ok, false);
  });
});
