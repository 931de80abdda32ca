// The engine API on a real onnxruntime session: generation, LM switching, cancellation, limits.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { loadModel, EngineError, type ColmEngine } from "../server/engine/engine.ts";
import type { GeneratedToken, GenerateOptions, GenerationSummary } from "../server/engine/types.ts";
import { readdirSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cachedGraph, pruneGraphCache } from "../ops/graph-cache.ts";
import { TINY_UNEQUAL, TINY_EQUAL, makeCheckpoint, tempDir } from "./helpers/checkpoints.ts";
import { fullForward } from "./helpers/run.ts";

async function collect(engine: ColmEngine, prompt: number[], options: GenerateOptions): Promise<{ tokens: GeneratedToken[]; summary: GenerationSummary }> {
  const it = engine.generate(prompt, options);
  const tokens: GeneratedToken[] = [];
  for (;;) {
    const r = await it.next();
    if (r.done) return { tokens, summary: r.value };
    tokens.push(r.value);
  }
}

const argmax = (x: Float32Array): number => x.reduce((best, v, i) => (v > x[best] ? i : best), 0);

describe("engine", () => {
  let engine: ColmEngine;
  before(async () => {
    engine = await loadModel(makeCheckpoint(TINY_EQUAL, 5), { threads: 1 });
  });
  after(() => engine.close());
  const prompt = [10, 20, 30, 40, 50, 60, 70];

  test("reports the model: chain counts, widths, parameter counts, KV bytes per token", () => {
    const { info } = engine;
    assert.equal(info.nChains, 4);
    assert.deepEqual(info.widths, [16, 32, 48, 64]);
    assert.ok(info.paramCounts.every((p, i) => i === 0 || p > info.paramCounts[i - 1]));
    assert.equal(info.kvBytesPerToken, 2 * 2 * 1 * 8 * 4);
    assert.equal(info.device, "cpu");
  });

  test("switch schedule 4→2→3 under greedy decoding picks what a fresh full forward of each sub-model picks", async () => {
    const schedule = (i: number): number => (i < 4 ? 4 : i < 8 ? 2 : 3);
    const { tokens, summary } = await collect(engine, prompt, { chooseChains: schedule, maxTokens: 12, sampling: { temperature: 0 } });
    assert.equal(tokens.length, 12);
    assert.equal(summary.finishReason, "length");
    const seq = [...prompt];
    for (const t of tokens) {
      assert.equal(t.chains, schedule(t.index));
      const fresh = await fullForward(engine.runner, seq, t.chains);
      const V = engine.info.vocabSize;
      assert.equal(t.tokenId, argmax(fresh.logits.subarray((seq.length - 1) * V)), `token ${t.index} at k=${t.chains}`);
      seq.push(t.tokenId);
    }
  });

  test("chain-1 prefill gives the same greedy text as a full-size prefill", async () => {
    for (const chains of [1, 3, 4]) {
      const a = await collect(engine, prompt, { chains, maxTokens: 6, sampling: { temperature: 0 } });
      const b = await collect(engine, prompt, { chains, maxTokens: 6, sampling: { temperature: 0 }, chain1Prefill: false });
      assert.deepEqual(a.tokens.map((t) => t.tokenId), b.tokens.map((t) => t.tokenId));
    }
  });

  test("same seed, same tokens; sampling at temperature 1", async () => {
    const opts: GenerateOptions = { maxTokens: 10, sampling: { temperature: 1, seed: 42 } };
    const a = await collect(engine, prompt, opts);
    const b = await collect(engine, prompt, opts);
    assert.deepEqual(a.tokens.map((t) => t.tokenId), b.tokens.map((t) => t.tokenId));
  });

  test("abort cancels at the next token and frees the KV cache", async () => {
    const controller = new AbortController();
    const it = engine.generate(prompt, { maxTokens: 50, signal: controller.signal, sampling: { temperature: 0 } });
    await it.next();
    await it.next();
    assert.ok(engine.kvBytesInUse() > 0);
    controller.abort();
    let r = await it.next();
    while (!r.done) r = await it.next();
    assert.equal(r.value.finishReason, "cancelled");
    assert.equal(engine.kvBytesInUse(), 0);
  });

  test("a consumer that stops iterating frees the KV cache", async () => {
    for await (const t of engine.generate(prompt, { maxTokens: 50 })) if (t.index === 2) break;
    assert.equal(engine.kvBytesInUse(), 0);
  });

  test("logprobs: chosen token's logprob and sorted top-N alternatives", async () => {
    const { tokens } = await collect(engine, prompt, { maxTokens: 3, sampling: { temperature: 0, logprobs: 3 } });
    for (const t of tokens) {
      assert.ok(t.logprob !== undefined && t.logprob <= 0);
      assert.equal(t.topLogprobs!.length, 3);
      assert.equal(t.topLogprobs![0].tokenId, t.tokenId, "greedy picks the most likely token");
      assert.ok(t.topLogprobs![0].logprob >= t.topLogprobs![1].logprob);
    }
  });

  test("requests the model cannot serve are refused before any work", async () => {
    const refuse = async (p: number[], o: GenerateOptions, code: string): Promise<void> => {
      await assert.rejects(collect(engine, p, o), (e: unknown) => e instanceof EngineError && e.code === code);
      assert.equal(engine.kvBytesInUse(), 0);
    };
    await refuse(prompt, { maxTokens: 200 }, "context_length_exceeded");
    await refuse([], { maxTokens: 2 }, "empty_prompt");
    await refuse([1, 9999], { maxTokens: 2 }, "invalid_value");
    await refuse(prompt, { maxTokens: 2, chains: 5 }, "invalid_value");
  });
});

test("a graph built out of process and cached on disk serves the same tokens, and is reused", async () => {
  const dir = makeCheckpoint(TINY_EQUAL, 5);
  const cacheDir = tempDir("colm-graphs-");
  const options: GenerateOptions = { chains: 3, maxTokens: 8, sampling: { temperature: 0 } };
  const prompt = [10, 20, 30, 40];
  const inProcess = await loadModel(dir, { threads: 1, graphCache: false });
  const cached = await loadModel(dir, { threads: 1, graphCache: true, graphCacheDir: cacheDir });
  try {
    const a = (await collect(inProcess, prompt, options)).tokens.map((t) => t.tokenId);
    const b = (await collect(cached, prompt, options)).tokens.map((t) => t.tokenId);
    assert.deepEqual(b, a);
    const files = readdirSync(cacheDir);
    assert.equal(files.length, 1);
    assert.match(files[0], /^[0-9a-f]{32}\.onnx$/);
    const mtime = statSync(join(cacheDir, files[0])).mtimeMs;
    assert.equal(await cachedGraph(dir, cacheDir), join(cacheDir, files[0]));
    // Not rebuilt (a rebuild takes a child process, far over 1 ms); the use updated its atime only.
    assert.ok(Math.abs(statSync(join(cacheDir, files[0])).mtimeMs - mtime) < 1, "not rebuilt");
  } finally {
    await inProcess.close();
    await cached.close();
  }
});

test("the graph cache drops the least recently used graphs beyond its byte budget, never the one in use", () => {
  const cacheDir = tempDir("colm-graphs-");
  const names = ["a", "b", "c", "d"].map((n) => join(cacheDir, `${n}.onnx`));
  names.forEach((path, i) => {
    writeFileSync(path, new Uint8Array(1000));
    utimesSync(path, new Date(Date.UTC(2026, 0, 1 + i)), new Date(Date.UTC(2026, 0, 1))); // used on day i
  });
  writeFileSync(join(cacheDir, "notes.txt"), "not a graph");
  assert.deepEqual(pruneGraphCache(cacheDir, names[0], 2500), [names[1], names[2]], "oldest first, skipping the kept one");
  assert.deepEqual(readdirSync(cacheDir).sort(), ["a.onnx", "d.onnx", "notes.txt"]);
  assert.deepEqual(pruneGraphCache(cacheDir, names[0], 2500), [], "within budget: nothing to do");
});

test("COLM_DEVICE=cuda without the CUDA provider falls back to CPU and says so", async () => {
  const messages: string[] = [];
  const engine = await loadModel(makeCheckpoint(TINY_EQUAL, 5), { device: "cuda", threads: 1, log: (m) => messages.push(m) });
  try {
    assert.equal(engine.info.device, "cpu");
    assert.equal(messages.length, 1);
    assert.match(messages[0], /CUDA execution provider (not installed|unavailable).*falling back to CPU/);
  } finally {
    await engine.close();
  }
});

describe("engine text", () => {
  let engine: ColmEngine;
  before(async () => {
    engine = await loadModel(makeCheckpoint(TINY_UNEQUAL, 9), { threads: 1 });
  });
  after(() => engine.close());

  test("stop strings end the generation and are not emitted", async () => {
    const prompt = engine.tokenizer.encode("Hello");
    const free = await collect(engine, prompt, { maxTokens: 12, sampling: { temperature: 0 } });
    const text = free.tokens.map((t) => t.text).join("") + free.summary.tailText;
    assert.ok(text.length >= 4, "the model must write something to stop on");
    const stopAt = text.slice(2, 4);
    const stopped = await collect(engine, prompt, { maxTokens: 12, sampling: { temperature: 0 }, stop: [stopAt] });
    const out = stopped.tokens.map((t) => t.text).join("") + stopped.summary.tailText;
    assert.equal(stopped.summary.finishReason, "stop");
    assert.equal(out, text.slice(0, text.indexOf(stopAt)));
  });
});
