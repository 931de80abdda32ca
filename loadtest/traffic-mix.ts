// Mixed traffic for soak and leak runs: small requests of every kind a real deployment sees, each
// of which ends one way or another:
//   JSON completions · SSE streams at a fixed size · chat with a latency budget · streams the
//   client abandons after the first chunk · refused requests (400) · WebSocket generations
//   switched to k=1 mid-stream or cancelled after their first token.
// `runMix` keeps `concurrency` requests in flight until `stop()` says so; every request reports a
// record (kind, ok, time to first token, end to end). As a command it sends COUNT requests:
//   node --import tsx loadtest/traffic-mix.ts URL COUNT [CONCURRENCY]
import { fileURLToPath } from "node:url";
import { WebSocket } from "ws";

export const MIX_KINDS = ["json", "sse", "chat-budget", "abandoned", "refused", "ws-switch", "ws-cancel"] as const;
export type MixKind = (typeof MIX_KINDS)[number];

export interface MixRecord {
  kind: MixKind;
  /** The request ended as it should (including an expected refusal or cancellation). */
  ok: boolean;
  /** ms from send to the first token (streams only). */
  ttftMs?: number;
  /** ms per token after the first (streams with ≥ 2 tokens). */
  tpotMs?: number;
  e2eMs: number;
}

export interface MixOptions {
  url: string;
  concurrency: number;
  /** Checked before each new request. */
  stop: () => boolean;
  onRecord?: (r: MixRecord) => void;
  /** The served model's name (default: the first id of GET /v1/models). */
  model?: string;
}

const post = (url: string, body: unknown, signal?: AbortSignal) =>
  fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal });

/** Reads an SSE body, timing its first and last token chunks. */
async function timedStream(res: Response, started: number, abandonAfterFirst = false): Promise<Pick<MixRecord, "ttftMs" | "tpotMs">> {
  const reader = res.body!.getReader();
  let first: number | undefined;
  let last = started;
  let chunks = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    const now = performance.now();
    first ??= now;
    last = now;
    chunks += (new TextDecoder().decode(value).match(/"text":|"content":/g) ?? []).length; // token events in this read
    if (abandonAfterFirst) {
      await reader.cancel();
      break;
    }
  }
  return { ttftMs: first === undefined ? undefined : first - started, tpotMs: chunks > 1 && first !== undefined ? (last - first) / (chunks - 1) : undefined };
}

/** A WebSocket generation switched to k=1 (or cancelled) after its first token. */
function wsGeneration(ws: WebSocket, id: string, model: string, prompt: string, cancel: boolean, started: number): Promise<Omit<MixRecord, "kind" | "e2eMs">> {
  return new Promise((resolve) => {
    let first: number | undefined;
    const onMessage = (data: Buffer) => {
      const m = JSON.parse(data.toString());
      if (m.id !== id) return;
      if (m.type === "token" && m.index === 0) {
        first = performance.now();
        ws.send(JSON.stringify(cancel ? { type: "cancel", id } : { type: "switch", id, chains: 1 }));
      }
      if (m.type === "done" || m.type === "error") {
        ws.off("message", onMessage);
        resolve({ ok: m.type === "done", ttftMs: first === undefined ? undefined : first - started });
      }
    };
    ws.on("message", onMessage);
    ws.send(JSON.stringify({ type: "generate", id, model, prompt, max_tokens: 8 }));
  });
}

async function oneRequest(kind: MixKind, i: number, o: MixOptions & { model: string }, ws: WebSocket): Promise<MixRecord> {
  const started = performance.now();
  const prompt = `mixed traffic ${i} `;
  const api = `${o.url}/v1`;
  const done = (r: Omit<MixRecord, "kind" | "e2eMs">): MixRecord => ({ kind, e2eMs: performance.now() - started, ...r });
  switch (kind) {
    case "json": {
      const res = await post(`${api}/completions`, { model: o.model, prompt, max_tokens: 4, temperature: 0 });
      return done({ ok: res.ok && (await res.json()) !== null });
    }
    case "sse": {
      const res = await post(`${api}/completions`, { model: `${o.model}:c2`, prompt, max_tokens: 16, stream: true });
      return done({ ok: res.ok, ...(await timedStream(res, started)) });
    }
    case "chat-budget": {
      const res = await post(`${api}/chat/completions`, { model: o.model, messages: [{ role: "user", content: prompt }], max_tokens: 12, stream: true, latency_budget: { tpot_ms: 50 } });
      return done({ ok: res.ok, ...(await timedStream(res, started)) });
    }
    case "abandoned": {
      const abort = new AbortController();
      const res = await post(`${api}/completions`, { model: o.model, prompt, max_tokens: 60, stream: true }, abort.signal);
      const t = await timedStream(res, started, true);
      abort.abort();
      return done({ ok: res.ok, ttftMs: t.ttftMs });
    }
    case "refused": {
      const res = await post(`${api}/completions`, { model: o.model, prompt: 12 });
      await res.json();
      return done({ ok: res.status === 400 });
    }
    default:
      return done(await wsGeneration(ws, `g${i}`, o.model, prompt, kind === "ws-cancel", started));
  }
}

function openSocket(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, "ws") + "/v1/stream");
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

/** Keep `concurrency` requests of the mix in flight (kinds in turn) until `stop()`. */
export async function runMix(o: MixOptions): Promise<number> {
  const model = o.model ?? ((await (await fetch(`${o.url}/v1/models`)).json()) as { data: Array<{ id: string }> }).data[0].id;
  const sockets = await Promise.all(Array.from({ length: o.concurrency }, () => openSocket(o.url)));
  let next = 0;
  await Promise.all(
    sockets.map(async (ws) => {
      while (!o.stop()) {
        const i = next++;
        o.onRecord?.(await oneRequest(MIX_KINDS[i % MIX_KINDS.length], i, { ...o, model }, ws));
      }
    }),
  );
  await Promise.all(sockets.map((ws) => new Promise((r) => (ws.once("close", r), ws.close()))));
  return next;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [url, count, concurrency] = process.argv.slice(2);
  let sent = 0;
  let failed = 0;
  await runMix({ url, concurrency: Number(concurrency ?? 8), stop: () => sent++ >= Number(count), onRecord: (r) => void (r.ok || failed++) });
  if (failed > 0) {
    console.error(`traffic-mix: ${failed} request(s) did not end as expected`);
    process.exit(1);
  }
}
