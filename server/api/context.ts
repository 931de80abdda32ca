// The small public server context every route handler shares: the engine (once loaded), its
// latency router, metrics, admission, the set of in-flight requests (for graceful shutdown).
import type { Engine } from "../engine/types.ts";
import type { Admission } from "../policy/admission.ts";
import type { LatencyRouter } from "../policy/latency-router.ts";
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
  /** The loaded engine; throws a 503 while loading. */
  engine(): Engine;
  /** The engine's latency router; throws a 503 while loading. */
  router(): LatencyRouter;
  readonly metrics: Metrics;
  readonly admission: Admission;
  readonly inflight: InFlight;
  isDraining(): boolean;
  log(line: string): void;
}
