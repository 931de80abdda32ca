// One generation's state inside the scheduler: sampler, stop strings, incremental detokenizer,
// the chain count per token, and a queue the caller's async iterator reads from.
import { Sampler, logSumExp, topN, type SampledToken } from "../../kernels/sampling.ts";
import { emptyDraft, extendDraft, verifyDraft, type Draft } from "../../kernels/speculative.ts";
import { StopMatcher } from "../../kernels/stop.ts";
import { IncrementalDecoder, tokenText } from "../../models/tokenizer.ts";
import { EngineError } from "./errors.ts";
import type { FinishReason, GenerateOptions, GeneratedToken, GenerationSummary, ModelInfo, PromptLogprob, Tokenizer } from "./types.ts";

type Event = { token: GeneratedToken } | { promptLogprobs: PromptLogprob[] } | { summary: GenerationSummary } | { error: unknown };

export class Sequence {
  readonly generated: number[] = [];
  /** Logits for the next token, set by the scheduler after each step. */
  logits: Float32Array | null = null;
  prefillMs = 0;
  decodeMs = 0;
  /** Prompt tokens whose keys/values came from the prefix cache. */
  cachedTokens = 0;
  done = false;
  private stoppedByString = false;
  private consumerGone = false;
  private readonly sampler: Sampler;
  private readonly stop: StopMatcher;
  private readonly decoder: IncrementalDecoder;
  private readonly events: Event[] = [];
  private wake: (() => void) | null = null;
  private lastChains = 0;
  /** The prompt's chain count when prompt logprobs are on (asked once: every chunk must agree). */
  private promptChains: number | null = null;
  /** Prompt logprobs filled chunk by chunk while the prompt goes in (null entries until then). */
  private readonly promptEntries: PromptLogprob[] | null;

  constructor(
    readonly prompt: number[],
    private readonly options: GenerateOptions,
    private readonly info: ModelInfo,
    private readonly tokenizer: Tokenizer,
  ) {
    this.sampler = new Sampler(options.sampling ?? {}, info.vocabSize);
    this.stop = new StopMatcher(options.stop ?? []);
    this.decoder = new IncrementalDecoder(tokenizer);
    this.promptEntries = options.promptLogprobs === undefined ? null : new Array<PromptLogprob>(prompt.length).fill(null);
  }

  /** Top-N alternatives per prompt token when prompt logprobs are requested, else undefined. */
  get promptLogprobs(): number | undefined {
    return this.options.promptLogprobs;
  }

  /**
   * The chain count the prompt is prefilled at (that of the first completion token). With prompt
   * logprobs every chunk runs at it, so it is asked once; otherwise once per chunk, as before.
   */
  prefillChains(): number {
    if (this.promptEntries === null) return this.chainsFor(0);
    return (this.promptChains ??= this.chainsFor(0));
  }

  /**
   * Records the prompt logprobs from the logits ([rows, V], raw) of prompt positions from … from+rows-1:
   * the logits at position p give prompt token p+1's entry.
   */
  addPromptLogits(logits: Float32Array, from: number, rows: number): void {
    const entries = this.promptEntries;
    if (!entries) return;
    const V = this.info.vocabSize;
    const n = this.options.promptLogprobs ?? 0;
    for (let i = 0; i < rows; i++) {
      const t = from + i + 1;
      if (t >= this.prompt.length) break;
      const row = logits.subarray(i * V, (i + 1) * V);
      const lse = logSumExp(row, V);
      const tokenId = this.prompt[t];
      entries[t] = {
        tokenId,
        logprob: row[tokenId] - lse,
        topLogprobs: topN(row, V, n).map((id) => ({ tokenId: id, token: tokenText(this.tokenizer, id), logprob: row[id] - lse })),
      };
    }
  }

  /**
   * The prompt is in; `logits` are its last token's. Hands the prompt logprobs (if requested) to
   * the consumer ahead of any token; then either keeps the logits for the first token or, when no
   * token was asked for (maxTokens 0), finishes with "length".
   */
  prefilled(logits: Float32Array): void {
    if (this.promptEntries) this.push({ promptLogprobs: this.promptEntries });
    if (this.options.maxTokens <= 0) return this.finish("length");
    this.logits = logits;
  }

  get chain1Prefill(): boolean {
    return this.options.chain1Prefill ?? true;
  }

  /** Whether this generation's blocks go into the prefix cache. */
  get writesCache(): boolean {
    return this.options.cache !== false;
  }

  /**
   * Whether its prompt may come from the prefix cache: not with prompt logprobs, which need every
   * prompt position at the chosen size, nor when the whole prompt is to run at that size.
   */
  get readsCache(): boolean {
    return this.writesCache && this.promptEntries === null && this.chain1Prefill;
  }

  get cacheSalt(): string | undefined {
    return this.options.cacheSalt;
  }

  /** Every token whose keys/values the sequence's row can hold: the prompt, then the generated ones. */
  get tokens(): number[] {
    return [...this.prompt, ...this.generated];
  }

  get cancelled(): boolean {
    return this.consumerGone || (this.options.signal?.aborted ?? false);
  }

  get lastToken(): number {
    return this.generated[this.generated.length - 1];
  }

  /** The chain count for token `index` (LM switching: it may change at any token). */
  chainsFor(index: number): number {
    const n = this.info.nChains;
    const k = this.options.chooseChains ? this.options.chooseChains(index) : (this.options.chains ?? n);
    if (Number.isInteger(k) && k >= 1 && k <= n) return (this.lastChains = k);
    this.fail(new EngineError(`Invalid value for 'chains': a switch asked for ${k}; it must be an integer from 1 to ${n}.`, "invalid_value", "chains"));
    return 1;
  }

  /**
   * The drafts for the decode round about to start at `chains` chains: 0 for a plain step. At most
   * what the generation may still emit (a round emits up to drafts + 1 tokens) and what the
   * context has room for (`cached`: the row's keys/values, every token but the last).
   */
  draftsFor(chains: number, batch: number, cached: number): { draftChains: number; tokens: number; sampled: boolean } {
    const spec = this.options.speculative;
    const draftChains = spec?.draftChains ?? 1;
    const sampled = !this.sampler.greedy;
    if (!spec || draftChains >= chains) return { draftChains, tokens: 0, sampled };
    const wanted = typeof spec.draftTokens === "number" ? spec.draftTokens : spec.draftTokens({ chains, draftChains, batch, sampled });
    const room = Math.min(this.options.maxTokens - this.generated.length - 1, this.info.maxPosition - cached - 1);
    return { draftChains, tokens: Math.max(0, Math.min(Math.floor(wanted) || 0, room)), sampled };
  }

  /** A new, empty draft after the last emitted token. */
  startDraft(): Draft {
    return emptyDraft(this.sampler);
  }

  /** Adds a draft token chosen from the draft model's `logits`; returns it. */
  extendDraft(draft: Draft, logits: Float32Array): number {
    return extendDraft(draft, this.sampler, logits, this.prompt, this.generated);
  }

  /**
   * Verifies `draft` against the target's logits at the last token and each draft ([γ+1, V]) and
   * emits the accepted drafts and the target's next token (stopping early if the generation ends).
   * `position` is the last emitted token's position. Returns the drafts accepted.
   */
  settleDraft(draft: Draft, target: Float32Array, position: number): number {
    const verdict = verifyDraft(draft, this.sampler, target, this.prompt, this.generated);
    verdict.tokens.forEach((t, i) => this.done || this.emit(t, position + 1 + i >= this.info.maxPosition));
    return verdict.accepted;
  }

  /** Samples a token from `logits`, queues it, and finishes the generation when it should end. */
  sampleNext(atContextLimit: boolean): void {
    const logits = this.logits!;
    this.logits = null;
    this.emit(this.sampler.sample(logits, this.prompt, this.generated), atContextLimit);
  }

  /** Queues a chosen token; finishes the generation when it should end. */
  private emit(sampled: SampledToken, atContextLimit: boolean): void {
    this.generated.push(sampled.tokenId);
    const eos = this.info.eosTokenId;
    if (eos !== null && sampled.tokenId === eos && this.options.stopOnEos !== false) return this.finish("stop");
    const matched = this.stop.push(this.decoder.push(sampled.tokenId));
    const token: GeneratedToken = { index: this.generated.length - 1, tokenId: sampled.tokenId, text: matched.emit, chains: this.lastChains };
    if (sampled.logprob !== undefined) token.logprob = sampled.logprob;
    if (sampled.topLogprobs) token.topLogprobs = sampled.topLogprobs.map((t) => ({ ...t, token: tokenText(this.tokenizer, t.tokenId) }));
    this.push({ token });
    if (matched.stopped) {
      this.stoppedByString = true;
      return this.finish("stop");
    }
    if (this.generated.length >= this.options.maxTokens || atContextLimit) this.finish("length");
  }

  finish(reason: FinishReason): void {
    if (this.done) return;
    this.done = true;
    const tailText = this.stoppedByString ? "" : this.stop.push(this.decoder.flush()).emit + this.stop.flush();
    this.push({
      summary: {
        finishReason: this.cancelled ? "cancelled" : reason,
        promptTokens: this.prompt.length,
        completionTokens: this.generated.length,
        cachedTokens: this.cachedTokens,
        tailText,
        prefillMs: this.prefillMs,
        decodeMs: this.decodeMs,
      },
    });
  }

  fail(error: unknown): void {
    if (this.done) return;
    this.done = true;
    this.push({ error });
  }

  /** The consumer stopped reading: the scheduler drops the sequence at its next step. */
  abandon(): void {
    this.consumerGone = true;
  }

  private push(e: Event): void {
    this.events.push(e);
    this.wake?.();
    this.wake = null;
  }

  /** The caller's side: tokens as they come, then the summary (or the error). */
  async *stream(): AsyncGenerator<GeneratedToken, GenerationSummary, void> {
    try {
      for (;;) {
        while (!this.events.length) await new Promise<void>((resolve) => (this.wake = resolve));
        const e = this.events.shift()!;
        if ("token" in e) yield e.token;
        else if ("promptLogprobs" in e) this.options.onPromptLogprobs?.(e.promptLogprobs);
        else if ("summary" in e) return e.summary;
        else throw e.error;
      }
    } finally {
      this.abandon();
    }
  }
}
