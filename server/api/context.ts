// What the route handlers share: the engine (once loaded), metrics, admission and the set of
// in-flight requests (for graceful shutdown).
import type { Admission } from "../policy/admission.ts";
import type { Engine } from "../engine/types.ts";
import type { Request, Response } from "express";
import { sendError, serviceUnavailable, toApiError } from "./errors.ts";
import type { Metrics } from "./metrics.ts";

/** In-flight requests, each with its AbortController (aborted on shutdown deadline). */
export class InFlight {
  private readonly controllers = new Set<AbortController>();
  private waiters: Array<() => void> = [];

  get size(): number {
    return this.controllers.size;
  }

  add(c: AbortController): void {
    this.controllers.add(c);
  }

  delete(c: AbortController): void {
    this.controllers.delete(c);
    if (this.controllers.size === 0) {
      const ws = this.waiters;
      this.waiters = [];
      for (const w of ws) w();
    }
  }

  /** Resolves when nothing is in flight. */
  idle(): Promise<void> {
    if (this.controllers.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  abortAll(reason: unknown): void {
    for (const c of this.controllers) c.abort(reason);
  }
}

export interface ServerContext {
  /** The loaded engine; throws 503 while loading. */
  engine(): Engine;
  readonly metrics: Metrics;
  readonly admission: Admission;
  readonly inflight: InFlight;
  isDraining(): boolean;
  log(line: string): void;
}

export function requireEngine(engine: Engine | null): Engine {
  if (!engine) throw serviceUnavailable("loading");
  return engine;
}

/**
 * Admit a request that will run `weight` generations reserving `kvBytes` of KV cache (their
 * prompts + max_tokens): checks draining, waits for admission
 * (429 when the queue is full) and registers the request as in flight. `controller` is aborted
 * by the caller on client disconnect and by shutdown. Returns the release function.
 */
export async function admit(ctx: ServerContext, weight: number, controller: AbortController, kvBytes = 0): Promise<() => void> {
  if (ctx.isDraining()) throw serviceUnavailable("draining");
  ctx.inflight.add(controller);
  let releaseSlot: () => void;
  try {
    releaseSlot = await ctx.admission.acquire(weight, controller.signal, kvBytes);
  } catch (err) {
    ctx.inflight.delete(controller);
    throw err;
  }
  return () => {
    releaseSlot();
    ctx.inflight.delete(controller);
  };
}

export interface HttpGeneration {
  /** Aborted on client disconnect and on shutdown: pass to the engine. */
  signal: AbortSignal;
  /** Aborted on client disconnect only: stop writing. */
  clientGone: AbortSignal;
  /** Free the admission slot(s) and stop watching the connection. */
  release(): void;
}

/** admit() for an HTTP request: a client that goes away before the response is complete
 * (res 'close' before it finished) aborts the request at once, queued or generating. */
export async function admitHttp(
  ctx: ServerContext,
  res: { on(e: "close", f: () => void): unknown; off(e: "close", f: () => void): unknown; readonly writableFinished: boolean },
  weight: number,
  kvBytes = 0,
): Promise<HttpGeneration> {
  const controller = new AbortController();
  const clientGone = new AbortController();
  const onClose = () => {
    if (res.writableFinished) return;
    clientGone.abort(new Error("client disconnected"));
    controller.abort(new Error("client disconnected"));
  };
  res.on("close", onClose);
  let release: () => void;
  try {
    release = await admit(ctx, weight, controller, kvBytes);
  } catch (err) {
    res.off("close", onClose);
    throw err;
  }
  return {
    signal: controller.signal,
    clientGone: clientGone.signal,
    release: () => {
      res.off("close", onClose);
      release();
    },
  };
}

/** An express handler around `handle`: any error becomes an OpenAI-shaped response (5xx logged). */
export function apiRoute(ctx: ServerContext, label: string, handle: (ctx: ServerContext, req: Request, res: Response) => Promise<void>) {
  return async (req: Request, res: Response): Promise<void> => {
    try {
      await handle(ctx, req, res);
    } catch (err) {
      if (res.destroyed) return;
      const apiErr = toApiError(err);
      if (apiErr.status >= 500) ctx.log(`${label} error: ${(err as Error)?.stack ?? String(err)}`);
      sendError(res, apiErr);
    }
  };
}

/** KV cache bytes sequences of these prompt lengths can grow to with `maxTokens` more tokens each. */
export function kvReservation(engine: Engine, promptLengths: readonly number[], maxTokens: number): number {
  return promptLengths.reduce((bytes, p) => bytes + Math.min(p + maxTokens, engine.info.maxPosition) * engine.info.kvBytesPerToken, 0);
}
