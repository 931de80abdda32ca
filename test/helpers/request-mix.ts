// A client for the leak test, run as its own process so that the heap the test measures is the
// server's alone: `node --import tsx test/helpers/request-mix.ts URL COUNT` sends COUNT small
// requests of every kind (JSON, SSE, chat with a budget, abandoned streams, refused requests,
// WebSocket generations switched or cancelled), 8 at a time, and exits when every one has ended.
import { WebSocket } from "ws";

const [base, count] = process.argv.slice(2);
const app = { url: base, wsUrl: base.replace(/^http/, "ws") + "/v1/stream" };

const post = (path: string, body: unknown, signal?: AbortSignal) =>
  fetch(`${app.url}${path}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal });

/** One request of kind `i % 7`; every one ends (completes, is cancelled, abandoned or refused). */
async function oneRequest(i: number, ws: WebSocket): Promise<void> {
  const prompt = `leak ${i} `;
  switch (i % 7) {
    case 0:
      await (await post("/v1/completions", { model: "tiny", prompt, max_tokens: 4, temperature: 0 })).json();
      return;
    case 1:
      await (await post("/v1/completions", { model: "tiny:c2", prompt, max_tokens: 4, stream: true })).text();
      return;
    case 2:
      await (await post("/v1/chat/completions", { model: "tiny", messages: [{ role: "user", content: prompt }], max_tokens: 3, latency_budget: { tpot_ms: 50 } })).json();
      return;
    case 3: {
      // Abandoned: the client goes away after the first chunk of a long stream.
      const abort = new AbortController();
      const res = await post("/v1/completions", { model: "tiny", prompt, max_tokens: 60, stream: true }, abort.signal);
      await res.body!.getReader().read();
      abort.abort();
      return;
    }
    case 4:
      await (await post("/v1/completions", { model: "tiny", prompt: 12 })).json(); // refused: 400
      return;
    default: {
      // WebSocket: a generation that is switched, and every other one cancelled after its first token.
      const id = `g${i}`;
      const done = new Promise<void>((resolve) => {
        const onMessage = (data: Buffer) => {
          const m = JSON.parse(data.toString());
          if (m.id !== id) return;
          if (m.type === "token" && m.index === 0) ws.send(JSON.stringify(i % 2 ? { type: "cancel", id } : { type: "switch", id, chains: 1 }));
          if (m.type === "done" || m.type === "error") {
            ws.off("message", onMessage);
            resolve();
          }
        };
        ws.on("message", onMessage);
      });
      ws.send(JSON.stringify({ type: "generate", id, model: "tiny", prompt, max_tokens: 8 }));
      await done;
    }
  }
}

async function drive(requests: number, concurrency: number): Promise<void> {
  const sockets = await Promise.all(
    Array.from({ length: concurrency }, () => new Promise<WebSocket>((resolve, reject) => {
      const ws = new WebSocket(app.wsUrl);
      ws.once("open", () => resolve(ws));
      ws.once("error", reject);
    })),
  );
  let next = 0;
  await Promise.all(sockets.map(async (ws) => {
    while (next < requests) await oneRequest(next++, ws);
  }));
  await Promise.all(sockets.map((ws) => new Promise((r) => (ws.once("close", r), ws.close()))));
}

await drive(Number(count), 8);
