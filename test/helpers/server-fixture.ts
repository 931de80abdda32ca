// Shared utilities for the server tests: a small random checkpoint loaded by the real engine,
// an app listening on 127.0.0.1:0, an SSE parser, a Prometheus text parser and a ws client
// that queues messages.
import { mkdtempSync, rmSync } from "node:fs";
import { after, before } from "node:test";
import type http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { WebSocket } from "ws";
import type { ColmConfigJson } from "../../models/config.ts";
import { writeRandomCheckpoint } from "../../kernels/random-checkpoint.ts";
import { TINY_EQUAL } from "./checkpoints.ts";
import { createApp, listeningUrl, type AppOptions, type ColmApp } from "../../server/api/app.ts";
import type { Engine } from "../../server/engine/types.ts";
import { loadModel } from "../../server/engine/engine.ts";

/** vocab 256 (byte tokenizer), 4 equal chains, 2 layers: loads and generates in milliseconds. */
export const SERVER_TEST_CONFIG: ColmConfigJson = {
  ...TINY_EQUAL,
  vocab_size: 256,
  head_dim: 16,
  kv_heads: 2,
  ffn_chain_dims: [32, 32, 32, 32],
  max_position: 256,
  tie_embeddings: true,
};

export interface TestCheckpoint {
  dir: string;
  cleanup(): void;
}

/** Write a random checkpoint named `name` (the model id) into a fresh temp folder. */
export async function writeTestCheckpoint(name = "tiny", seed = 7, overrides: Partial<ColmConfigJson> = {}): Promise<TestCheckpoint> {
  const root = mkdtempSync(join(tmpdir(), "colm-server-test-"));
  const dir = join(root, name);
  writeRandomCheckpoint(dir, { ...SERVER_TEST_CONFIG, ...overrides }, seed);
  return { dir, cleanup: () => rmSync(root, { recursive: true, force: true }) };
}

export async function loadTestEngine(dir: string): Promise<Engine> {
  return loadModel(dir, { device: "cpu" });
}

export interface RunningApp {
  colm: ColmApp;
  server: http.Server;
  url: string;
  wsUrl: string;
  close(): Promise<void>;
}

export async function startApp(engine: Engine, options: AppOptions = {}): Promise<RunningApp> {
  const colm = createApp(engine, { log: () => undefined, ...options });
  const server = await colm.listen(0, "127.0.0.1");
  const url = listeningUrl(server);
  return { colm, server, url, wsUrl: url.replace(/^http/, "ws") + "/v1/stream", close: () => colm.close() };
}

/** Parse an SSE body into its `data:` payloads: JSON objects, or the string "[DONE]". */
export function parseSse(text: string): unknown[] {
  const out: unknown[] = [];
  for (const block of text.split(/\r?\n\r?\n/)) {
    if (block.trim() === "") continue;
    const lines = block.split(/\r?\n/);
    const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
    const other = lines.filter((l) => l !== "" && !l.startsWith("data:") && !l.startsWith(":"));
    if (other.length > 0) throw new Error(`unexpected SSE line(s): ${JSON.stringify(other)}`);
    if (data.length === 0) continue;
    const payload = data.join("\n");
    out.push(payload === "[DONE]" ? "[DONE]" : JSON.parse(payload));
  }
  return out;
}

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parse Prometheus text exposition format (0.0.4); throws on any malformed line. */
export function parsePrometheus(text: string): Sample[] {
  const samples: Sample[] = [];
  const typed = new Map<string, string>();
  const lineRe = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$/;
  const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/y;
  for (const line of text.split("\n")) {
    if (line === "") continue;
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*)(?: (.*))?$/.exec(line);
      if (!m) throw new Error(`bad comment line: ${line}`);
      if (m[1] === "TYPE") {
        if (!["counter", "gauge", "histogram", "summary", "untyped"].includes(m[3] ?? "")) throw new Error(`bad TYPE: ${line}`);
        typed.set(m[2], m[3]!);
      }
      continue;
    }
    const m = lineRe.exec(line);
    if (!m) throw new Error(`bad sample line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[3]) {
      labelRe.lastIndex = 0;
      let pos = 0;
      while (pos < m[3].length) {
        labelRe.lastIndex = pos;
        const lm = labelRe.exec(m[3]);
        if (!lm) throw new Error(`bad labels: ${line}`);
        labels[lm[1]] = lm[2].replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
        pos = labelRe.lastIndex;
      }
    }
    // Values follow Go's ParseFloat: NaN and ±Inf in any letter case.
    const raw = m[4];
    const v = /^\+?inf(inity)?$/i.test(raw) ? Infinity : /^-inf(inity)?$/i.test(raw) ? -Infinity : /^nan$/i.test(raw) ? NaN : Number(raw);
    if (Number.isNaN(v) && !/^nan$/i.test(raw)) throw new Error(`bad value: ${line}`);
    const base = m[1].replace(/_(bucket|sum|count|total|created)$/, "");
    if (!typed.has(m[1]) && !typed.has(base)) throw new Error(`sample without TYPE: ${line}`);
    samples.push({ name: m[1], labels, value: v });
  }
  return samples;
}

/** Sum of the samples named `name` whose labels include `labels`. */
export function metricValue(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
}

export async function scrape(url: string): Promise<Sample[]> {
  const res = await fetch(`${url}/metrics`);
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  return parsePrometheus(await res.text());
}

/** Poll `fn` until it returns true (or throw after `timeoutMs`). */
export async function waitFor(fn: () => boolean | Promise<boolean>, timeoutMs = 5000, what = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A ws client that queues every JSON message it receives. */
export class WsClient {
  readonly ws: WebSocket;
  readonly received: any[] = [];
  private waiters: Array<() => void> = [];
  closed: { code: number; reason: string } | null = null;

  private constructor(ws: WebSocket) {
    this.ws = ws;
    ws.on("message", (data) => {
      this.received.push(JSON.parse(data.toString()));
      this.wake();
    });
    ws.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.wake();
    });
  }

  static open(url: string, headers: Record<string, string> = {}): Promise<WsClient> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { headers });
      const client = new WsClient(ws);
      ws.once("open", () => resolve(client));
      ws.once("error", reject);
      ws.once("unexpected-response", (_req, res) => reject(new Error(`unexpected response ${res.statusCode}`)));
    });
  }

  send(msg: unknown): void {
    this.ws.send(typeof msg === "string" ? msg : JSON.stringify(msg));
  }

  private wake(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }

  /** Wait for the first received message (from `from` on) that matches; returns its position. */
  async waitFor(pred: (m: any) => boolean, timeoutMs = 10_000, from = 0): Promise<any> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.received.slice(from).find(pred);
      if (found !== undefined) return found;
      if (this.closed) throw new Error(`socket closed (${this.closed.code} ${this.closed.reason}) before the message came`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; received: ${JSON.stringify(this.received.slice(-5))}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      this.ws.once("close", () => resolve());
      this.ws.close();
    });
  }
}

export interface ServedTestModel {
  engine: Engine;
  running: RunningApp;
}

/**
 * For a test file: registers before/after hooks that write a random checkpoint, load it in the
 * real engine and start an app listening on 127.0.0.1:0, then tear all three down. `onReady`
 * (and the returned object's fields) see them once that hook has run.
 */
export function serveTestModel(seed: number, options: AppOptions = {}, onReady: (served: ServedTestModel) => void = () => {}): ServedTestModel {
  const served = {} as ServedTestModel;
  let ckpt: TestCheckpoint;
  before(async () => {
    ckpt = await writeTestCheckpoint("tiny", seed);
    served.engine = await loadTestEngine(ckpt.dir);
    served.running = await startApp(served.engine, options);
    onReady(served);
  });
  after(async () => {
    await served.running.close();
    await served.engine.close();
    ckpt.cleanup();
  });
  return served;
}
