// Continuous batching: one loop over slots, in the spirit of llama.cpp's server. Every running
// sequence owns a row of one shared KV cache; new sequences join between decode steps (their
// prompt prefilled by chain 1, spec §5.4), each step advances every running sequence by one
// token — each row at its own chain count — or, for a speculating row, by a round of drafts and a
// verify call (speculation.ts); finished or cancelled sequences leave at once (the last row moves
// into the hole, so rows in use stay a prefix). Rows are grouped by plan (speculating or not,
// chain count, drafts); each group is one batched call. With a prefix cache, a new
// sequence's row starts with the longest cached block prefix of its prompt (copied, not
// prefilled), and each sequence's full blocks are stored once its prompt is in and when it leaves.
import { KvCache } from "../../kernels/kv-cache.ts";
import type { ModelRunner } from "../../ops/runner.ts";
import type { PrefixBlock, PrefixCache } from "./prefix-cache.ts";
import type { Sequence } from "./sequence.ts";
import { speculativeRound, type RoundPlan } from "./speculation.ts";
import type { StepStats } from "./types.ts";

export type { StepStats };

/**
 * Prompt tokens run through chain 1 per call. Alone, a prompt goes in one call: its first chunk
 * uses the fused causal attention kernel, later chunks the cache path, which materialises scores.
 * While other sequences are decoding, a prompt is prefilled `interleavedChunk` tokens per loop
 * iteration (default INTERLEAVED_CHUNK), so it never stalls their tokens for longer than one chunk.
 */
const PREFILL_CHUNK = 4096;
const INTERLEAVED_CHUNK = 256;
/**
 * Most bytes of logits one prefill call may return when every prompt position's logits are wanted
 * (prompt logprobs): a chunk is at most this / (4 · V) tokens (512 for a 32k vocabulary).
 */
const PROMPT_LOGITS_BYTES = 64 * 2 ** 20;

/** Plain before speculating, then larger chain count, draft count and draft length first; speculating rows greedy before sampled. */
function comparePlans(a: RoundPlan, b: RoundPlan): number {
  const spec = Math.sign(a.drafts) - Math.sign(b.drafts);
  if (spec || !a.drafts) return spec || b.chains - a.chains;
  return b.chains - a.chains || b.draftChains - a.draftChains || b.drafts - a.drafts || Number(a.sampled) - Number(b.sampled);
}

function samePlan(a: RoundPlan, b: RoundPlan): boolean {
  return comparePlans(a, b) === 0;
}

/** Receives the raw logits ([rows, V]) of prompt positions from … from+rows-1. */
export type PromptLogitsSink = (logits: Float32Array, from: number, rows: number) => void;

/**
 * Continues filling row `row` of `cache` with `prompt` (from the row's current length), at most
 * `budget` prompt tokens this call. Returns the logits of the prompt's last token at `chains`
 * chains once the prompt is in, else null. With chain-1 prefill (spec §5.4) tokens 1 … T-1 run
 * through chain 1 only, with no logits; the last token runs at the requested size.
 *
 * With `onPromptLogits` (prompt logprobs), every prompt token runs at `chains` with logits for every
 * row, which go to the sink chunk by chunk; chain1Prefill is then ignored. The keys/values written
 * are the same (chain 1 makes them, spec §3), so what follows is unchanged.
 */
export async function prefillRow(
  runner: ModelRunner,
  cache: KvCache,
  row: number,
  prompt: readonly number[],
  chains: number,
  chain1Prefill = true,
  budget = Infinity,
  onPromptLogits?: PromptLogitsSink,
): Promise<Float32Array | null> {
  if (onPromptLogits) return prefillAllLogits(runner, cache, row, prompt, chains, budget, onPromptLogits);
  const head = chain1Prefill ? prompt.length - 1 : 0;
  let done = cache.lengths[row];
  while (done < head && budget > 0) {
    const n = Math.min(head - done, PREFILL_CHUNK, budget);
    const out = await runner.stepRows([prompt.slice(done, done + n)], 1, cache, [], row);
    cache.append(out.newKeys, out.newValues, n, row, 1);
    done += n;
    budget -= n;
  }
  if (done < head) return null;
  const rest = prompt.slice(done);
  const out = await runner.stepRows([rest], chains, cache, [rest.length - 1], row);
  cache.append(out.newKeys, out.newValues, rest.length, row, 1);
  return out.logits;
}

/** prefillRow with logits for every prompt position, all at `chains`. */
async function prefillAllLogits(
  runner: ModelRunner,
  cache: KvCache,
  row: number,
  prompt: readonly number[],
  chains: number,
  budget: number,
  sink: PromptLogitsSink,
): Promise<Float32Array | null> {
  const V = runner.config.vocab_size;
  const maxRows = Math.max(1, Math.floor(PROMPT_LOGITS_BYTES / (4 * V)));
  let done = cache.lengths[row];
  while (done < prompt.length && budget > 0) {
    const n = Math.min(prompt.length - done, PREFILL_CHUNK, maxRows, budget);
    const rows = Array.from({ length: n }, (_, i) => i);
    const out = await runner.stepRows([prompt.slice(done, done + n)], chains, cache, rows, row);
    cache.append(out.newKeys, out.newValues, n, row, 1);
    sink(out.logits, done, n);
    done += n;
    budget -= n;
    if (done === prompt.length) return out.logits.slice((n - 1) * V, n * V);
  }
  return null;
}

export class Scheduler {
  private readonly cache: KvCache;
  private readonly stepListeners: ((s: StepStats) => void)[] = [];
  /** running[r] owns cache row r. */
  private readonly running: Sequence[] = [];
  /** The sequence whose prompt is going in; it always holds the last running row. */
  private prefilling: Sequence | null = null;
  private readonly waiting: Sequence[] = [];
  private loop: Promise<void> | null = null;
  /** Prefix-cache blocks each running sequence holds (matched or stored by it). */
  private readonly held = new Map<Sequence, PrefixBlock[]>();
  /** Sequences whose prompt went in this iteration: their blocks are stored after the decode step. */
  private readonly toStore: Sequence[] = [];

  constructor(
    private readonly runner: ModelRunner,
    readonly maxRows: number,
    private readonly interleavedChunk = INTERLEAVED_CHUNK,
    private readonly prefix: PrefixCache | null = null,
  ) {
    const c = runner.config;
    this.cache = new KvCache(c.n_layers, c.kv_heads, c.head_dim, 64, maxRows);
  }

  /** KV bytes held by live sequences (cancelled ones count as freed at once). */
  kvBytesInUse(): number {
    let tokens = 0;
    this.running.forEach((s, r) => {
      if (!s.cancelled) tokens += this.cache.lengths[r];
    });
    return tokens * this.cache.bytesPerToken;
  }

  get counts(): { running: number; waiting: number } {
    return { running: this.running.length, waiting: this.waiting.length };
  }

  onStep(listener: (s: StepStats) => void): void {
    this.stepListeners.push(listener);
  }

  private report(s: StepStats): void {
    for (const fn of this.stepListeners) fn(s);
  }

  submit(seq: Sequence): void {
    this.waiting.push(seq);
    this.loop ??= this.run().finally(() => {
      this.loop = null;
      if (this.waiting.length) this.submit(this.waiting.shift()!); // raced in while the loop was ending
    });
  }

  private async run(): Promise<void> {
    while (this.running.length || this.waiting.length) {
      try {
        await this.admit();
        this.emit();
        await this.decode();
        this.storePrompts();
      } catch (err) {
        // A bug must not leave callers waiting forever or take the process down: fail them all.
        for (const seq of [...this.running, ...this.waiting]) seq.fail(err);
        this.prefilling = null;
        this.toStore.length = 0;
        while (this.running.length) this.remove(this.running.length - 1, false);
        this.waiting.length = 0;
      }
      await new Promise((resolve) => setImmediate(resolve)); // let I/O (new requests, writes) run
    }
  }

  /** Continues the prompt going in, or moves the next waiting sequence into a row and starts its prompt. */
  private async admit(): Promise<void> {
    if (!this.prefilling) {
      while (this.waiting.length && this.waiting[0].cancelled) this.waiting.shift()!.finish("cancelled");
      if (!this.waiting.length || this.running.length >= this.maxRows) return;
      this.prefilling = this.waiting.shift()!;
      this.running.push(this.prefilling);
      this.reuseCached(this.prefilling, this.running.length - 1);
    }
    const seq = this.prefilling;
    const row = this.running.length - 1;
    if (seq.cancelled) {
      this.prefilling = null;
      this.remove(row);
      return seq.finish("cancelled");
    }
    const before = this.cache.lengths[row];
    const t0 = performance.now();
    try {
      const chains = seq.prefillChains();
      const budget = this.running.length > 1 ? this.interleavedChunk : Infinity;
      const all = seq.promptLogprobs !== undefined;
      const sink: PromptLogitsSink | undefined = all ? (logits, from, rows) => seq.addPromptLogits(logits, from, rows) : undefined;
      const logits = await prefillRow(this.runner, this.cache, row, seq.prompt, chains, seq.chain1Prefill, budget, sink);
      const ms = performance.now() - t0;
      seq.prefillMs += ms;
      this.report({ kind: "prefill", rows: 1, tokens: this.cache.lengths[row] - before, chains: logits || all ? chains : 1, ms });
      if (logits) {
        this.prefilling = null;
        this.toStore.push(seq);
        seq.prefilled(logits);
        if (seq.done) this.remove(row); // maxTokens 0: only the prompt logprobs were wanted
      }
    } catch (err) {
      this.prefilling = null;
      this.remove(row, false);
      seq.fail(err);
    }
  }

  /** Starts a new sequence's empty row with the longest cached prefix of its prompt (all but its last token). */
  private reuseCached(seq: Sequence, row: number): void {
    if (!this.prefix || !seq.writesCache) return;
    if (!seq.readsCache) return void this.held.set(seq, []);
    const t0 = performance.now();
    const blocks = this.prefix.reuse(seq.prompt, seq.cacheSalt, seq.prompt.length - 1, this.cache, row);
    this.held.set(seq, blocks);
    seq.cachedTokens = this.cache.lengths[row];
    if (seq.cachedTokens > 0) this.report({ kind: "prefix_copy", rows: 1, tokens: seq.cachedTokens, chains: 1, ms: performance.now() - t0 });
  }

  /** Caches the full blocks of `seq`'s row (its prompt, then what it generated) and holds them. */
  private storeBlocks(seq: Sequence, row: number): void {
    const held = this.held.get(seq);
    if (!this.prefix || !held) return;
    const chain = this.prefix.store(seq.tokens, this.cache.lengths[row], seq.cacheSalt, this.cache, row);
    this.prefix.release(held);
    this.held.set(seq, chain);
  }

  /** Stores the prompts that went in this iteration (after the decode step, off their first token's path). */
  private storePrompts(): void {
    for (const seq of this.toStore.splice(0)) {
      const row = this.running.indexOf(seq);
      if (row >= 0 && !seq.cancelled) this.storeBlocks(seq, row);
    }
  }

  /** Samples the next token of every sequence that has logits; drops the finished ones. */
  private emit(): void {
    for (let r = this.running.length - 1; r >= 0; r--) {
      const seq = this.running[r];
      if (seq === this.prefilling) continue; // admit() handles it
      if (seq.cancelled) seq.finish("cancelled");
      else if (seq.logits) seq.sampleNext(this.cache.lengths[r] >= this.runner.config.max_position);
      if (seq.done) this.remove(r);
    }
  }

  /**
   * One decode step: every running row advances by its last token, at its own chain count — or,
   * for a speculating row, by a round of drafts and one verify call (speculation.ts). Rows are kept
   * grouped by plan (speculating or not, chain count, draft count) and each group is one batched
   * call over a contiguous range of rows: the small rows then skip the large chains' weights and
   * attention, which beats one call at the largest count with per-row logits (figures in
   * server/README.md).
   */
  private async decode(): Promise<void> {
    const n = this.running.length - (this.prefilling ? 1 : 0);
    if (!n) return;
    const plans = this.running.slice(0, n).map((s, r): RoundPlan => {
      const chains = s.chainsFor(s.generated.length);
      const draft = s.draftsFor(chains, n, this.cache.lengths[r]);
      return { chains, draftChains: draft.draftChains, drafts: draft.tokens, sampled: draft.sampled };
    });
    this.groupByPlan(plans);
    const V = this.runner.config.vocab_size;
    const t0 = performance.now();
    try {
      for (let at = 0; at < n; ) {
        let end = at;
        while (end < n && samePlan(plans[end], plans[at])) end++;
        const group = this.running.slice(at, end);
        const plan = plans[at];
        if (plan.drafts > 0) {
          await speculativeRound(this.runner, this.cache, group, at, plan, (s) => this.report(s));
        } else {
          const t1 = performance.now();
          const out = await this.runner.stepRows(group.map((s) => [s.lastToken]), plan.chains, this.cache, group.map((_, i) => i), at);
          this.cache.append(out.newKeys, out.newValues, 1, at, group.length);
          this.report({ kind: "decode", rows: group.length, tokens: group.length, chains: plan.chains, ms: performance.now() - t1 });
          group.forEach((s, i) => (s.logits = out.logits.slice(i * V, (i + 1) * V)));
        }
        at = end;
      }
      const ms = performance.now() - t0;
      for (const s of this.running.slice(0, n)) s.decodeMs += ms;
    } catch (err) {
      for (let r = n - 1; r >= 0; r--) {
        const seq = this.running[r];
        this.remove(r, false);
        seq.fail(err);
      }
    }
  }

  /**
   * Orders rows so that equal plans are contiguous: plain rows first, then speculating ones; each
   * by chain count, largest first (rows rarely change plan, so swaps are rare).
   */
  private groupByPlan(plans: RoundPlan[]): void {
    for (let i = 0; i < plans.length; i++) {
      let best = i;
      for (let j = i + 1; j < plans.length; j++) if (comparePlans(plans[j], plans[best]) < 0) best = j;
      if (best === i) continue;
      [plans[i], plans[best]] = [plans[best], plans[i]];
      [this.running[i], this.running[best]] = [this.running[best], this.running[i]];
      this.cache.swapRows(i, best);
    }
  }

  /**
   * Frees row r: its sequence leaves (its full blocks cached first when `keep`: a finished or
   * cancelled sequence's keys/values are good, a failed one's are not trusted) and a later row
   * moves into its place (the prompt going in stays last).
   */
  private remove(r: number, keep = true): void {
    const seq = this.running[r];
    if (keep) this.storeBlocks(seq, r);
    this.prefix?.release(this.held.get(seq) ?? []);
    this.held.delete(seq);
    this.cache.truncate(0, r);
    const last = this.running.length - 1;
    const fill = this.prefilling && r !== last ? last - 1 : last; // the last decoding row
    if (r !== fill) {
      this.cache.moveRow(fill, r);
      this.running[r] = this.running[fill];
    }
    if (fill !== last) {
      this.cache.moveRow(last, fill);
      this.running[fill] = this.running[last];
    }
    this.running.pop();
    if (this.running.length === 0) this.cache.shrink();
  }
}
