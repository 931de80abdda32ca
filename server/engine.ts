// The engine: a loaded checkpoint behind one onnxruntime session, generating tokens for any
// chain count and switching count between any two tokens (spec §5.5). Prompts are prefilled by
// chain 1 (spec §5.4): the cache is filled by the smallest model and only the last prompt token
// runs at the requested size. The engine knows the model runner beneath it and nothing above.
import { loadCheckpoint, parameterCount } from "../models/checkpoint.ts";
import { loadTokenizer, IncrementalDecoder, tokenText } from "../models/tokenizer.ts";
import { KvCache } from "../kernels/kv-cache.ts";
import { Sampler } from "../kernels/sampling.ts";
import { StopMatcher } from "../kernels/stop.ts";
import { ModelRunner, type Device } from "../ops/runner.ts";
import type {
  Engine,
  FinishReason,
  GenerateOptions,
  GeneratedToken,
  GenerationSummary,
  ModelInfo,
  Tokenizer,
} from "./engine-types.ts";

export interface LoadModelOptions {
  device?: Device;
  threads?: number;
  log?: (message: string) => void;
}

/** A request the engine cannot serve; `code` follows OpenAI's error codes where one exists. */
export class EngineError extends Error {
  override name = "EngineError";
  constructor(
    message: string,
    readonly code: "context_length_exceeded" | "invalid_prompt" | "invalid_chains" | "invalid_max_tokens",
    readonly param?: string,
  ) {
    super(message);
  }
}

/**
 * Prefill chunk: prompts run through chain 1 this many tokens at a time. The first chunk of a
 * prompt uses the fused causal attention kernel and later chunks the cache path, which
 * materialises scores, so one chunk is fastest; the scheduler issue will trade it against
 * interleaving decode steps.
 */
const PREFILL_CHUNK = 4096;

export class ColmEngine implements Engine {
  private readonly live = new Set<KvCache>();

  constructor(
    readonly runner: ModelRunner,
    readonly info: ModelInfo,
    readonly tokenizer: Tokenizer,
  ) {}

  kvBytesInUse(): number {
    let bytes = 0;
    for (const cache of this.live) bytes += cache.bytesInUse;
    return bytes;
  }

  /** Checks a request before any work is done; throws EngineError naming the problem. */
  validate(prompt: readonly number[], options: GenerateOptions): void {
    const { vocabSize, maxPosition, nChains } = this.info;
    if (prompt.length === 0) throw new EngineError("prompt must contain at least one token", "invalid_prompt", "prompt");
    const bad = prompt.find((t) => !Number.isInteger(t) || t < 0 || t >= vocabSize);
    if (bad !== undefined) throw new EngineError(`token id ${bad} is outside the vocabulary [0, ${vocabSize})`, "invalid_prompt", "prompt");
    if (!Number.isInteger(options.maxTokens) || options.maxTokens < 0) {
      throw new EngineError(`max_tokens must be a non-negative integer, got ${options.maxTokens}`, "invalid_max_tokens", "max_tokens");
    }
    if (prompt.length + options.maxTokens > maxPosition) {
      throw new EngineError(
        `This model's maximum context length is ${maxPosition} tokens. However, you requested ${prompt.length + options.maxTokens} tokens (${prompt.length} in the prompt, ${options.maxTokens} for the completion).`,
        "context_length_exceeded",
        "max_tokens",
      );
    }
    if (options.chains !== undefined && (!Number.isInteger(options.chains) || options.chains < 1 || options.chains > nChains)) {
      throw new EngineError(`chains must be an integer in 1 … ${nChains}, got ${options.chains}`, "invalid_chains", "chains");
    }
  }

  /**
   * Fills `cache` with the prompt and returns the logits of its last token at `chains` chains.
   * With chain-1 prefill, tokens 1 … T-1 run through chain 1 only, in chunks.
   */
  async prefill(prompt: readonly number[], chains: number, cache: KvCache, chain1Prefill = true): Promise<Float32Array> {
    const T = prompt.length;
    cache.reserve(T);
    const head = chain1Prefill ? T - 1 : 0;
    for (let at = 0; at < head; at += PREFILL_CHUNK) {
      const chunk = prompt.slice(at, Math.min(head, at + PREFILL_CHUNK));
      const out = await this.runner.step(chunk, 1, cache, []);
      cache.append(out.newKeys, out.newValues, chunk.length);
    }
    const rest = prompt.slice(head);
    const out = await this.runner.step(rest, chains, cache, [rest.length - 1]);
    cache.append(out.newKeys, out.newValues, rest.length);
    return out.logits;
  }

  /** Runs one token at `chains` chains against the cache and appends its keys/values. */
  async decode(token: number, chains: number, cache: KvCache): Promise<Float32Array> {
    const out = await this.runner.step([token], chains, cache, [0]);
    cache.append(out.newKeys, out.newValues, 1);
    return out.logits;
  }

  async *generate(prompt: number[], options: GenerateOptions): AsyncGenerator<GeneratedToken, GenerationSummary, void> {
    this.validate(prompt, options);
    const { nChains, maxPosition, eosTokenId } = this.info;
    const fixed = options.chains ?? nChains;
    const chainsFor = (index: number): number => {
      const k = options.chooseChains ? options.chooseChains(index) : fixed;
      if (!Number.isInteger(k) || k < 1 || k > nChains) throw new EngineError(`chooseChains returned ${k}; expected 1 … ${nChains}`, "invalid_chains", "chains");
      return k;
    };
    const cache = new KvCache(this.runner.config.n_layers, this.runner.config.kv_heads, this.runner.config.head_dim, Math.min(maxPosition, prompt.length + Math.min(options.maxTokens, 256)));
    this.live.add(cache);
    const sampler = new Sampler(options.sampling ?? {}, this.info.vocabSize);
    const stop = new StopMatcher(options.stop ?? []);
    const decoder = new IncrementalDecoder(this.tokenizer);
    const generated: number[] = [];
    let finishReason: FinishReason = "length";
    let prefillMs = 0;
    let decodeMs = 0;
    let stoppedByString = false;
    try {
      if (options.maxTokens > 0 && !options.signal?.aborted) {
        let chains = chainsFor(0);
        const t0 = performance.now();
        let logits = await this.prefill(prompt, chains, cache, options.chain1Prefill ?? true);
        prefillMs = performance.now() - t0;
        for (let index = 0; ; index++) {
          if (options.signal?.aborted) {
            finishReason = "cancelled";
            break;
          }
          const sampled = sampler.sample(logits, prompt, generated);
          generated.push(sampled.tokenId);
          if (eosTokenId !== null && sampled.tokenId === eosTokenId && options.stopOnEos !== false) {
            finishReason = "stop";
            break;
          }
          const matched = stop.push(decoder.push(sampled.tokenId));
          const token: GeneratedToken = { index, tokenId: sampled.tokenId, text: matched.emit, chains };
          if (sampled.logprob !== undefined) token.logprob = sampled.logprob;
          if (sampled.topLogprobs) {
            token.topLogprobs = sampled.topLogprobs.map((t) => ({ ...t, token: this.tokenText(t.tokenId) }));
          }
          yield token;
          if (matched.stopped) {
            finishReason = "stop";
            stoppedByString = true;
            break;
          }
          if (index + 1 >= options.maxTokens || cache.length >= maxPosition) break;
          if (options.signal?.aborted) {
            finishReason = "cancelled";
            break;
          }
          chains = chainsFor(index + 1);
          const t1 = performance.now();
          logits = await this.decode(sampled.tokenId, chains, cache);
          decodeMs += performance.now() - t1;
        }
      }
    } finally {
      cache.release();
      this.live.delete(cache);
    }
    const tailText = stoppedByString ? "" : stop.push(decoder.flush()).emit + stop.flush();
    return { finishReason, promptTokens: prompt.length, completionTokens: generated.length, tailText, prefillMs, decodeMs };
  }

  /** Display text of one token (for logprobs). */
  tokenText(tokenId: number): string {
    return tokenText(this.tokenizer, tokenId);
  }

  async close(): Promise<void> {
    await this.runner.close();
  }
}

export async function loadModel(dir: string, options: LoadModelOptions = {}): Promise<ColmEngine> {
  const ckpt = loadCheckpoint(dir, { onWarning: options.log });
  const c = ckpt.config;
  const tokenizer = loadTokenizer(dir, c.tokenizer, { bos: c.bos_token_id, eos: c.eos_token_id });
  const runner = await ModelRunner.create(ckpt, { device: options.device, threads: options.threads, log: options.log });
  const info: ModelInfo = {
    name: ckpt.name,
    nChains: c.nChains,
    widths: c.dk.slice(1),
    paramCounts: Array.from({ length: c.nChains }, (_, i) => parameterCount(c, i + 1)),
    vocabSize: c.vocab_size,
    maxPosition: c.max_position,
    bosTokenId: c.bos_token_id,
    eosTokenId: c.eos_token_id,
    device: runner.device,
    kvBytesPerToken: 2 * c.n_layers * c.kvWidth * 4,
  };
  return new ColmEngine(runner, info, tokenizer);
}
