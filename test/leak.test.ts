// A per-request leak shows up as heap that stays after garbage collection: thousands of small
// requests of every kind (JSON, SSE, chat, WebSocket with switches and cancels, abandoned streams,
// refused requests) sent to a real server by another process; after a warm-up, the server's heap
// used after a full GC must stay flat from one batch of requests to the next, and nothing may stay
// running or reserved.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { runInNewContext } from "node:vm";
import { setFlagsFromString } from "node:v8";
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadTestEngine, startApp, waitFor, writeTestCheckpoint, type RunningApp, type TestCheckpoint } from "./helpers/server-fixture.ts";

const HERE = dirname(fileURLToPath(import.meta.url));

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

let ckpt: TestCheckpoint;
let app: RunningApp;

before(async () => {
  ckpt = await writeTestCheckpoint("tiny", 31);
  app = await startApp(await loadTestEngine(ckpt.dir));
});
after(async () => {
  await app.close();
  await app.colm.engine?.close();
  ckpt.cleanup();
});

/** COUNT requests of the mix from another process (loadtest/traffic-mix.ts), then wait until idle. */
async function drive(count: number): Promise<void> {
  const client = spawn(process.execPath, ["--import", "tsx", join(HERE, "..", "loadtest", "traffic-mix.ts"), app.url, String(count)], { stdio: ["ignore", "inherit", "inherit"] });
  const code = await new Promise((resolve) => client.once("exit", resolve));
  assert.equal(code, 0, "the client ended cleanly");
  await waitFor(() => app.colm.admission.running === 0 && app.colm.inflight.size === 0 && app.colm.stream.connections === 0, 10_000, "idle");
}

async function heapAfterGc(): Promise<number> {
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 50));
  }
  return process.memoryUsage().heapUsed;
}

test("heap used after GC stays flat over 2 × 2100 requests of every kind, after a warm-up", { timeout: 300_000 }, async () => {
  await drive(1400); // warm-up: compiled code, caches and pools reach their size
  const warm = await heapAfterGc();
  await drive(2100);
  const first = await heapAfterGc();
  await drive(2100);
  const second = await heapAfterGc();
  const kib = (b: number) => `${(b / 1024).toFixed(0)} KiB`;
  console.log(`server heap after GC: +${kib(first - warm)} over the first 2100 requests, +${kib(second - first)} over the next 2100`);
  // A leak of 256 B a request would add 525 KiB over the second run.
  assert.ok(second - first < 512 * 1024, `heap used grew by ${kib(second - first)} over the second 2100 requests`);
  assert.equal(app.colm.engine!.kvBytesInUse(), 0, "no KV cache held");
  assert.equal(app.colm.admission.kvReservedBytes, 0, "no KV reserved");
});
