// Bounded admission: at most `maxRunning` generations at once, at most `kvBudgetBytes` of KV cache
// reserved by them (each request reserves what its sequences can grow to: (prompt + max_tokens)
// tokens × the KV bytes per token of spec §5.6), and at most `maxWaiting` requests waiting (FIFO:
// first come, first served, so no request starves behind smaller later ones). A request that
// finds the queue full is refused at once (429 with Retry-After); one that could never fit the
// KV budget is a 400. The prefix cache's bytes count against the same budget (it is KV memory
// too), but it never makes a request wait: what a request needs beyond the budget is evicted from
// the cache first, so the cache only ever holds what reservations leave free.
import { ColmError } from "../../models/errors.ts";

/** A request admission refuses: it could never fit the KV budget (400), or the queue is full (429). */
export class AdmissionError extends ColmError {
  override name = "AdmissionError";
}

function kvBudgetExceeded(needBytes: number, budgetBytes: number): AdmissionError {
  return new AdmissionError(
    `This request can grow to ${needBytes} bytes of KV cache (prompt + max_tokens, every choice), more than the server's KV budget of ${budgetBytes} bytes. Lower max_tokens or n.`,
    "invalid_request",
    "kv_budget_exceeded",
    "max_tokens",
  );
}

function queueFull(retryAfterSeconds: number): AdmissionError {
  return new AdmissionError(
    "The server is at capacity (all generation slots busy and the waiting queue is full). Retry later.",
    "rate_limited",
    "queue_full",
    null,
    retryAfterSeconds,
  );
}

export interface AdmissionOptions {
  maxRunning: number;
  maxWaiting: number;
  /** KV cache bytes the running generations may reserve (default: unlimited). */
  kvBudgetBytes?: number;
  /** Seconds suggested to a refused client (Retry-After). */
  retryAfterSeconds?: number;
  /** The prefix cache whose bytes share the KV budget (a function: the engine arrives later). */
  cache?: () => ReclaimableCache | undefined;
}

/** KV memory held for reuse that admission may take back at any time. */
export interface ReclaimableCache {
  readonly bytes: number;
  /** Frees at least `bytes` if it can; returns the bytes freed. */
  evict(bytes: number): number;
}

interface Waiter {
  weight: number;
  kvBytes: number;
  resolve: (release: () => void) => void;
  reject: (err: unknown) => void;
  cleanup: () => void;
}

export class Admission {
  readonly maxRunning: number;
  readonly maxWaiting: number;
  readonly kvBudgetBytes: number;
  private readonly retryAfter: number;
  private readonly cache: () => ReclaimableCache | undefined;
  private used = 0;
  private kvReserved = 0;
  private readonly queue: Waiter[] = [];

  constructor(opts: AdmissionOptions) {
    if (!(opts.maxRunning >= 1) || !(opts.maxWaiting >= 0)) throw new Error("admission: maxRunning ≥ 1 and maxWaiting ≥ 0");
    this.maxRunning = opts.maxRunning;
    this.maxWaiting = opts.maxWaiting;
    this.retryAfter = opts.retryAfterSeconds ?? 1;
    this.kvBudgetBytes = opts.kvBudgetBytes ?? Infinity;
    this.cache = opts.cache ?? (() => undefined);
  }

  /** KV budget bytes no admitted request has reserved: the most the prefix cache may hold now. */
  get kvHeadroomBytes(): number {
    return this.kvBudgetBytes - this.kvReserved;
  }

  /** KV cache bytes reserved by the admitted generations. */
  get kvReservedBytes(): number {
    return this.kvReserved;
  }

  /** Whether a request fits: slots, and KV budget once the prefix cache has given back what it must. */
  private fits(weight: number, kvBytes: number): boolean {
    if (this.used + weight > this.maxRunning || this.kvReserved + kvBytes > this.kvBudgetBytes) return false;
    const cache = this.cache();
    const over = this.kvReserved + kvBytes + (cache?.bytes ?? 0) - this.kvBudgetBytes;
    if (cache && over > 0) cache.evict(over);
    return true;
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
   * Resolves to a release function (idempotent). Throws an AdmissionError when the queue is full;
   * rejects with `signal.reason` when the signal aborts while waiting.
   */
  acquire(weight = 1, signal?: AbortSignal, kvBytes = 0): Promise<() => void> {
    const w = Math.max(1, Math.min(weight, this.maxRunning));
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (kvBytes > this.kvBudgetBytes) return Promise.reject(kvBudgetExceeded(kvBytes, this.kvBudgetBytes));
    if (this.queue.length === 0 && this.fits(w, kvBytes)) {
      this.used += w;
      this.kvReserved += kvBytes;
      return Promise.resolve(this.releaser(w, kvBytes));
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
        kvBytes,
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

  private releaser(w: number, kvBytes: number): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.used -= w;
      this.kvReserved -= kvBytes;
      this.pump();
    };
  }

  private pump(): void {
    while (this.queue.length > 0 && this.fits(this.queue[0].weight, this.queue[0].kvBytes)) {
      const w = this.queue.shift()!;
      w.cleanup();
      this.used += w.weight;
      this.kvReserved += w.kvBytes;
      w.resolve(this.releaser(w.weight, w.kvBytes));
    }
  }
}
