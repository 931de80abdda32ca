// The two ways the load generator talks to the server, each turning one request into a
// RequestRecord: HTTP + SSE (POST /v1/completions with stream: true, one fetch per request) and
// WebSocket (one socket at /v1/stream, many concurrent generations told apart by id).
import { WebSocket, type RawData } from "ws";
import type { LatencyBudget } from "./arrivals.ts";
import { meetsBudget, type RequestRecord } from "./stats.ts";

/** One request to make. */
export interface RequestSpec {
  id: number;
  cls: string;
  model: string;
  /** Text, or token ids. */
  prompt: string | number[];
  promptTokens: number;
  maxTokens: number;
  chains?: number;
  budget?: LatencyBudget;
  temperature?: number;
  /** false: opt out of the server's prefix cache. */
  cache?: boolean;
}

export interface LoadClient {
  /** Run one request to completion (or until `signal` aborts it). Never rejects. */
  run(spec: RequestSpec, startMs: number, signal: AbortSignal): Promise<RequestRecord>;
  close(): Promise<void>;
}

/** The JSON body shared by both modes (WS adds type and id). */
export function requestBody(spec: RequestSpec): Record<string, unknown> {
  return {
    model: spec.model,
    prompt: spec.prompt,
    max_tokens: spec.maxTokens,
    ...(spec.chains !== undefined ? { chains: spec.chains } : {}),
    ...(spec.budget !== undefined ? { latency_budget: spec.budget } : {}),
    ...(spec.temperature !== undefined ? { temperature: spec.temperature } : {}),
    ...(spec.cache === false ? { cache: false } : {}),
  };
}

interface ErrorBody {
  error?: { message?: unknown; code?: unknown; type?: unknown };
}

function errorFields(body: unknown): { code: string; message: string } {
  const e = (body as ErrorBody | null)?.error;
  const code = typeof e?.code === "string" ? e.code : typeof e?.type === "string" ? e.type : "unknown";
  const message = typeof e?.message === "string" ? e.message : JSON.stringify(body)?.slice(0, 200) ?? "";
  return { code, message };
}

/** Timing for one request: token arrival times and chain counts, then the record. */
class Tracker {
  private readonly t0 = performance.now();
  private readonly arrivals: number[] = [];
  readonly chains: number[] = [];
  usage?: { prompt_tokens: number; completion_tokens: number };
  finishReason?: string;
  error?: { status: string; code: string; message: string };

  constructor(
    private readonly spec: RequestSpec,
    private readonly startMs: number,
  ) {}

  token(chains: unknown): void {
    this.arrivals.push(performance.now());
    if (typeof chains === "number") this.chains.push(chains);
  }

  fail(status: string, code: string, message: string): void {
    this.error ??= { status, code, message };
  }

  record(): RequestRecord {
    const end = performance.now();
    const e2eMs = end - this.t0;
    const n = this.arrivals.length;
    const ttftMs = n > 0 ? this.arrivals[0] - this.t0 : undefined;
    const itlMs: number[] = [];
    for (let i = 1; i < n; i++) itlMs.push(this.arrivals[i] - this.arrivals[i - 1]);
    const tpotMs = n >= 2 && ttftMs !== undefined ? (e2eMs - ttftMs) / (n - 1) : undefined;
    const ok = this.error === undefined;
    const r: RequestRecord = {
      id: this.spec.id,
      cls: this.spec.cls,
      startMs: this.startMs,
      promptTokens: this.spec.promptTokens,
      maxTokens: this.spec.maxTokens,
      ...(this.spec.budget ? { budget: this.spec.budget } : {}),
      ok,
      ...(this.error ? { error: this.error } : {}),
      ...(ttftMs !== undefined ? { ttftMs } : {}),
      e2eMs,
      itlMs,
      ...(tpotMs !== undefined ? { tpotMs } : {}),
      tokens: n,
      chains: this.chains,
      ...(this.usage ? { usage: this.usage } : {}),
      ...(this.finishReason ? { finishReason: this.finishReason } : {}),
      budgetMet: false,
    };
    r.budgetMet = meetsBudget(r, this.spec.budget);
    return r;
  }
}

interface SseChunk {
  error?: unknown;
  choices?: Array<{ text?: string; finish_reason?: string | null; chains?: number }>;
  usage?: { prompt_tokens: number; completion_tokens: number } | null;
}

/** HTTP + SSE: each request is its own streaming POST /v1/completions. */
export class SseClient implements LoadClient {
  constructor(
    private readonly baseUrl: string,
    private readonly apiKey?: string,
  ) {}

  async run(spec: RequestSpec, startMs: number, signal: AbortSignal): Promise<RequestRecord> {
    const t = new Tracker(spec, startMs);
    let sawDone = false;
    try {
      const res = await fetch(`${this.baseUrl}/v1/completions`, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...(this.apiKey ? { Authorization: `Bearer ${this.apiKey}` } : {}) },
        body: JSON.stringify({ ...requestBody(spec), stream: true, stream_options: { include_usage: true } }),
        signal,
      });
      if (res.status !== 200 || !res.body) {
        let body: unknown = null;
        try {
          body = await res.json();
        } catch {
          /* not JSON */
        }
        const { code, message } = errorFields(body);
        t.fail(String(res.status), code, message);
        return t.record();
      }
      const decoder = new TextDecoder();
      let buf = "";
      const handle = (block: string) => {
        const data = block
          .split(/\r?\n/)
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data === "") return;
        if (data === "[DONE]") {
          sawDone = true;
          return;
        }
        const chunk = JSON.parse(data) as SseChunk;
        if (chunk.error !== undefined) {
          const { code, message } = errorFields(chunk);
          t.fail("stream", code, message);
          return;
        }
        for (const c of chunk.choices ?? []) {
          if (c.finish_reason == null) t.token(c.chains);
          else t.finishReason = c.finish_reason;
        }
        if (chunk.usage) t.usage = { prompt_tokens: chunk.usage.prompt_tokens, completion_tokens: chunk.usage.completion_tokens };
      };
      for await (const part of res.body) {
        buf += decoder.decode(part as Uint8Array, { stream: true });
        let cut: RegExpExecArray | null;
        const sep = /\r?\n\r?\n/g;
        let last = 0;
        while ((cut = sep.exec(buf)) !== null) {
          handle(buf.slice(last, cut.index));
          last = cut.index + cut[0].length;
        }
        buf = buf.slice(last);
      }
      if (buf.trim() !== "") handle(buf);
      if (!sawDone) t.fail("stream", "truncated", "the stream ended without [DONE]");
    } catch (err) {
      if (signal.aborted) t.fail("cut", "grace_deadline", "cut at the grace deadline");
      else t.fail("network", (err as { cause?: { code?: string } })?.cause?.code ?? "fetch_failed", String((err as Error)?.message ?? err));
    }
    return t.record();
  }

  async close(): Promise<void> {}
}

interface WsMessage {
  type?: string;
  id?: string | number;
  chains?: number;
  finish_reason?: string;
  usage?: { prompt_tokens: number; completion_tokens: number };
  error?: { message?: string; code?: string | null; type?: string };
}

interface Pending {
  tracker: Tracker;
  resolve: (r: RequestRecord) => void;
  /** Removes the abort listener. */
  detach: () => void;
}

/** WebSocket: one socket, concurrent generations keyed by id. */
export class WsClient implements LoadClient {
  private readonly pending = new Map<string, Pending>();
  private closed = false;

  private constructor(private readonly ws: WebSocket) {
    ws.on("message", (data: RawData) => this.onMessage(data));
    ws.on("close", (code: number, reason: Buffer) => {
      this.closed = true;
      for (const [id, p] of this.pending) {
        p.tracker.fail("ws", "socket_closed", `socket closed (${code} ${reason.toString()})`);
        this.finish(id);
      }
    });
    ws.on("error", () => undefined);
  }

  /** Open `baseUrl`'s /v1/stream (http → ws). */
  static open(baseUrl: string, apiKey?: string): Promise<WsClient> {
    const url = baseUrl.replace(/^http/, "ws") + "/v1/stream";
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {}, perMessageDeflate: false });
      ws.once("open", () => resolve(new WsClient(ws)));
      ws.once("error", reject);
      ws.once("unexpected-response", (_req, res) => reject(new Error(`WebSocket upgrade answered HTTP ${res.statusCode}`)));
    });
  }

  run(spec: RequestSpec, startMs: number, signal: AbortSignal): Promise<RequestRecord> {
    const tracker = new Tracker(spec, startMs);
    const id = String(spec.id);
    return new Promise<RequestRecord>((resolve) => {
      if (this.closed || this.ws.readyState !== WebSocket.OPEN) {
        tracker.fail("ws", "socket_closed", "the socket is not open");
        resolve(tracker.record());
        return;
      }
      const onAbort = () => {
        if (!this.pending.has(id)) return;
        if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "cancel", id }));
        tracker.fail("cut", "grace_deadline", "cut at the grace deadline");
        this.finish(id);
      };
      this.pending.set(id, { tracker, resolve, detach: () => signal.removeEventListener("abort", onAbort) });
      if (signal.aborted) return onAbort();
      signal.addEventListener("abort", onAbort, { once: true });
      this.ws.send(JSON.stringify({ type: "generate", id, ...requestBody(spec) }));
    });
  }

  private finish(id: string): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    p.detach();
    p.resolve(p.tracker.record());
  }

  private onMessage(data: RawData): void {
    let msg: WsMessage;
    try {
      msg = JSON.parse(data.toString()) as WsMessage;
    } catch {
      return;
    }
    const p = msg.id !== undefined ? this.pending.get(String(msg.id)) : undefined;
    if (!p) return;
    const id = String(msg.id);
    switch (msg.type) {
      case "token":
        p.tracker.token(msg.chains);
        return;
      case "done":
        p.tracker.finishReason = msg.finish_reason;
        if (msg.usage) p.tracker.usage = { prompt_tokens: msg.usage.prompt_tokens, completion_tokens: msg.usage.completion_tokens };
        if (msg.finish_reason === "cancelled") p.tracker.fail("ws", "cancelled", "the generation was cancelled");
        this.finish(id);
        return;
      case "error":
        p.tracker.fail("ws", msg.error?.code ?? msg.error?.type ?? "unknown", msg.error?.message ?? "");
        this.finish(id);
        return;
    }
  }

  close(): Promise<void> {
    if (this.closed || this.ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      this.ws.once("close", () => resolve());
      this.ws.close(1000, "load generator done");
    });
  }
}
