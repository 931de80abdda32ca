// Black-box recording of the HTTP and WebSocket API, to prove that a refactor changes no response.
//
//   node --import tsx test/helpers/api-transcript.ts <repo-root> [--out file.json]
//
// Starts `<repo-root>`'s server as a child process (`node --import tsx server/main.ts`, run in
// <repo-root>, serving <repo-root>/models/colm-kjv on CPU at a free port given through PORT), waits
// until /health answers 200 and the latency router's start-up warm-up has finished, then sends a
// fixed list of requests over real HTTP (node's fetch) and a real `ws` client, one at a time. It
// then starts the same server a second time with COLM_API_KEY set and records the auth cases.
// Nothing here imports the server's code: only the wire is observed.
//
// The transcript lists, per request: its name, what was sent, the status, the relevant headers
// and the body (JSON parsed; SSE split into events; WebSocket messages in order). Only what is
// truly nondeterministic is replaced by a placeholder:
//   - response ids (`cmpl-…`, `chatcmpl-…`): "cmpl-<id1>", "cmpl-<id2>", … numbered in order of
//     appearance within one entry (so "every chunk of a stream has the same id" is still visible);
//   - `created` timestamps: "<created>";
//   - numbers under timing-like keys (…_ms, ms, tps, latency, duration, elapsed, seconds): "<timing>";
//   - GET /v1/router: keys only (the predictions are measured times);
//   - GET /metrics: the `# TYPE` lines only (values depend on timing);
//   - the two WebSocket cases whose outcome depends on when a message lands during a generation
//     (switch and cancel after the first tokens): the token index at which it took effect, and
//     the counts derived from it, plus an explicit consistency check recorded as a boolean.
// Everything else (tokens, text, logprobs, finish_reason, usage, chains, error type/code/param/
// message, model ids, headers such as Allow and Retry-After) is kept verbatim. Object keys are
// sorted, so the JSON is stable whatever order a server writes its keys in.
//
// Every generation is deterministic: greedy (temperature 0) or seeded sampling; the only latency
// budgets used are ones no prediction can meet (0.001 ms → k = 1 once the router is calibrated)
// or every prediction meets (1e9 ms → the largest k).
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { WebSocket } from "ws";
import { freePort } from "../../loadtest/scaleout.ts";

/** The server's configuration for the recording: fixed, so limits in error messages are too. */
export const TRANSCRIPT_ENV: Readonly<Record<string, string>> = {
  HOST: "127.0.0.1",
  COLM_DEVICE: "cpu",
  COLM_MAX_RUNNING: "8",
  COLM_MAX_WAITING: "32",
  COLM_KV_BYTES: "4194304", // 4 MiB: 8 full-context sequences of the bundled model (2 KiB per token)
  COLM_BODY_LIMIT: "16kb",
  COLM_SHUTDOWN_TIMEOUT_MS: "2000",
  COLM_WS_PING_MS: "30000",
  COLM_WS_MAX_BUFFERED_BYTES: "1048576",
};
export const TRANSCRIPT_API_KEY = "transcript-test-key";
const MODEL = "colm-kjv";
const START_TIMEOUT_MS = 120_000;
const STEP_TIMEOUT_MS = 20_000;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export interface TranscriptEntry {
  name: string;
  request: Json;
  status?: number;
  headers?: Record<string, string>;
  body?: Json;
  [k: string]: Json | undefined;
}

export interface Transcript {
  format: string;
  config: { env: Record<string, string>; api_key_run_env: Record<string, string> };
  runs: Array<{ name: string; entries: TranscriptEntry[] }>;
}

// ---------------------------------------------------------------------------------------------
// The server as a child process

interface ServerHandle {
  url: string;
  wsUrl: string;
  /** SIGTERM, wait for exit (SIGKILL after 15 s). */
  stop(): Promise<void>;
}

const children = new Set<ChildProcess>();
let exitHooked = false;

function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  process.on("exit", () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  });
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.once(sig, () => {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
      process.exit(130);
    });
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startServer(root: string, extraEnv: Record<string, string> = {}): Promise<ServerHandle> {
  const main = path.join(root, "server", "main.ts");
  if (!existsSync(main)) throw new Error(`api-transcript: ${main} does not exist (is ${root} a colm-serve checkout?)`);
  const modelDir = path.join(root, "models", MODEL);
  if (!existsSync(path.join(modelDir, "config.json"))) throw new Error(`api-transcript: no bundled model at ${modelDir}`);
  hookExit();
  const port = await freePort();
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || k.startsWith("COLM_") || k === "PORT" || k === "HOST" || k === "NODE_OPTIONS") continue;
    env[k] = v;
  }
  Object.assign(env, TRANSCRIPT_ENV, { PORT: String(port), COLM_MODEL: modelDir }, extraEnv);
  const child = spawn(process.execPath, ["--import", "tsx", "server/main.ts"], { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-20_000);
  };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.once("exit", () => children.delete(child));
  let spawnError: Error | undefined;
  child.once("error", (err) => (spawnError = err));

  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(t);
    }
  };
  const fail = async (why: string): Promise<never> => {
    await stop();
    throw new Error(`api-transcript: the server in ${root} ${why}.\n--- server output (tail) ---\n${output.trim()}\n---`);
  };
  const auth: Record<string, string> = extraEnv.COLM_API_KEY ? { authorization: `Bearer ${extraEnv.COLM_API_KEY}` } : {};
  const deadline = Date.now() + START_TIMEOUT_MS;
  // 1. /health answers 200 (503 while the model loads).
  for (;;) {
    if (spawnError) return fail(`could not be spawned (${spawnError.message})`);
    if (child.exitCode !== null || child.signalCode !== null) return fail(`exited (code ${child.exitCode}, signal ${child.signalCode}) before it was healthy`);
    if (Date.now() > deadline) return fail(`was not healthy within ${START_TIMEOUT_MS / 1000} s`);
    try {
      const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2_000) });
      await r.arrayBuffer();
      if (r.status === 200) break;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  // 2. The router's start-up warm-up has finished (its predictions decide budgeted requests,
  //    and warm-up steps share batches with requests).
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) return fail(`exited (code ${child.exitCode}) while warming up`);
    if (Date.now() > deadline) return fail(`did not finish its router warm-up within ${START_TIMEOUT_MS / 1000} s`);
    if (/router: calibrated/.test(output)) break;
    try {
      const r = await fetch(`${url}/v1/router`, { headers: auth, signal: AbortSignal.timeout(2_000) });
      const body = (await r.json().catch(() => null)) as { calibrated?: unknown } | null;
      if (r.status === 200 && body?.calibrated === true) break;
    } catch {
      // retry
    }
    await sleep(100);
  }
  return { url, wsUrl: url.replace(/^http/, "ws"), stop };
}

// ---------------------------------------------------------------------------------------------
// Normalisation

const RESPONSE_ID = /^([A-Za-z]+)-[A-Za-z0-9]{8,}$/;
const TIMING_KEY = /(^|_)(ms|tps|latency|duration|elapsed|seconds)(_|$)|_ms_|Ms$|Seconds$/;

class Normaliser {
  private readonly ids = new Map<string, string>();

  value(v: unknown, key?: string): Json {
    if (Array.isArray(v)) return v.map((x) => this.value(x));
    if (v !== null && typeof v === "object") {
      const out: { [k: string]: Json } = {};
      for (const k of Object.keys(v as object).sort()) out[k] = this.value((v as Record<string, unknown>)[k], k);
      return out;
    }
    if (key === "id" && typeof v === "string") {
      const m = RESPONSE_ID.exec(v);
      if (m && /\d/.test(v.slice(m[1].length))) {
        if (!this.ids.has(v)) this.ids.set(v, `${m[1]}-<id${this.ids.size + 1}>`);
        return this.ids.get(v)!;
      }
    }
    if (key === "created" && typeof v === "number") return "<created>";
    if (key !== undefined && typeof v === "number" && TIMING_KEY.test(key)) return "<timing>";
    if (v === undefined) return null;
    return v as Json;
  }
}

/** Keys only: every leaf becomes its JSON type; arrays keep their length. */
function shapeOf(v: unknown): Json {
  if (Array.isArray(v)) return v.map(shapeOf);
  if (v !== null && typeof v === "object") {
    const out: { [k: string]: Json } = {};
    for (const k of Object.keys(v as object).sort()) out[k] = shapeOf((v as Record<string, unknown>)[k]);
    return out;
  }
  return "<leaf>";
}

const KEPT_HEADERS = new Set(["content-type", "allow", "retry-after", "upgrade", "cache-control", "www-authenticate", "location"]);

function pickHeaders(h: Headers | Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  const entries: Array<[string, string]> =
    h instanceof Headers ? [...h.entries()] : Object.entries(h).flatMap(([k, v]) => (v === undefined ? [] : [[k, Array.isArray(v) ? v.join(", ") : v] as [string, string]]));
  for (const [k0, v] of entries) {
    const k = k0.toLowerCase();
    if (KEPT_HEADERS.has(k) || k.startsWith("x-") || k.includes("colm")) out[k] = v;
  }
  return Object.fromEntries(Object.keys(out).sort().map((k) => [k, out[k]]));
}

function parseSse(text: string): Json[] {
  const events: Json[] = [];
  for (const block of text.split(/\r?\n\r?\n/)) {
    if (block.trim() === "") continue;
    const ev: { [k: string]: Json } = {};
    const data: string[] = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith(":")) continue; // comment / keepalive
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "data") data.push(value);
      else ev[field] = value;
    }
    if (data.length > 0) {
      const payload = data.join("\n");
      try {
        ev.data = payload === "[DONE]" ? "[DONE]" : (JSON.parse(payload) as Json);
      } catch {
        ev.data_text = payload;
      }
    }
    events.push(ev);
  }
  return events;
}

// ---------------------------------------------------------------------------------------------
// HTTP

interface HttpCase {
  name: string;
  method?: string;
  path: string;
  /** A JSON value (sent as JSON) or a raw string body. */
  json?: unknown;
  raw?: string;
  headers?: Record<string, string>;
  /** How the request appears in the transcript when the body is too big to copy. */
  describe?: Json;
  /** Transform the parsed body before normalising (router: keys only, metrics: TYPE lines). */
  view?: "shape" | "metric-types";
}

async function httpEntry(base: string, c: HttpCase, defaultHeaders: Record<string, string> = {}): Promise<TranscriptEntry> {
  const method = c.method ?? (c.json !== undefined || c.raw !== undefined ? "POST" : "GET");
  const headers: Record<string, string> = { ...defaultHeaders, ...(c.headers ?? {}) };
  let body: string | undefined;
  if (c.json !== undefined) {
    body = JSON.stringify(c.json);
    if (!Object.keys(headers).some((k) => k.toLowerCase() === "content-type")) headers["content-type"] = "application/json";
  } else if (c.raw !== undefined) body = c.raw;
  const res = await fetch(base + c.path, { method, headers, body, signal: AbortSignal.timeout(STEP_TIMEOUT_MS) });
  const text = await res.text();
  const ctype = res.headers.get("content-type") ?? "";
  let parsed: unknown;
  if (ctype.startsWith("text/event-stream")) parsed = { sse: parseSse(text) };
  else if (c.view === "metric-types") parsed = { type_lines: text.split("\n").filter((l) => l.startsWith("# TYPE ")).sort() };
  else {
    try {
      parsed = text === "" ? null : JSON.parse(text);
    } catch {
      parsed = { text };
    }
    if (c.view === "shape") parsed = { keys_only: shapeOf(parsed) };
  }
  const request: { [k: string]: Json } = { method, path: c.path };
  if (c.headers) request.headers = Object.fromEntries(Object.keys(c.headers).sort().map((k) => [k, c.headers![k]]));
  if (c.describe !== undefined) request.body = c.describe;
  else if (c.json !== undefined) request.body = new Normaliser().value(c.json);
  else if (c.raw !== undefined) request.raw_body = c.raw;
  return { name: c.name, request, status: res.status, headers: pickHeaders(res.headers), body: new Normaliser().value(parsed) };
}

// ---------------------------------------------------------------------------------------------
// WebSocket

type Msg = Record<string, any>;

class WsSession {
  readonly received: Msg[] = [];
  private cursor = 0;
  private waiters: Array<() => void> = [];
  closed: { code: number; reason: string } | null = null;

  private constructor(readonly ws: WebSocket) {
    ws.on("message", (data, isBinary) => {
      let m: Msg;
      try {
        m = isBinary ? { binary_frame: data.toString() } : JSON.parse(data.toString());
      } catch {
        m = { unparsable: data.toString() };
      }
      this.received.push(m);
      this.wake();
    });
    ws.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.wake();
    });
  }

  /** Connect; resolves to a session, or to the HTTP answer when the upgrade was refused. */
  static connect(url: string, headers: Record<string, string> = {}): Promise<WsSession | { status: number; headers: Record<string, string>; body: Json }> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { headers, perMessageDeflate: false });
      const session = new WsSession(ws);
      const timer = setTimeout(() => reject(new Error(`api-transcript: WebSocket ${url} did not open`)), STEP_TIMEOUT_MS);
      ws.once("open", () => {
        clearTimeout(timer);
        resolve(session);
      });
      ws.once("unexpected-response", (_req, res) => {
        let text = "";
        res.on("data", (c: Buffer) => (text += c.toString()));
        res.on("end", () => {
          clearTimeout(timer);
          let body: Json;
          try {
            body = JSON.parse(text) as Json;
          } catch {
            body = { text };
          }
          resolve({ status: res.statusCode ?? 0, headers: pickHeaders(res.headers), body });
          ws.terminate();
        });
      });
      ws.once("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  /** Send messages in one TCP write, so the server reads them in one chunk (no timing between them). */
  sendTogether(msgs: Array<unknown>): void {
    const socket = (this.ws as unknown as { _socket: { cork(): void; uncork(): void } })._socket;
    socket.cork();
    for (const m of msgs) this.ws.send(typeof m === "string" ? m : JSON.stringify(m));
    socket.uncork();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Messages received since the last call, up to and including the first that matches `until`. */
  async take(until: (m: Msg) => boolean, onMessage?: (m: Msg) => void): Promise<Msg[]> {
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    const out: Msg[] = [];
    for (;;) {
      while (this.cursor < this.received.length) {
        const m = this.received[this.cursor++];
        out.push(m);
        onMessage?.(m);
        if (until(m)) return out;
      }
      if (this.closed) throw new Error(`api-transcript: the WebSocket closed (${this.closed.code} ${this.closed.reason}) while waiting; got ${JSON.stringify(out)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`api-transcript: timed out waiting for a WebSocket message; got ${JSON.stringify(out)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Whatever arrives within `ms` (to catch stray messages). */
  async drain(ms: number): Promise<Msg[]> {
    await sleep(ms);
    const out = this.received.slice(this.cursor);
    this.cursor = this.received.length;
    return out;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.closed) return resolve();
      this.ws.once("close", () => resolve());
      this.ws.close(1000, "transcript done");
      setTimeout(() => {
        this.ws.terminate();
        resolve();
      }, 2_000).unref();
    });
  }
}

const isEnd = (id: unknown) => (m: Msg) => m.id === id && (m.type === "done" || m.type === "error");
const isDone = (id: unknown) => (m: Msg) => m.id === id && m.type === "done";
const isError = (m: Msg) => m.type === "error";

function wsEntry(name: string, sent: unknown[], received: Msg[], extra: { [k: string]: Json } = {}): TranscriptEntry {
  const n = new Normaliser();
  return {
    name,
    request: { ws_path: "/v1/stream", sent: sent.map((s) => (typeof s === "string" ? { raw_text: s } : n.value(s))) },
    received: received.map((m) => n.value(m)),
    ...extra,
  };
}

/** Collapse consecutive equal values: [4,4,4,1,1] → [4,1]. */
const runs = <T>(xs: T[]): T[] => xs.filter((x, i) => i === 0 || xs[i - 1] !== x);

async function wsSessionEntries(wsBase: string): Promise<TranscriptEntry[]> {
  const entries: TranscriptEntry[] = [];
  const url = `${wsBase}/v1/stream`;
  const s = await WsSession.connect(url);
  if (!(s instanceof WsSession)) {
    entries.push({ name: "ws.connect", request: { ws_path: "/v1/stream" }, status: s.status, headers: s.headers, body: s.body });
    return entries;
  }
  const step = async (name: string, sent: unknown[], until: (m: Msg) => boolean) => {
    s.sendTogether(sent);
    entries.push(wsEntry(name, sent, await s.take(until)));
  };
  const gen = (id: unknown, extra: Record<string, unknown> = {}) => ({ type: "generate", id, model: MODEL, prompt: "And God said", max_tokens: 8, temperature: 0, ...extra });

  await step("ws.generate.greedy", [gen("g1")], isEnd("g1"));
  await step("ws.generate.token-ids.logprobs", [gen(7, { prompt: [65, 110, 100, 32, 71, 111, 100], logprobs: 2, model: `${MODEL}:c2`, max_tokens: 6 })], isEnd(7));
  await step("ws.generate.seeded-sample", [gen("s1", { temperature: 1, seed: 11, top_k: 20 })], isEnd("s1"));
  await step("ws.generate.messages", [{ type: "generate", id: "chat1", model: `${MODEL}:c3`, messages: [{ role: "user", content: "Who made the heaven?" }], max_tokens: 12, temperature: 0 }], isEnd("chat1"));
  await step("ws.generate.stop", [gen("st", { prompt: "And God said", stop: [" the"], max_tokens: 16 })], isEnd("st"));
  await step("ws.ping", [{ type: "ping" }], (m) => m.type === "pong");
  await step("ws.switch.4-to-1.before-first-token", [gen("sw1", { max_tokens: 10 }), { type: "switch", id: "sw1", chains: 1 }], isEnd("sw1"));
  await step("ws.switch.to-current.before-first-token", [gen("sw4", { max_tokens: 4 }), { type: "switch", id: "sw4", chains: 4 }], isEnd("sw4"));
  // The refused switch's error comes first; the generation then runs to its end at 4 chains.
  await step("ws.switch.chains-out-of-range", [gen("sw9", { max_tokens: 4 }), { type: "switch", id: "sw9", chains: 9 }], isDone("sw9"));
  await step("ws.cancel.before-first-token", [gen("c0", { max_tokens: 16 }), { type: "cancel", id: "c0" }], isEnd("c0"));
  // The duplicate is refused with an error; the first generation with that id runs to its end.
  await step("ws.duplicate-id", [gen("dup", { max_tokens: 4 }), gen("dup", { max_tokens: 4 })], isDone("dup"));
  {
    // Two generations at once: grouped by id (their interleaving is timing).
    const sent = [gen("pa", { model: `${MODEL}:c4`, prompt: "In the beginning", max_tokens: 8 }), gen("pb", { model: `${MODEL}:c2`, prompt: "And the earth", max_tokens: 8 })];
    s.sendTogether(sent);
    let doneA = false;
    let doneB = false;
    const got = await s.take((m) => {
      if (m.id === "pa" && m.type === "done") doneA = true;
      if (m.id === "pb" && m.type === "done") doneB = true;
      return doneA && doneB;
    });
    const n = new Normaliser();
    entries.push({
      name: "ws.two-concurrent-generations",
      request: { ws_path: "/v1/stream", sent: sent.map((x) => n.value(x)) },
      received_by_id: { pa: got.filter((m) => m.id === "pa").map((m) => n.value(m)), pb: got.filter((m) => m.id === "pb").map((m) => n.value(m)) },
    });
  }
  {
    // Switch 4 → 1 after the first tokens. Tokens are forced by logit_bias so the text does not
    // depend on where the switch lands; that index is timing and is masked.
    const forced = gen("mid", { prompt: "And", max_tokens: 200, logit_bias: { "101": 100 } });
    s.sendTogether([forced]);
    let switchedSent = false;
    const got = await s.take(isEnd("mid"), (m) => {
      if (!switchedSent && m.type === "token" && m.id === "mid" && m.index >= 1) {
        switchedSent = true;
        s.sendTogether([{ type: "switch", id: "mid", chains: 1 }]);
      }
    });
    const toks = got.filter((m) => m.type === "token");
    const sw = got.find((m) => m.type === "switched");
    const done = got.find((m) => m.type === "done");
    const chains = toks.map((t) => t.chains as number);
    const firstAt1 = chains.indexOf(1);
    const n = new Normaliser();
    entries.push({
      name: "ws.switch.4-to-1.mid-generation",
      request: { ws_path: "/v1/stream", sent: [n.value(forced), n.value({ type: "switch", id: "mid", chains: 1, sent_after: "token index 1" })] },
      received_type_runs: runs(got.map((m) => m.type as string)),
      token_count: toks.length,
      token_indices_contiguous: toks.every((t, i) => t.index === i),
      text: toks.map((t) => t.text).join("") + (done?.tail_text ?? ""),
      token_ids_distinct: [...new Set(toks.map((t) => t.token_id))].sort((a, b) => a - b),
      chains_runs: runs(chains),
      switched: sw ? n.value({ ...sw, at_index: typeof sw.at_index === "number" ? "<timing>" : sw.at_index }) : null,
      switched_at_index_is_first_chains_1_token: sw !== undefined && sw.at_index === firstAt1,
      done_chains_per_token_matches_tokens: done !== undefined && JSON.stringify(done.chains_per_token) === JSON.stringify(chains),
      done: done ? n.value({ ...done, chains_per_token: "<timing>" }) : null,
    });
  }
  {
    // Cancel after the first tokens: how many tokens came before it is timing.
    const forced = gen("cmid", { prompt: "And", max_tokens: 200, logit_bias: { "101": 100 } });
    s.sendTogether([forced]);
    let cancelSent = false;
    const got = await s.take(isEnd("cmid"), (m) => {
      if (!cancelSent && m.type === "token" && m.id === "cmid" && m.index >= 1) {
        cancelSent = true;
        s.sendTogether([{ type: "cancel", id: "cmid" }]);
      }
    });
    const toks = got.filter((m) => m.type === "token");
    const done = got.find((m) => m.type === "done");
    const n = new Normaliser();
    entries.push({
      name: "ws.cancel.mid-generation",
      request: { ws_path: "/v1/stream", sent: [n.value(forced), n.value({ type: "cancel", id: "cmid", sent_after: "token index 1" })] },
      token_count_at_least_2: toks.length >= 2,
      tokens_all_forced: toks.every((t, i) => t.index === i && t.token_id === 101 && t.text === "e" && t.chains === 4),
      usage_matches_tokens: done !== undefined && done.usage?.completion_tokens === toks.length && done.usage?.prompt_tokens + toks.length === done.usage?.total_tokens,
      done: done ? n.value({ ...done, usage: { ...done.usage, completion_tokens: "<timing>", total_tokens: "<timing>" } }) : null,
      other_messages: got.filter((m) => m.type !== "token" && m.type !== "done").map((m) => n.value(m)),
    });
  }
  // Bad messages: each answered with one error, the socket stays open.
  await step("ws.bad.not-json", ["{nope"], isError);
  {
    s.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    entries.push(wsEntry("ws.bad.binary-frame", [{ binary_frame_bytes: [1, 2, 3] }], await s.take(isError)));
  }
  await step("ws.bad.missing-id", [{ type: "generate", model: MODEL, prompt: "And", max_tokens: 4, temperature: 0 }], isError);
  await step("ws.bad.unknown-type", [{ type: "dance", id: "u1" }], isError);
  await step("ws.bad.no-type", [{ id: "u2", prompt: "x" }], isError);
  await step("ws.bad.missing-prompt", [{ type: "generate", id: "np", model: MODEL, max_tokens: 4 }], isError);
  await step("ws.bad.prompt-and-messages", [gen("pm", { messages: [{ role: "user", content: "hi" }] })], isError);
  await step("ws.bad.n-2", [gen("n2", { n: 2 })], isError);
  await step("ws.bad.unknown-model", [gen("um", { model: "gpt-4" })], isError);
  await step("ws.bad.model-c9", [gen("c9", { model: `${MODEL}:c9` })], isError);
  await step("ws.bad.context-too-long", [gen("ctx", { prompt: "a".repeat(300), max_tokens: 4 })], isError);
  await step("ws.bad.max_tokens-100000", [gen("mt", { max_tokens: 100000 })], isError);
  await step("ws.bad.temperature-string", [gen("ts", { temperature: "hot" })], isError);
  await step("ws.bad.token-id-out-of-range", [gen("tid", { prompt: [300] })], isError);
  await step("ws.bad.cancel-unknown-id", [{ type: "cancel", id: "nobody" }], isError);
  await step("ws.bad.switch-unknown-id", [{ type: "switch", id: "nobody", chains: 1 }], isError);
  await step("ws.bad.switch-chains-0", [{ type: "switch", id: "nobody", chains: 0 }], isError);
  await step("ws.generate.after-errors", [gen("g2")], isEnd("g2"));
  entries.push({ name: "ws.stray-messages", request: { wait_ms: 300 }, received: (await s.drain(300)).map((m) => new Normaliser().value(m)) });
  await s.close();
  entries.push({ name: "ws.close", request: { close: 1000 }, close: s.closed ? { code: s.closed.code } : null });

  // Upgrades that are refused.
  const refused = await WsSession.connect(`${wsBase}/v1/not-a-stream`);
  if (refused instanceof WsSession) {
    entries.push({ name: "ws.connect.unknown-path", request: { ws_path: "/v1/not-a-stream" }, opened: true });
    await refused.close();
  } else entries.push({ name: "ws.connect.unknown-path", request: { ws_path: "/v1/not-a-stream" }, status: refused.status, headers: refused.headers, body: new Normaliser().value(refused.body) });
  return entries;
}

// ---------------------------------------------------------------------------------------------
// The fixed request list

function httpCases(): HttpCase[] {
  const M = MODEL;
  const P = "And God said";
  const c = (name: string, body: Record<string, unknown>, extra: Partial<HttpCase> = {}): HttpCase => ({ name, path: "/v1/completions", json: { model: M, prompt: P, max_tokens: 12, temperature: 0, ...body }, ...extra });
  const chat = (name: string, body: Record<string, unknown>, extra: Partial<HttpCase> = {}): HttpCase => ({
    name,
    path: "/v1/chat/completions",
    json: { model: M, messages: [{ role: "user", content: "Who made the heaven and the earth?" }], max_tokens: 12, temperature: 0, ...body },
    ...extra,
  });
  const big = "x".repeat(20_000);
  return [
    // Meta
    { name: "health", path: "/health" },
    { name: "models.list", path: "/v1/models" },
    { name: "models.get.c2", path: `/v1/models/${M}:c2` },
    { name: "models.get.elastic", path: `/v1/models/${M}` },
    { name: "models.get.unknown", path: "/v1/models/nope" },
    { name: "router.keys-only", path: "/v1/router", view: "shape" },
    { name: "metrics.type-lines", path: "/metrics", view: "metric-types" },

    // Completions
    c("completions.text.greedy", { max_tokens: 16 }),
    { name: "completions.default-max-tokens", path: "/v1/completions", json: { model: M, prompt: "In the beginning", temperature: 0 } },
    c("completions.token-ids", { prompt: [65, 110, 100, 32, 71, 111, 100], max_tokens: 8 }),
    c("completions.batch-strings", { prompt: ["And God said", "The LORD is"], max_tokens: 8 }),
    c("completions.batch-token-arrays", { prompt: [[65, 110, 100], [84, 104, 101, 32]], max_tokens: 6 }),
    c("completions.n3.seed", { n: 3, temperature: 0.9, seed: 42, max_tokens: 8 }),
    c("completions.n2.batch2.seed", { prompt: ["And", "The"], n: 2, temperature: 0.8, seed: 5, max_tokens: 6 }),
    c("completions.sample.seed7", { temperature: 1.2, seed: 7 }),
    c("completions.sample.seed7.again", { temperature: 1.2, seed: 7 }),
    c("completions.top_p", { temperature: 1, top_p: 0.5, seed: 3 }),
    c("completions.top_k", { temperature: 1, top_k: 5, seed: 3 }),
    c("completions.min_p", { temperature: 1, min_p: 0.2, seed: 3 }),
    c("completions.top_p-0-is-greedy", { temperature: 1, top_p: 0 }),
    c("completions.penalties", { presence_penalty: 1, frequency_penalty: 0.5, repetition_penalty: 1.3 }),
    c("completions.logit_bias", { logit_bias: { "65": 100 }, max_tokens: 4 }),
    c("completions.stop.string", { stop: " the", max_tokens: 16 }),
    c("completions.stop.array", { stop: ["\n", "e"], max_tokens: 16 }),
    c("completions.max_tokens-1", { max_tokens: 1 }),
    c("completions.echo", { echo: true, max_tokens: 6 }),
    c("completions.logprobs-3", { logprobs: 3, max_tokens: 5 }),
    c("completions.logprobs-0", { logprobs: 0, max_tokens: 3 }),
    c("completions.echo.logprobs-2", { echo: true, logprobs: 2, max_tokens: 3 }),
    // null = "not set" (temperature stays 0: a null temperature would sample without a seed)
    c("completions.nulls-and-unknown-fields", { top_p: null, top_k: null, min_p: null, n: null, stop: null, seed: null, logprobs: null, echo: null, stream: null, chains: null, latency_budget: null, user: "someone", some_unknown_field: 1 }),
    c("completions.stream", { stream: true, max_tokens: 6 }),
    c("completions.stream.include_usage", { stream: true, stream_options: { include_usage: true }, max_tokens: 4 }),
    c("completions.stream.echo.logprobs-1", { stream: true, echo: true, logprobs: 1, max_tokens: 3 }),
    c("completions.stream.n2.seed", { stream: true, n: 2, temperature: 1, seed: 9, max_tokens: 4 }),
    c("completions.stream.stop", { stream: true, stop: " the", max_tokens: 16 }),
    c("completions.model.c1", { model: `${M}:c1`, max_tokens: 16 }),
    c("completions.model.c2", { model: `${M}:c2`, max_tokens: 16 }),
    c("completions.model.c3", { model: `${M}:c3`, max_tokens: 16 }),
    c("completions.model.c4", { model: `${M}:c4`, max_tokens: 16 }),
    c("completions.chains-field-2", { chains: 2, max_tokens: 16 }),
    c("completions.chains-field-matches-model", { model: `${M}:c3`, chains: 3, max_tokens: 8 }),
    c("completions.latency_budget.huge", { latency_budget: { ttft_ms: 1e9, tpot_ms: 1e9, total_ms: 1e9 }, max_tokens: 8 }),
    c("completions.latency_budget.unmeetable", { latency_budget: { ttft_ms: 0.001 }, max_tokens: 8 }),
    c("completions.latency_budget.header-unmeetable", { max_tokens: 8 }, { headers: { "X-Latency-Budget-TTFT-Ms": "0.001" } }),
    c("completions.form-content-type-parsed-as-json", { max_tokens: 4 }, { headers: { "content-type": "application/x-www-form-urlencoded" } }),

    // Chat
    chat("chat.basic", {}),
    chat("chat.multi-turn", {
      messages: [
        { role: "system", content: "Answer as the scripture would." },
        { role: "user", content: "Who made light?" },
        { role: "assistant", content: "God made light." },
        { role: "user", content: "And what did He call it?" },
      ],
    }),
    chat("chat.content-parts", { messages: [{ role: "user", content: [{ type: "text", text: "Who made " }, { type: "text", text: "the heaven?" }] }] }),
    chat("chat.developer-and-tool-roles", { messages: [{ role: "developer", content: "Be brief." }, { role: "user", content: "Hi", name: "abe" }, { role: "tool", content: "ok" }] }),
    chat("chat.max_completion_tokens", { max_completion_tokens: 5 }),
    chat("chat.model.c1", { model: `${M}:c1` }),
    chat("chat.n2.seed", { n: 2, temperature: 1, seed: 21, max_tokens: 6 }),
    chat("chat.logprobs.top2", { logprobs: true, top_logprobs: 2, max_tokens: 3 }),
    chat("chat.stop", { stop: "the", max_tokens: 16 }),
    chat("chat.stream", { stream: true, max_tokens: 6 }),
    chat("chat.stream.include_usage.logprobs", { stream: true, stream_options: { include_usage: true }, logprobs: true, top_logprobs: 1, max_tokens: 3 }),
    chat("chat.user-message-without-content", { messages: [{ role: "user" }], max_tokens: 4 }),

    // Errors: body
    { name: "error.malformed-json", path: "/v1/completions", raw: '{"model": "colm-kjv", "prompt": ', headers: { "content-type": "application/json" } },
    { name: "error.empty-body", path: "/v1/completions", raw: "", headers: { "content-type": "application/json" } },
    { name: "error.body-is-array", path: "/v1/completions", json: [1, 2] },
    { name: "error.missing-prompt", path: "/v1/completions", json: { model: M, max_tokens: 4 } },
    { name: "error.missing-model", path: "/v1/completions", json: { prompt: P, max_tokens: 4 } },
    c("error.prompt-number", { prompt: 42 }),
    c("error.prompt-empty-array", { prompt: [] }),
    c("error.prompt-mixed-array", { prompt: ["a", 1] }),
    c("error.token-id-out-of-range", { prompt: [65, 300] }),
    c("error.temperature-string", { temperature: "hot" }),
    c("error.temperature-3", { temperature: 3 }),
    c("error.top_p-1.5", { top_p: 1.5 }),
    c("error.max_tokens-0", { max_tokens: 0 }),
    c("error.max_tokens-1.5", { max_tokens: 1.5 }),
    c("error.max_tokens-100000", { max_tokens: 100000 }),
    c("error.prompt-longer-than-context", { prompt: "a".repeat(300), max_tokens: 1 }),
    c("error.prompt-fills-context-default-max-tokens", { prompt: "a".repeat(256), max_tokens: null }),
    c("error.n-17", { n: 17 }),
    c("error.stream-string", { stream: "yes" }),
    c("error.stop-empty-string", { stop: "" }),
    c("error.stop-5-strings", { stop: ["a", "b", "c", "d", "e"] }),
    c("error.logprobs-21", { logprobs: 21 }),
    c("error.logprobs-negative", { logprobs: -1 }),
    c("error.logprobs-true", { logprobs: true }),
    c("error.logit_bias-bad-key", { logit_bias: { abc: 1 } }),
    c("error.logit_bias-out-of-vocab", { logit_bias: { "300": 1 } }),
    c("error.unknown-model", { model: "gpt-4" }),
    c("error.model-c0", { model: `${M}:c0` }),
    c("error.model-c9", { model: `${M}:c9` }),
    c("error.chains-5", { chains: 5 }),
    c("error.chains-0", { chains: 0 }),
    c("error.chains-contradicts-model", { model: `${M}:c2`, chains: 3 }),
    c("error.latency_budget-unknown-key", { latency_budget: { foo: 1 } }),
    c("error.latency_budget-negative", { latency_budget: { ttft_ms: -5 } }),
    c("error.latency_budget-header-not-a-number", {}, { headers: { "X-Latency-Budget-TPOT-Ms": "fast" } }),
    c("error.kv-budget-exceeded", { prompt: "a".repeat(200), n: 16, max_tokens: 16 }),
    { name: "error.payload-too-large", path: "/v1/completions", json: { model: M, prompt: big, max_tokens: 1 }, describe: { model: M, prompt: "<20000 × 'x'>", max_tokens: 1 } },
    chat("error.chat.messages-empty", { messages: [] }),
    chat("error.chat.messages-missing", { messages: undefined }),
    chat("error.chat.bad-role", { messages: [{ role: "wizard", content: "hi" }] }),
    chat("error.chat.content-number", { messages: [{ role: "user", content: 5 }] }),
    chat("error.chat.top_logprobs-without-logprobs", { top_logprobs: 2 }),
    chat("error.chat.prompt-longer-than-context", { messages: [{ role: "user", content: "a".repeat(300) }] }),

    // Errors: routes and methods
    { name: "error.unknown-route.v1", path: "/v1/nope" },
    { name: "error.unknown-route.root-post", method: "POST", path: "/foo", json: {} },
    { name: "error.wrong-method.get-completions", method: "GET", path: "/v1/completions" },
    { name: "error.wrong-method.post-models", method: "POST", path: "/v1/models", json: {} },
    { name: "error.wrong-method.delete-health", method: "DELETE", path: "/health" },
    { name: "error.stream-endpoint-over-http", path: "/v1/stream" },

    // Still serving, unchanged, after all of that
    c("completions.text.greedy.after-errors", { max_tokens: 16 }),
    { name: "health.after-errors", path: "/health" },
  ];
}

function authCases(key: string): HttpCase[] {
  const body = { model: MODEL, prompt: "And God said", max_tokens: 6, temperature: 0 };
  return [
    { name: "auth.health.no-key", path: "/health" },
    { name: "auth.metrics.no-key", path: "/metrics", view: "metric-types" },
    { name: "auth.models.no-key", path: "/v1/models" },
    { name: "auth.models.wrong-key", path: "/v1/models", headers: { authorization: "Bearer wrong-key" } },
    { name: "auth.models.not-bearer", path: "/v1/models", headers: { authorization: key } },
    { name: "auth.models.key", path: "/v1/models", headers: { authorization: `Bearer ${key}` } },
    { name: "auth.completions.no-key", path: "/v1/completions", json: body },
    { name: "auth.completions.key", path: "/v1/completions", json: body, headers: { authorization: `Bearer ${key}` } },
    { name: "auth.completions.key.lowercase-bearer", path: "/v1/completions", json: body, headers: { authorization: `bearer ${key}` } },
    { name: "auth.chat.no-key", path: "/v1/chat/completions", json: { model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 4, temperature: 0 } },
    { name: "auth.unknown-route.no-key", path: "/v1/nope" },
    { name: "auth.unknown-route.key", path: "/v1/nope", headers: { authorization: `Bearer ${key}` } },
  ];
}

async function authWsEntries(wsBase: string, key: string): Promise<TranscriptEntry[]> {
  const out: TranscriptEntry[] = [];
  const gen = { type: "generate", id: "a1", model: MODEL, prompt: "And God said", max_tokens: 4, temperature: 0 };
  for (const [name, suffix, headers] of [
    ["auth.ws.no-key", "", {}],
    ["auth.ws.wrong-key", "", { authorization: "Bearer wrong-key" }],
    ["auth.ws.key-header", "", { authorization: `Bearer ${key}` }],
    ["auth.ws.key-query", `?api_key=${encodeURIComponent(key)}`, {}],
  ] as Array<[string, string, Record<string, string>]>) {
    const s = await WsSession.connect(`${wsBase}/v1/stream${suffix}`, headers);
    const request: Json = { ws_path: `/v1/stream${suffix.replace(key, "<key>")}`, headers: Object.keys(headers).length ? { authorization: headers.authorization.replace(key, "<key>") } : null };
    if (s instanceof WsSession) {
      s.sendTogether([gen]);
      const got = await s.take(isEnd("a1"));
      out.push({ name, request, opened: true, sent: new Normaliser().value(gen), received: got.map((m) => new Normaliser().value(m)) });
      await s.close();
    } else out.push({ name, request, opened: false, status: s.status, headers: s.headers, body: new Normaliser().value(s.body) });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

export async function recordTranscript(root: string, log: (line: string) => void = () => undefined): Promise<Transcript> {
  root = path.resolve(root);
  const transcript: Transcript = {
    format: "colm-serve api transcript v1",
    config: { env: { ...TRANSCRIPT_ENV, PORT: "<free port>", COLM_MODEL: "<root>/models/colm-kjv" }, api_key_run_env: { COLM_API_KEY: "<key>" } },
    runs: [],
  };
  {
    const t0 = performance.now();
    const server = await startServer(root);
    log(`api-transcript: server up at ${server.url} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    try {
      const entries: TranscriptEntry[] = [];
      for (const c of httpCases()) entries.push(await httpEntry(server.url, c));
      entries.push(...(await wsSessionEntries(server.wsUrl)));
      entries.push(await httpEntry(server.url, { name: "health.after-ws", path: "/health" }));
      transcript.runs.push({ name: "default", entries });
    } finally {
      await server.stop();
    }
  }
  {
    const server = await startServer(root, { COLM_API_KEY: TRANSCRIPT_API_KEY });
    try {
      const entries: TranscriptEntry[] = [];
      for (const c of authCases(TRANSCRIPT_API_KEY)) {
        const e = await httpEntry(server.url, c);
        const req = e.request as { headers?: Record<string, string> };
        if (req.headers?.authorization) req.headers.authorization = req.headers.authorization.replace(TRANSCRIPT_API_KEY, "<key>");
        entries.push(e);
      }
      entries.push(...(await authWsEntries(server.wsUrl, TRANSCRIPT_API_KEY)));
      transcript.runs.push({ name: "api-key", entries });
    } finally {
      await server.stop();
    }
  }
  return transcript;
}

export function countRequests(t: Transcript): number {
  return t.runs.reduce((a, r) => a + r.entries.length, 0);
}

export function serialise(t: Transcript): string {
  return JSON.stringify(t, null, 2) + "\n";
}

async function cli(): Promise<void> {
  const { values, positionals } = parseArgs({ options: { out: { type: "string" } }, allowPositionals: true });
  if (positionals.length !== 1) {
    console.error("usage: node --import tsx test/helpers/api-transcript.ts <repo-root> [--out file.json]");
    process.exit(2);
  }
  const t0 = performance.now();
  const t = await recordTranscript(positionals[0], (l) => console.error(l));
  const text = serialise(t);
  if (values.out) {
    mkdirSync(path.dirname(path.resolve(values.out)), { recursive: true });
    writeFileSync(values.out, text);
  } else process.stdout.write(text);
  console.error(`api-transcript: ${countRequests(t)} entries (${t.runs.map((r) => `${r.name} ${r.entries.length}`).join(", ")}) in ${((performance.now() - t0) / 1000).toFixed(1)} s${values.out ? ` → ${values.out}` : ""}`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  cli().then(
    () => process.exit(0),
    (err) => {
      console.error((err as Error)?.message ?? String(err));
      process.exit(1);
    },
  );
}
