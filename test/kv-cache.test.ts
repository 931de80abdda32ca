// The shared KV cache on its own: what it holds survives growth, and growth keeps the capacity
// (every slot of which a decode step's attention reads) close to what the rows hold.
import assert from "node:assert/strict";
import { test } from "node:test";
import { GROWTH_SLOTS, KvCache } from "../kernels/kv-cache.ts";

const LAYERS = 2;
const KV = 2;
const HD = 4;

/** Head-major keys/values of `tokens` new tokens for one row, value = f(layer, head, t, d). */
function block(tokens: number, first: number, sign: number): Float32Array[] {
  return Array.from({ length: LAYERS }, (_, l) => {
    const a = new Float32Array(KV * tokens * HD);
    for (let h = 0; h < KV; h++) for (let t = 0; t < tokens; t++) for (let d = 0; d < HD; d++) a[(h * tokens + t) * HD + d] = sign * (l * 1e6 + h * 1e4 + (first + t) * 10 + d);
    return a;
  });
}

test("tokens appended one at a time keep their values through every growth; capacity stays within 1.25× of the length (+ one growth step)", () => {
  const cache = new KvCache(LAYERS, KV, HD, 8);
  let growths = 0;
  for (let t = 0; t < 3000; t++) {
    const before = cache.capacity;
    cache.append(block(1, t, 1), block(1, t, -1), 1);
    if (cache.capacity !== before) {
      growths++;
      assert.equal(cache.capacity % GROWTH_SLOTS, 0);
      assert.ok(cache.capacity <= 1.25 * cache.length + GROWTH_SLOTS, `capacity ${cache.capacity} for ${cache.length} tokens`);
    }
  }
  assert.ok(growths <= 20, `${growths} growths for 3000 tokens (geometric growth expected)`);
  for (let l = 0; l < LAYERS; l++) {
    const keys = cache.read(l, "keys");
    const values = cache.read(l, "values");
    for (const t of [0, 7, 8, 63, 64, 1000, 2999]) {
      for (let h = 0; h < KV; h++) {
        assert.equal(keys[(t * KV + h) * HD + 3], l * 1e6 + h * 1e4 + t * 10 + 3);
        assert.equal(values[(t * KV + h) * HD + 1], -(l * 1e6 + h * 1e4 + t * 10 + 1));
      }
    }
  }
});

test("a long block grows the capacity straight to fit it; truncate drops tokens; shrink gives rows back only when empty", () => {
  const cache = new KvCache(LAYERS, KV, HD, 64, 4);
  assert.equal(cache.allocatedRows, 1, "rows get storage as they come into use");
  cache.append(block(700, 0, 1), block(700, 0, -1), 700, 0, 1);
  assert.equal(cache.length, 700);
  assert.equal(cache.capacity, 704);
  cache.truncate(500);
  cache.append(block(1, 500, 1), block(1, 500, -1), 1, 0, 1);
  assert.equal(cache.read(0, "keys")[(500 * KV + 1) * HD], 1e4 + 5000);
  cache.append(block(3, 0, 1), block(3, 0, -1), 3, 2, 1);
  assert.equal(cache.allocatedRows, 3, "row 2 in use: rows 0 … 2 have storage");
  assert.equal(cache.bytesAllocated, 3 * 704 * cache.bytesPerToken);
  assert.equal(cache.read(0, "keys")[(500 * KV + 1) * HD], 1e4 + 5000, "row 0 kept through the growth");
  cache.shrink();
  assert.equal(cache.allocatedRows, 3, "a cache holding tokens keeps its rows");
  cache.truncate(0);
  cache.truncate(0, 2);
  cache.shrink();
  assert.equal(cache.allocatedRows, 1);
  assert.equal(cache.capacity, 704, "the first row keeps its capacity for the next long prompt");
  assert.equal(cache.bytesAllocated, 704 * cache.bytesPerToken);
  assert.throws(() => cache.truncate(1), RangeError);
  assert.throws(() => cache.ensureRows(5), RangeError);
});
