// The contract between the engine (server/engine/engine.ts) and everything above it (policy, the
// HTTP/WS API, load tests). The engine implements it; callers depend on nothing else.
import type { SamplingOptions } from "../../kernels/sampling.ts";
import type { ModelInfo } from "../../models/model-info.ts";
import type { Tokenizer } from "../../models/tokenizer.ts";

import type { PrefixCacheStats } from "./prefix-cache.ts";

export type { ModelInfo, PrefixCacheStats, SamplingOptions, Tokenizer };

export interface GenerateOptions {
  /** Fixed chain count 1 … n. Ignored when chooseChains is given. Default: n. */
  chains?: number;
  /** Called before each new token (index 0 is the first completion token); the chain count it
   * returns is used for that token. This is LM switching (spec §5.5): no KV is recomputed. */
  chooseChains?: (index: number) => number;
  sampling?: SamplingOptions;
  maxTokens: number;
  /** Stop strings, matched across token boundaries; the matched text is not emitted. */
  stop?: string[];
  /** Stop when the model emits EOS (default true). */
  stopOnEos?: boolean;
  /** Aborting cancels the generation at the next token and frees its KV cache. */
  signal?: AbortSignal;
  /** Prefill the prompt with chain 1 only (spec §5.4). Default true; false runs the whole
   * prompt at the requested size (for comparison). */
  chain1Prefill?: boolean;
  /**
   * Prompt logprobs (vLLM's `prompt_logprobs`): the number of top alternatives (0 … 20) to return
   * with each prompt token's logprob. Undefined: off. When set, the whole prompt runs at the chain
   * count of the first completion token (chainsFor(0), asked once), with logits for every position,
   * instead of the chain-1 prefill (chain1Prefill is ignored); the keys/values and so the completion
   * are the same either way. maxTokens may then be 0: the prompt is prefilled, onPromptLogprobs is
   * called and the generation finishes with "length" and no tokens.
   */
  promptLogprobs?: number;
  /**
   * Called exactly once with the prompt logprobs (one entry per prompt token, the first null) once
   * the prompt is prefilled, before the first token is yielded, in the consumer's context (from the
   * iterator's next(); an exception it throws ends the generation and propagates to the caller).
   * Not called when the generation is cancelled or fails before its prompt is in.
   */
  onPromptLogprobs?: (logprobs: PromptLogprob[]) => void;
  /**
   * Automatic prefix caching (default true): the prompt's longest cached block prefix is copied
   * instead of prefilled, and this generation's full blocks are cached for later ones. false: the
   * cache is neither read nor written. Requests with prompt logprobs (every prompt position must
   * run at the chosen size) or chain1Prefill false never read it, but still write it.
   */
  cache?: boolean;
  /** Blocks are shared only between generations with the same salt (vLLM's cache_salt). */
  cacheSalt?: string;
  /**
   * Self-speculative decoding: sub-model `draftChains` drafts tokens that the generation's own
   * chain count then verifies in one call (exact: greedy output is unchanged, sampled output keeps
   * the target's distribution). Undefined: plain decoding.
   */
  speculative?: SpeculativeOptions;
}

export interface SpeculativeOptions {
  /** The draft sub-model's chain count (default 1). A round whose target count is not above it runs plainly. */
  draftChains?: number;
  /** Draft tokens per round (γ); a function is asked before every round (0: a plain step this round). */
  draftTokens: number | ((round: DraftRound) => number);
}

/** What a draft-length policy is told before a round. */
export interface DraftRound {
  /** The target chain count (the generation's count for its next token). */
  chains: number;
  draftChains: number;
  /** Sequences decoding in this step. */
  batch: number;
  /** Whether the generation samples (acceptance is lower than for greedy ones, so it is learnt apart). */
  sampled: boolean;
}

/**
 * Prompt token t's logprob given tokens 0 … t-1: log_softmax of the raw model logits at position
 * t-1 (no temperature, penalties or logit_bias, as vLLM reports them) at the prompt's chain count,
 * at prompt[t]; topLogprobs are the top-N of that same distribution, most likely first (ties: lower
 * id). The first prompt token has nothing before it: null.
 */
export type PromptLogprob = { tokenId: number; logprob: number; topLogprobs: TopLogprob[] } | null;

export interface TopLogprob {
  tokenId: number;
  /** Decoded text of that token alone. */
  token: string;
  logprob: number;
}

export interface GeneratedToken {
  /** 0-based index of the completion token. */
  index: number;
  tokenId: number;
  /** Text this token releases for display (may be "" while a multi-byte character or a
   * possible stop-string prefix is held back; the held text comes out with later tokens). */
  text: string;
  /** Chain count that produced this token's logits. */
  chains: number;
  /** Log-probability of the token under the model's distribution (when logprobs requested). */
  logprob?: number;
  topLogprobs?: TopLogprob[];
}

export type FinishReason = "stop" | "length" | "cancelled";

export interface GenerationSummary {
  finishReason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  /** Prompt tokens whose keys/values came from the prefix cache (not prefilled). */
  cachedTokens: number;
  /** Text still held back at the end (flushed); callers append it to the output. */
  tailText: string;
  /** Wall time of the prompt prefill and of all decode steps, in milliseconds. */
  prefillMs: number;
  decodeMs: number;
}

/** What one model call cost: the scheduler reports every step. */
export interface StepStats {
  /**
   * prefix_copy: cached keys/values copied into a new sequence's row (tokens = tokens copied).
   * draft: a decode step of speculating rows at their draft count. verify: the target count over
   * each speculating row's last token and its drafts (tokens = rows · (drafts + 1)).
   */
  kind: "prefill" | "decode" | "prefix_copy" | "draft" | "verify";
  /** Sequences in the call (decode) or 1 (prefill). */
  rows: number;
  /** New tokens processed (prompt tokens for a prefill, one per row for a decode step). */
  tokens: number;
  /** Chain count the call ran (the largest of its rows). */
  chains: number;
  ms: number;
  /**
   * verify only: the draft count; the drafts checked and accepted (all rows); the rows whose drafts
   * were cut short by a rejection (the others had every draft accepted).
   */
  speculation?: { draftChains: number; drafted: number; accepted: number; rejected: number; sampled: boolean };
}

/** What the layers above see of the engine's prefix cache (server/engine/prefix-cache.ts). */
export interface PrefixCacheControl {
  /** Prompt tokens a generation with this prompt and salt would take from the cache now. */
  cachedTokens(prompt: readonly number[], salt?: string): number;
  /** Bytes held now. */
  readonly bytes: number;
  /** Frees at least `bytes` if it can (least recently used first); returns the bytes freed. */
  evict(bytes: number): number;
  /** Bounds the bytes the cache may hold (besides its own limit), e.g. by the KV budget left. */
  limitBy(headroom: () => number): void;
  stats(): PrefixCacheStats;
}

export interface EngineLoad {
  running: number;
  waiting: number;
}

export interface Engine {
  readonly info: ModelInfo;
  readonly tokenizer: Tokenizer;
  /** Async iterator of tokens; its return value (when done) is the summary. */
  generate(prompt: number[], options: GenerateOptions): AsyncGenerator<GeneratedToken, GenerationSummary, void>;
  /** KV cache bytes held by live generations right now. */
  kvBytesInUse(): number;
  /** Sequences in the running batch and waiting for a row. */
  readonly load: EngineLoad;
  /** The prefix cache (absent: none). */
  readonly prefixCache?: PrefixCacheControl;
  /** Called after every model call with what it cost (the cost model learns from it). */
  onStep(listener: (step: StepStats) => void): void;
  /** Release the onnxruntime session. */
  close(): Promise<void>;
}
