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
import type { ChainControl } from "../engine/chain-control.ts";
import { checkChains } from "../engine/errors.ts";
import type { Engine, GeneratedToken } from "../engine/types.ts";
import { CHAT_TEMPLATE_STOPS, assistantCue, renderChat } from "./chat-template.ts";
import { DEFAULT_COMPLETION_TOKENS } from "./completions.ts";
import type { ServerContext } from "./context.ts";
import { ApiError, errorBody, fromZodError, httpStatus, invalidField, toColmError, wsErrorMessage, type ColmError } from "./errors.ts";
import { runGeneration, type GenerationResult } from "./generation.ts";
import { modelId } from "./models.ts";
import { admit, choiceExtensions, planRequest, type PlannedRequest } from "./pipeline.ts";
import { buildRequest, encodeText, tokenPrompt, usage, type GenerationRequest } from "./request.ts";
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

const STATUS_TEXT: Record<number, string> = { 401: "Unauthorized", 404: "Not Found", 503: "Service Unavailable" };

function unknownId(id: Id): ApiError {
  return new ApiError(`No generation with id ${JSON.stringify(id)} is running.`, "invalid_request", "unknown_id", "id");
}

/** Validate a `generate` message once (a prompt or messages, as /v1/completions or /v1/chat/completions). */
export function wsRequest(engine: Engine, msg: WsGenerate, arrivedAt: number): GenerationRequest {
  if ((msg.prompt === undefined) === (msg.messages === undefined)) throw invalidField("prompt", "Give exactly one of 'prompt' and 'messages'.", "missing_prompt");
  const chat = msg.messages !== undefined;
  const prompt = chat ? encodeText(engine, renderChat(msg.messages!, assistantCue(engine.tokenizer))) : typeof msg.prompt === "string" ? encodeText(engine, msg.prompt) : tokenPrompt(engine, msg.prompt!, "prompt");
  return buildRequest(engine, msg, [prompt], {
    promptParam: chat ? "messages" : "prompt",
    maxTokens: msg.max_tokens ?? undefined,
    defaultMaxTokens: chat ? undefined : DEFAULT_COMPLETION_TOKENS,
    logprobs: msg.logprobs ?? undefined,
    extraStop: chat ? CHAT_TEMPLATE_STOPS : [],
  }, arrivedAt, msg.latency_budget ?? undefined);
}

function tokenMessage(id: Id, tok: GeneratedToken) {
  return {
    type: "token",
    id,
    index: tok.index,
    text: tok.text,
    token_id: tok.tokenId,
    chains: tok.chains,
    ...(tok.logprob !== undefined ? { logprob: tok.logprob } : {}),
    ...(tok.topLogprobs ? { top_logprobs: tok.topLogprobs.map((t) => ({ token: t.token, token_id: t.tokenId, logprob: t.logprob })) } : {}),
  };
}

/** The last message of a generation; `model` names the size its last token ran at. */
function doneMessage(engine: Engine, id: Id, r: GenerationResult) {
  const { latency_budget_missed, ...chains } = choiceExtensions(r);
  return {
    type: "done",
    id,
    finish_reason: r.finishReason,
    usage: usage(r.promptTokens, r.completionTokens, r.cachedTokens),
    model: modelId(engine.info, r.finalChains),
    chains: chains.chains,
    ...(r.summary?.tailText ? { tail_text: r.summary.tailText } : {}),
    ...(chains.chains_per_token ? { chains_per_token: chains.chains_per_token } : {}),
    ...(latency_budget_missed ? { latency_budget_missed } : {}),
  };
}

export class StreamServer {
  private readonly wss: WebSocketServer;
  private readonly sockets = new Set<WebSocket>();
  private pingTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly ctx: ServerContext,
    private readonly opts: WsOptions,
    /** Null when the upgrade may proceed, else the error to refuse it with. */
    private readonly admitUpgrade: (req: IncomingMessage) => ColmError | null,
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
    const refusal = url.pathname !== WS_PATH ? new ApiError(`Unknown route: ${url.pathname}`, "not_found", "not_found") : this.admitUpgrade(req);
    if (refusal) {
      const status = httpStatus(refusal);
      this.countUpgrade(status);
      const body = JSON.stringify(errorBody(refusal));
      socket.end(
        `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? "Error"}\r\n` +
          `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
      return;
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
    if (isBinary) return send(wsErrorMessage(invalidField(null, "Binary frames are not supported; send JSON text.", "invalid_message")));
    let raw: unknown;
    try {
      raw = JSON.parse(data.toString());
    } catch {
      return send(wsErrorMessage(invalidField(null, "The message is not valid JSON.", "invalid_json")));
    }
    const rawId = (raw as { id?: unknown } | null)?.id;
    const parsed = wsMessageSchema.safeParse(raw);
    if (!parsed.success) return send(wsErrorMessage(fromZodError(parsed.error, raw), typeof rawId === "string" || typeof rawId === "number" ? rawId : undefined));
    const msg = parsed.data;
    switch (msg.type) {
      case "ping":
        return send({ type: "pong" });
      case "cancel": {
        const g = live.get(msg.id);
        if (!g) return send(wsErrorMessage(unknownId(msg.id), msg.id));
        g.controller.abort(new Error("cancelled"));
        return;
      }
      case "switch":
        return this.switchChains(live, send, msg.id, msg.chains);
      case "generate":
        try {
          await this.generate(ws, live, send, msg);
        } catch (err) {
          send(wsErrorMessage(toColmError(err), msg.id));
        }
    }
  }

  /** A client's `switch`: the generation runs at `chains` from its next token on. */
  private switchChains(live: Map<Id, Live>, send: (m: unknown) => void, id: Id, chains: number): void {
    const g = live.get(id);
    if (!g) return send(wsErrorMessage(unknownId(id), id));
    try {
      checkChains(chains, this.ctx.engine().info);
    } catch (err) {
      return send(wsErrorMessage(toColmError(err), id));
    }
    g.control.policy = undefined; // the client fixed the size: no more load-adaptive switching
    g.control.target = chains;
    if (chains === g.control.applied) {
      // Already the count in use (or a switch back before the previous one took effect): the next
      // token runs at it and the control reports no change, so answer now.
      g.pendingSwitch = undefined;
      send({ type: "switched", id, chains, at_index: g.produced });
    } else {
      g.pendingSwitch = chains;
    }
  }

  /** Deliver a token, pausing generation while the socket's send buffer is over its limit. */
  private async deliver(ws: WebSocket, g: Live, id: Id, tok: GeneratedToken, send: (m: unknown) => void): Promise<void> {
    g.produced = tok.index + 1;
    if (ws.bufferedAmount > this.opts.maxBufferedBytes) {
      const ok = await waitForBuffer(ws, this.opts.maxBufferedBytes, this.opts.stallTimeoutMs, g.controller.signal);
      if (!ok && ws.readyState === WebSocket.OPEN && !g.controller.signal.aborted) ws.close(1008, "client too slow: send buffer over limit");
    }
    send(tokenMessage(id, tok));
  }

  /** Validate → plan → admit → run one `generate` message. */
  private async generate(ws: WebSocket, live: Map<Id, Live>, send: (m: unknown) => void, msg: WsGenerate): Promise<void> {
    const arrivedAt = performance.now();
    if (live.has(msg.id)) throw new ApiError(`A generation with id ${JSON.stringify(msg.id)} is already running on this socket.`, "invalid_request", "duplicate_id", "id");
    const engine = this.ctx.engine();
    const planned: PlannedRequest = planRequest(this.ctx, wsRequest(engine, msg, arrivedAt));
    const choice = planned.choices[0];
    const g: Live = { controller: new AbortController(), control: choice.spec.control, produced: 0 };
    live.set(msg.id, g);
    let release: () => void;
    try {
      release = await admit(this.ctx, planned, g.controller);
    } catch (err) {
      live.delete(msg.id);
      if (!g.controller.signal.aborted) throw err;
      send({ type: "done", id: msg.id, finish_reason: "cancelled", usage: usage(choice.prompt.ids.length, 0, 0), model: modelId(engine.info, g.control.current), chains: g.control.current });
      return;
    }
    g.control.onApplied((chains, atIndex) => {
      if (g.pendingSwitch === chains) g.pendingSwitch = undefined;
      send({ type: "switched", id: msg.id, chains, at_index: atIndex });
    });
    try {
      const result = await runGeneration(this.ctx, { ...choice.spec, signal: g.controller.signal }, { token: (tok) => this.deliver(ws, g, msg.id, tok, send) });
      if (g.pendingSwitch !== undefined) send({ type: "switched", id: msg.id, chains: g.pendingSwitch, at_index: null });
      send(doneMessage(engine, msg.id, result));
    } finally {
      live.delete(msg.id);
      release();
    }
  }
}
