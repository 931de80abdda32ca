// Bounded admission: at most `maxRunning` generations at once and at most `maxWaiting` requests
// waiting for a slot (FIFO). A request that finds the queue full is refused at once (429 with
// Retry-After). The scheduler issue replaces this module with KV-budget-aware admission.
import { queueFull } from "./errors.ts";

export interface AdmissionOptions {
  maxRunning: number;
  maxWaiting: number;
  /** Seconds suggested to a refused client (Retry-After). */
  retryAfterSeconds?: number;
}

interface Waiter {
  weight: number;
  resolve: (release: () => void) => void;
  reject: (err: unknown) => void;
  cleanup: () => void;
}

export class Admission {
  readonly maxRunning: number;
  readonly maxWaiting: number;
  private readonly retryAfter: number;
  private used = 0;
  private readonly queue: Waiter[] = [];

  constructor(opts: AdmissionOptions) {
    if (!(opts.maxRunning >= 1) || !(opts.maxWaiting >= 0)) throw new Error("admission: maxRunning ≥ 1 and maxWaiting ≥ 0");
    this.maxRunning = opts.maxRunning;
    this.maxWaiting = opts.maxWaiting;
    this.retryAfter = opts.retryAfterSeconds ?? 1;
  }

  /** Generation slots in use. */
  get running(): number {
    return this.used;
  }

  /** Requests waiting for a slot. */
  get waiting(): number {
    return this.queue.length;
  }

  /**
   * Wait for `weight` slots (a request with n choices takes n, capped at maxRunning).
   * Resolves to a release function (idempotent). Throws a 429 ApiError when the queue is full;
   * rejects with `signal.reason` when the signal aborts while waiting.
   */
  acquire(weight = 1, signal?: AbortSignal): Promise<() => void> {
    const w = Math.max(1, Math.min(weight, this.maxRunning));
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.queue.length === 0 && this.used + w <= this.maxRunning) {
      this.used += w;
      return Promise.resolve(this.releaser(w));
    }
    if (this.queue.length >= this.maxWaiting) return Promise.reject(queueFull(this.retryAfter));
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const i = this.queue.indexOf(waiter);
        if (i >= 0) this.queue.splice(i, 1);
        reject(signal!.reason);
        this.pump();
      };
      const waiter: Waiter = {
        weight: w,
        resolve,
        reject,
        cleanup: () => signal?.removeEventListener("abort", onAbort),
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.queue.push(waiter);
    });
  }

  /** Refuse everyone waiting (e.g. on shutdown). */
  rejectWaiting(err: unknown): void {
    for (const w of this.queue.splice(0)) {
      w.cleanup();
      w.reject(err);
    }
  }

  private releaser(w: number): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.used -= w;
      this.pump();
    };
  }

  private pump(): void {
    while (this.queue.length > 0 && this.used + this.queue[0].weight <= this.maxRunning) {
      const w = this.queue.shift()!;
      w.cleanup();
      this.used += w.weight;
      w.resolve(this.releaser(w.weight));
    }
  }
}
