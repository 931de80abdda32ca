// Continuous batching on the real engine: concurrent generations share batched decode steps and
// each gets exactly the tokens it gets alone.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { loadModel, type ColmEngine } from "../server/engine/engine.ts";
import type { GenerateOptions } from "../server/engine/types.ts";
import { TINY_EQUAL, makeCheckpoint } from "./helpers/checkpoints.ts";

async function tokensOf(engine: ColmEngine, prompt: number[], options: GenerateOptions, onToken?: () => void): Promise<{ ids: number[]; chains: number[] }> {
  const ids: number[] = [];
  const chains: number[] = [];
  for await (const t of engine.generate(prompt, options)) {
    ids.push(t.tokenId);
    chains.push(t.chains);
    onToken?.();
  }
  return { ids, chains };
}

describe("scheduler", () => {
  let engine: ColmEngine;
  before(async () => {
    engine = await loadModel(makeCheckpoint(TINY_EQUAL, 13), { threads: 1, maxBatch: 4 });
  });
  after(() => engine.close());

  const requests: { prompt: number[]; options: GenerateOptions }[] = Array.from({ length: 8 }, (_, i) => ({
    prompt: Array.from({ length: 3 + 2 * i }, (_, j) => (i * 11 + j * 5 + 1) % 97),
    options: {
      maxTokens: 6 + (i % 4) * 3,
      sampling: { temperature: 0 },
      ...(i === 5 ? { chooseChains: (index: number) => (index < 4 ? 4 : 1) } : { chains: (i % 4) + 1 }),
    },
  }));

  test("8 concurrent greedy requests (mixed chain counts, one switching mid-way) produce exactly their solo tokens", async () => {
    const alone = [];
    for (const r of requests) alone.push(await tokensOf(engine, r.prompt, r.options));
    let peakRunning = 0;
    const together = await Promise.all(
      requests.map((r) => tokensOf(engine, r.prompt, r.options, () => (peakRunning = Math.max(peakRunning, engine.load.running)))),
    );
    assert.deepEqual(together, alone);
    assert.ok(peakRunning > 1, "requests shared decode steps");
    assert.deepEqual(together[5].chains.slice(0, 4), [4, 4, 4, 4]);
    assert.ok(together[5].chains.slice(4).every((k) => k === 1), "the switching request ran at 1 chain after token 4");
    assert.equal(engine.kvBytesInUse(), 0);
    assert.deepEqual(engine.load, { running: 0, waiting: 0 });
  });

  test("a long prompt joining running sequences is prefilled in chunks between their decode steps", async () => {
    const chunked = await loadModel(makeCheckpoint(TINY_EQUAL, 13), { threads: 1, maxBatch: 4, prefillChunk: 8 });
    try {
      const long = { prompt: Array.from({ length: 60 }, (_, j) => (j * 7 + 3) % 97), options: { maxTokens: 5, chains: 3, sampling: { temperature: 0 }, cache: false } as GenerateOptions }; // no prefix cache: the solo run would serve the joined one
      const solo = await tokensOf(chunked, long.prompt, long.options);
      const events: string[] = [];
      const short = requests.slice(0, 2).map((r) => ({ ...r, options: { ...r.options, maxTokens: 20 } }));
      const running = short.map((r, i) => tokensOf(chunked, r.prompt, r.options, () => events.push(`s${i}`)));
      while (chunked.load.running < 2) await new Promise((resolve) => setImmediate(resolve));
      events.push("long:submitted");
      const joined = await tokensOf(chunked, long.prompt, long.options, () => events.push("long"));
      await Promise.all(running);
      assert.deepEqual(joined, solo, "chunked prefill gives the same tokens");
      const between = events.slice(events.indexOf("long:submitted"), events.indexOf("long")).filter((e) => e.startsWith("s")).length;
      assert.ok(between >= 2 * 6, `running sequences kept decoding during the 59-token prefill (8 per step): ${between} tokens`);
    } finally {
      await chunked.close();
    }
  });

  test("a failing model call fails the generations in it, frees their rows, and the next request works", async () => {
    const runner = engine.runner;
    const real = runner.stepRows.bind(runner);
    let calls = 0;
    runner.stepRows = async (...args: Parameters<typeof real>) => {
      if (++calls === 3) throw new Error("injected fault");
      return real(...args);
    };
    try {
      const outcomes = await Promise.allSettled(requests.slice(0, 3).map((r) => tokensOf(engine, r.prompt, r.options)));
      assert.ok(outcomes.some((o) => o.status === "rejected" && /injected fault/.test(String(o.reason))));
    } finally {
      runner.stepRows = real;
    }
    assert.equal(engine.kvBytesInUse(), 0);
    assert.deepEqual(engine.load, { running: 0, waiting: 0 });
    const again = await tokensOf(engine, requests[0].prompt, requests[0].options);
    assert.equal(again.ids.length, requests[0].options.maxTokens);
  });

  test("more requests than rows wait for a row and still finish; a cancelled one leaves at once", async () => {
    const controller = new AbortController();
    const cancelled = (async () => {
      let n = 0;
      for await (const _ of engine.generate([1, 2, 3], { maxTokens: 50, signal: controller.signal })) if (++n === 2) controller.abort();
      return n;
    })();
    const others = Promise.all(requests.slice(0, 6).map((r) => tokensOf(engine, r.prompt, r.options)));
    const [n, results] = await Promise.all([cancelled, others]);
    assert.ok(n < 50);
    results.forEach((res, i) => assert.equal(res.ids.length, requests[i].options.maxTokens));
    assert.equal(engine.kvBytesInUse(), 0);
  });
});
