// WebSocket streaming at /v1/stream.
//
// Client → server (JSON text frames):
//   {type:"generate", id, prompt | messages, ...completion fields}   start a generation
//   {type:"switch", id, chains}    change the chain count from the next token on
//   {type:"cancel", id}            stop a generation (it ends with finish_reason "cancelled")
//   {type:"ping"}                  application-level keepalive (answered with {type:"pong"})
// Server → client:
//   {type:"token", id, index, text, token_id, chains, logprob?, top_logprobs?}
//   {type:"switched", id, chains, at_index}   at_index: index of the first token at the new
//                                             count (null if the generation ended first)
//   {type:"done", id, finish_reason, usage, model, chains, chains_per_token?, tail_text?}
//                                             tail_text: text held back until the end (append it)
//   {type:"error", id?, error:{message, type, param, code}}
// Several generations may run on one socket at once (told apart by id). A malformed message
// gets an error and the socket stays open. The server pings every `pingIntervalMs` and drops a
// socket that missed a pong. Backpressure: when the socket's send buffer exceeds
// `maxBufferedBytes`, token delivery (and so generation) pauses until it drains; a socket that
// stays over the limit for `stallTimeoutMs` is closed with 1008 ("client too slow").
import type { IncomingMessage, Server } from "node:http";
import type { Duplex } from "node:stream";
import { WebSocket, WebSocketServer, type RawData } from "ws";
import { admit, kvReservation, type ServerContext } from "./context.ts";
import { ApiError, fromZodError, invalidField, toApiError } from "./errors.ts";
import { runGeneration, type ChainControl } from "./generation.ts";
import { planChains } from "../policy/latency-router.ts";
import { CHAT_TEMPLATE_STOPS, renderChat } from "./chat.ts";
import { checkTokenIds, encodeText, prepare, usage } from "./request.ts";
import { modelId } from "./router.ts";
import { wsMessageSchema, type WsGenerate } from "./schemas.ts";

export const WS_PATH = "/v1/stream";

export interface WsOptions {
  pingIntervalMs: number;
  maxBufferedBytes: number;
  stallTimeoutMs: number;
  maxPayloadBytes: number;
}

type Id = string | number;

interface Live {
  controller: AbortController;
  control: ChainControl;
  pendingSwitch?: number;
  /** Tokens delivered so far (the index of the next token). */
  produced: number;
}

/** Wait until `ws.bufferedAmount` is at most `limit`. Resolves false if it stays above for
 * `timeoutMs`, or the socket is no longer open. */
export async function waitForBuffer(
  ws: { bufferedAmount: number; readyState: number },
  limit: number,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (ws.bufferedAmount > limit) {
    if (ws.readyState !== WebSocket.OPEN || signal?.aborted) return false;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return ws.readyState === WebSocket.OPEN;
}

function errorMessage(err: ApiError, id?: Id) {
  return { type: "error", ...(id !== undefined ? { id } : {}), error: err.toBody().error, ...(err.headers["Retry-After"] ? { retry_after: Number(err.headers["Retry-After"]) } : {}) };
}

export class StreamServer {
  private readonly wss: WebSocketServer;
  private readonly sockets = new Set<WebSocket>();
  private pingTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly ctx: ServerContext,
    private readonly opts: WsOptions,
    private readonly authorize: (req: IncomingMessage) => boolean,
    private readonly countUpgrade: (status: number) => void,
  ) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: opts.maxPayloadBytes });
    this.wss.on("connection", (ws) => this.onConnection(ws));
    this.pingTimer = setInterval(() => this.pingAll(), opts.pingIntervalMs);
    this.pingTimer.unref();
  }

  get connections(): number {
    return this.sockets.size;
  }

  attach(server: Server): void {
    server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head));
  }

  /** Close every socket (1001 going away) and stop pinging. */
  close(): void {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = undefined;
    for (const ws of this.sockets) ws.close(1001, "server shutting down");
    this.wss.close();
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const url = new URL(req.url ?? "/", "http://localhost");
    const reject = (status: number, err: ApiError) => {
      this.countUpgrade(status);
      const body = JSON.stringify(err.toBody());
      socket.end(
        `HTTP/1.1 ${status} ${status === 401 ? "Unauthorized" : status === 404 ? "Not Found" : "Service Unavailable"}\r\n` +
          `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    };
    if (url.pathname !== WS_PATH) return reject(404, new ApiError(404, `Unknown route: ${url.pathname}`, "invalid_request_error", null, "not_found"));
    if (!this.authorize(req)) return reject(401, new ApiError(401, "Missing or incorrect API key.", "invalid_request_error", null, "invalid_api_key"));
    if (this.ctx.isDraining()) return reject(503, new ApiError(503, "The server is shutting down.", "server_error", null, "server_draining"));
    try {
      this.ctx.engine();
    } catch {
      return reject(503, new ApiError(503, "The model is still loading.", "server_error", null, "model_loading"));
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      this.countUpgrade(101);
      this.wss.emit("connection", ws, req);
    });
  }

  private pingAll(): void {
    for (const ws of this.sockets) {
      const s = ws as WebSocket & { colmAlive?: boolean };
      if (s.colmAlive === false) {
        ws.terminate();
        continue;
      }
      s.colmAlive = false;
      ws.ping();
    }
  }

  private onConnection(ws: WebSocket): void {
    const s = ws as WebSocket & { colmAlive?: boolean };
    s.colmAlive = true;
    this.sockets.add(ws);
    const live = new Map<Id, Live>();
    const send = (msg: unknown) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
    };
    ws.on("pong", () => {
      s.colmAlive = true;
    });
    ws.on("close", () => {
      this.sockets.delete(ws);
      for (const g of live.values()) g.controller.abort(new Error("socket closed"));
    });
    ws.on("error", () => undefined);
    ws.on("message", (data: RawData, isBinary: boolean) => {
      s.colmAlive = true;
      void this.onMessage(ws, live, send, data, isBinary);
    });
  }

  private async onMessage(ws: WebSocket, live: Map<Id, Live>, send: (m: unknown) => void, data: RawData, isBinary: boolean): Promise<void> {
    if (isBinary) {
      send(errorMessage(invalidField(null, "Binary frames are not supported; send JSON text.", "invalid_message")));
      return;
    }
    let raw: unknown;
    try {
      raw = JSON.parse(data.toString());
    } catch {
      send(errorMessage(invalidField(null, "The message is not valid JSON.", "invalid_json")));
      return;
    }
    const rawId = (raw as { id?: unknown } | null)?.id;
    const id = typeof rawId === "string" || typeof rawId === "number" ? rawId : undefined;
    const parsed = wsMessageSchema.safeParse(raw);
    if (!parsed.success) {
      send(errorMessage(fromZodError(parsed.error), id));
      return;
    }
    const msg = parsed.data;
    switch (msg.type) {
      case "ping":
        send({ type: "pong" });
        return;
      case "cancel": {
        const g = live.get(msg.id);
        if (!g) return send(errorMessage(new ApiError(400, `No generation with id ${JSON.stringify(msg.id)} is running.`, "invalid_request_error", "id", "unknown_id"), msg.id));
        g.controller.abort(new Error("cancelled"));
        return;
      }
      case "switch": {
        const g = live.get(msg.id);
        if (!g) return send(errorMessage(new ApiError(400, `No generation with id ${JSON.stringify(msg.id)} is running.`, "invalid_request_error", "id", "unknown_id"), msg.id));
        const n = this.ctx.engine().info.nChains;
        if (msg.chains > n) return send(errorMessage(invalidField("chains", `Invalid value for 'chains': must be an integer from 1 to ${n}.`), msg.id));
        g.control.policy = undefined; // the client fixed the size: no more load-adaptive switching
        g.control.target = msg.chains;
        if (msg.chains === g.control.current) {
          // Already the count in use (or a switch back before the previous one took effect):
          // the next token runs at it.
          g.pendingSwitch = undefined;
          send({ type: "switched", id: msg.id, chains: msg.chains, at_index: g.produced });
        } else {
          g.pendingSwitch = msg.chains;
        }
        return;
      }
      case "generate":
        try {
          await this.generate(ws, live, send, msg);
        } catch (err) {
          send(errorMessage(toApiError(err), msg.id));
        }
        return;
    }
  }

  private async generate(ws: WebSocket, live: Map<Id, Live>, send: (m: unknown) => void, msg: WsGenerate): Promise<void> {
    const arrivedAt = performance.now();
    if (live.has(msg.id)) throw new ApiError(400, `A generation with id ${JSON.stringify(msg.id)} is already running on this socket.`, "invalid_request_error", "id", "duplicate_id");
    const engine = this.ctx.engine();
    let prompt: number[];
    let extraStop: string[] = [];
    if ((msg.prompt === undefined) === (msg.messages === undefined)) throw invalidField("prompt", "Give exactly one of 'prompt' and 'messages'.", "missing_prompt");
    if (msg.messages !== undefined) {
      prompt = encodeText(engine, renderChat(msg.messages));
      extraStop = CHAT_TEMPLATE_STOPS;
    } else if (typeof msg.prompt === "string") {
      prompt = encodeText(engine, msg.prompt);
    } else {
      checkTokenIds(msg.prompt!, engine.info, "prompt");
      prompt = msg.prompt!;
    }
    const prep = prepare(engine, msg, [prompt], {
      maxTokens: msg.max_tokens ?? undefined,
      defaultMaxTokens: msg.messages !== undefined ? undefined : 16,
      promptParam: msg.messages !== undefined ? "messages" : "prompt",
      logprobs: msg.logprobs ?? undefined,
      extraStop,
    });
    const chainPlan = planChains(this.ctx, prep, prompt.length);
    const chains = chainPlan.chains;
    const controller = new AbortController();
    const g: Live = { controller, control: chainPlan.control(), produced: 0 };
    live.set(msg.id, g);
    let release: () => void;
    try {
      release = await admit(this.ctx, 1, controller, kvReservation(engine, [prompt.length], prep.maxTokens));
    } catch (err) {
      live.delete(msg.id);
      if (controller.signal.aborted) {
        send({ type: "done", id: msg.id, finish_reason: "cancelled", usage: usage(prompt.length, 0), model: modelId(engine.info, chains), chains });
        return;
      }
      throw err;
    }
    g.control.onApplied((chains, atIndex) => {
      if (g.pendingSwitch === chains) g.pendingSwitch = undefined;
      send({ type: "switched", id: msg.id, chains, at_index: atIndex });
    });
    try {
      const result = await runGeneration(
        this.ctx,
        { prompt, maxTokens: prep.maxTokens, sampling: prep.sampling, stop: prep.stop, control: g.control, latencyBudget: prep.latencyBudget, arrivedAt, signal: controller.signal },
        async (tok) => {
          g.produced = tok.index + 1;
          if (ws.bufferedAmount > this.opts.maxBufferedBytes) {
            const ok = await waitForBuffer(ws, this.opts.maxBufferedBytes, this.opts.stallTimeoutMs, controller.signal);
            if (!ok && ws.readyState === WebSocket.OPEN && !controller.signal.aborted) {
              ws.close(1008, "client too slow: send buffer over limit");
            }
          }
          send({
            type: "token",
            id: msg.id,
            index: tok.index,
            text: tok.text,
            token_id: tok.tokenId,
            chains: tok.chains,
            ...(tok.logprob !== undefined ? { logprob: tok.logprob } : {}),
            ...(tok.topLogprobs ? { top_logprobs: tok.topLogprobs.map((t) => ({ token: t.token, token_id: t.tokenId, logprob: t.logprob })) } : {}),
          });
        },
      );
      if (g.pendingSwitch !== undefined) send({ type: "switched", id: msg.id, chains: g.pendingSwitch, at_index: null });
      const changed = result.chainsPerToken.some((k) => k !== result.chainsPerToken[0]);
      send({
        type: "done",
        id: msg.id,
        finish_reason: result.finishReason,
        usage: usage(result.promptTokens, result.completionTokens),
        model: modelId(engine.info, chains),
        chains: result.finalChains,
        ...(result.summary?.tailText ? { tail_text: result.summary.tailText } : {}),
        ...(changed ? { chains_per_token: result.chainsPerToken } : {}),
      });
    } finally {
      live.delete(msg.id);
      release();
    }
  }
}
