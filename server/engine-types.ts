// The contract between the engine (server/engine.ts) and everything above it (HTTP/WS API,
// scheduler, load tests). The engine implements it; callers depend on nothing else.

/** What a loaded model is, as the API layer reports it. */
export interface ModelInfo {
  /** Model name (the folder name unless the config says otherwise), e.g. "colm-kjv". */
  name: string;
  /** Number of chains n: sub-models 1 … n are servable. */
  nChains: number;
  /** Hidden width d_k of sub-model k, index k-1. */
  widths: number[];
  /** Parameter count of sub-model k (weights it reads), index k-1. */
  paramCounts: number[];
  vocabSize: number;
  /** Longest sequence (prompt + completion) the model accepts. */
  maxPosition: number;
  bosTokenId: number | null;
  eosTokenId: number | null;
  /** Execution provider actually in use. */
  device: "cpu" | "cuda";
  /** KV cache bytes per token (spec §5.6: 2 · L · kv_heads · hd · 4). */
  kvBytesPerToken: number;
}

/** Sampling controls (OpenAI names, camelCased). Every field optional; defaults are greedy-free
 * OpenAI defaults: temperature 1, topP 1, topK 0 (off), minP 0 (off), penalties off. */
export interface SamplingOptions {
  /** 0 means greedy. */
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** 1 means off (multiplicative, as in vLLM / HF). */
  repetitionPenalty?: number;
  /** token id → additive bias. */
  logitBias?: Record<number, number>;
  /** Same seed → same tokens. */
  seed?: number;
  /** Return the top-N alternatives' logprobs with each token (0 … 20). Undefined: no logprobs. */
  logprobs?: number;
}

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
}

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
  /** Text still held back at the end (flushed); callers append it to the output. */
  tailText: string;
  /** Wall time of the prompt prefill and of all decode steps, in milliseconds. */
  prefillMs: number;
  decodeMs: number;
}

export interface Tokenizer {
  encode(text: string): number[];
  decode(ids: number[]): string;
}

export interface Engine {
  readonly info: ModelInfo;
  readonly tokenizer: Tokenizer;
  /** Async iterator of tokens; its return value (when done) is the summary. */
  generate(prompt: number[], options: GenerateOptions): AsyncGenerator<GeneratedToken, GenerationSummary, void>;
  /** KV cache bytes held by live generations right now. */
  kvBytesInUse(): number;
  /** Release the onnxruntime session. */
  close(): Promise<void>;
}
