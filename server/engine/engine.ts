// The engine: a loaded checkpoint behind one onnxruntime session, generating tokens for any
// chain count and switching count between any two tokens (spec §5.5). Prompts are prefilled by
// chain 1 (spec §5.4): the cache is filled by the smallest model and only the last prompt token
// runs at the requested size. The engine knows the model runner beneath it and nothing above.
import { basename, join, resolve } from "node:path";
import { loadCheckpoint, parameterCount, weightBytesOf } from "../../models/checkpoint.ts";
import { bitsOf, checkpointPrecision, configAtPrecision, type Precision } from "../../models/quantized.ts";
import { SafetensorsFile, openWeights } from "../../models/safetensors.ts";
import { quantizeCheckpoint } from "../../kernels/quantize.ts";
import { kvValuesPerToken, readConfig } from "../../models/config.ts";
import { loadTokenizer } from "../../models/tokenizer.ts";
import { ModelRunner, nativeWanted, type Device } from "../../ops/runner.ts";
import { cachedGraph, cachedQuantizedWeights } from "../../ops/graph-cache.ts";
import { weightsInFile } from "../../kernels/native-decoder.ts";
import { Scheduler, prefillRow, type StepStats } from "./scheduler.ts";
import { Sequence } from "./sequence.ts";
import { DEFAULT_BLOCK_TOKENS, PrefixCache } from "./prefix-cache.ts";
import { EngineError, checkChains, checkContext, checkPrompt } from "./errors.ts";
import { MAX_TOP_LOGPROBS } from "../../kernels/sampling.ts";
import { MAX_DRAFT_TOKENS } from "./speculation.ts";

export { EngineError };
import type {
  Engine,
  GenerateOptions,
  GeneratedToken,
  GenerationSummary,
  ModelInfo,
  Tokenizer,
} from "./types.ts";

export interface LoadModelOptions {
  device?: Device;
  threads?: number;
  /** Sequences decoded together in one batched step (default 16). */
  maxBatch?: number;
  /** Prompt tokens prefilled per scheduler step while other sequences decode (default 256). */
  prefillChunk?: number;
  /**
   * Build the graph in a child process and cache it on disk (ops/graph-cache.ts), so this process
   * never holds the checkpoint. Default: only for checkpoints over 64 MiB of weights.
   */
  graphCache?: boolean;
  /** Where cached graphs live (default .cache/graphs, or COLM_GRAPH_CACHE). */
  graphCacheDir?: string;
  /**
   * The precision to run at (default: the checkpoint's own). A float32 checkpoint is quantized at
   * load time (and its graph cached quantized); a quantized one runs at its stored precision only.
   */
  quant?: Precision;
  log?: (message: string) => void;
  /** Most bytes the prefix cache holds (0: no prefix cache). Default DEFAULT_PREFIX_CACHE_BYTES. */
  prefixCacheBytes?: number;
  /** Tokens per prefix-cache block (default 16). */
  prefixBlockTokens?: number;
}

/** The prefix cache's size when the caller names none (the server passes a share of its KV budget). */
export const DEFAULT_PREFIX_CACHE_BYTES = 256 * 2 ** 20;

export class ColmEngine implements Engine {
  private readonly scheduler: Scheduler;
  /** The prefix cache (undefined: caching off). */
  readonly prefixCache?: PrefixCache;

  constructor(
    readonly runner: ModelRunner,
    readonly info: ModelInfo,
    readonly tokenizer: Tokenizer,
    /** Sequences decoded together in one batched step (rows of the shared KV cache). */
    maxBatch = 16,
    prefillChunk?: number,
    prefix: { bytes: number; blockTokens?: number } = { bytes: DEFAULT_PREFIX_CACHE_BYTES },
  ) {
    if (prefix.bytes > 0) this.prefixCache = new PrefixCache(prefix.bytes, info.kvBytesPerToken, prefix.blockTokens ?? DEFAULT_BLOCK_TOKENS);
    this.scheduler = new Scheduler(runner, maxBatch, prefillChunk, this.prefixCache ?? null);
  }

  kvBytesInUse(): number {
    return this.scheduler.kvBytesInUse();
  }

  /** Called after every model call with what it cost (prefill or batched decode step). */
  onStep(listener: (s: StepStats) => void): void {
    this.scheduler.onStep(listener);
  }

  /** Sequences in the running batch and waiting for a row. */
  get load(): { running: number; waiting: number } {
    return this.scheduler.counts;
  }

  /** Checks a request before any work is done; throws EngineError naming the problem. */
  validate(prompt: readonly number[], options: GenerateOptions): void {
    checkPrompt(prompt, this.info);
    if (!Number.isInteger(options.maxTokens) || options.maxTokens < 0) {
      throw new EngineError(`max_tokens must be a non-negative integer, got ${options.maxTokens}`, "invalid_value", "max_tokens");
    }
    const pl = options.promptLogprobs;
    if (pl !== undefined && (!Number.isInteger(pl) || pl < 0 || pl > MAX_TOP_LOGPROBS)) {
      throw new EngineError(`prompt_logprobs must be an integer in 0 … ${MAX_TOP_LOGPROBS}, got ${pl}`, "invalid_value", "prompt_logprobs");
    }
    checkContext(this.info, prompt.length, options.maxTokens);
    if (options.cacheSalt !== undefined && typeof options.cacheSalt !== "string") {
      throw new EngineError("cache_salt must be a string", "invalid_value", "cache_salt");
    }
    if (options.chains !== undefined) checkChains(options.chains, this.info);
    const spec = options.speculative;
    if (spec) {
      if (spec.draftChains !== undefined) checkChains(spec.draftChains, this.info, "draft_chains");
      const d = spec.draftTokens;
      if (typeof d !== "function" && !(Number.isInteger(d) && d >= 0 && d <= MAX_DRAFT_TOKENS)) {
        throw new EngineError(`max_draft must be an integer in 0 … ${MAX_DRAFT_TOKENS}, got ${d}`, "invalid_value", "max_draft");
      }
    }
  }

  /**
   * Tokens as they are generated. Concurrent generations are batched by the scheduler: each joins
   * the running batch between decode steps and advances one token per batched step.
   */
  async *generate(prompt: number[], options: GenerateOptions): AsyncGenerator<GeneratedToken, GenerationSummary, void> {
    this.validate(prompt, options);
    const seq = new Sequence(prompt, options, this.info, this.tokenizer);
    // maxTokens 0 needs no model call, unless the prompt logprobs are wanted.
    const nothingToRun = options.maxTokens === 0 && options.promptLogprobs === undefined;
    if (nothingToRun || options.signal?.aborted) seq.finish(options.signal?.aborted ? "cancelled" : "length");
    else this.scheduler.submit(seq);
    return yield* seq.stream();
  }

  async close(): Promise<void> {
    await this.runner.close();
  }
}

/** Checkpoints with more weight bytes than this get their graph built out of process and cached. */
const OUT_OF_PROCESS_BYTES = 64 * 2 ** 20;

export async function loadModel(dir: string, options: LoadModelOptions = {}): Promise<ColmEngine> {
  const stored = readConfig(join(dir, "config.json"));
  const { config, precision } = configAtPrecision(dir, stored, options.quant);
  const runnerOptions = { device: options.device, threads: options.threads, log: options.log };
  const tokenizer = loadTokenizer(dir, config.tokenizer, { bos: config.bos_token_id, eos: config.eos_token_id });
  let runner: ModelRunner;
  if (options.graphCache ?? weightBytesOf(stored) > OUT_OF_PROCESS_BYTES) {
    const own = precision === checkpointPrecision(stored);
    let native: ModelRunner | undefined;
    if (precision !== "f32" && nativeWanted(runnerOptions)) {
      // The native kernel reads the checkpoint's own quantized file, or one quantized and cached once.
      const source = own ? openWeights(dir) : SafetensorsFile.open(await cachedQuantizedWeights(dir, precision, options.graphCacheDir, options.log));
      try {
        native = ModelRunner.openNative(config, weightsInFile(source, config), runnerOptions);
      } finally {
        source.close();
      }
    }
    runner = native ?? await ModelRunner.open(await cachedGraph(dir, options.graphCacheDir, options.log, own ? "stored" : precision), config, weightBytesOf(config), runnerOptions);
  } else {
    const ckpt = loadCheckpoint(dir, { onWarning: options.log });
    const bits = bitsOf(precision);
    runner = await ModelRunner.create(bits ? quantizeCheckpoint(ckpt, bits, config.quantization!.block_size) : ckpt, runnerOptions);
  }
  const info: ModelInfo = {
    name: config.name ?? basename(resolve(dir)),
    nChains: config.nChains,
    widths: config.dk.slice(1),
    paramCounts: Array.from({ length: config.nChains }, (_, i) => parameterCount(config, i + 1)),
    vocabSize: config.vocab_size,
    maxPosition: config.max_position,
    bosTokenId: config.bos_token_id,
    eosTokenId: config.eos_token_id,
    precision,
    device: runner.device,
    kvBytesPerToken: 4 * kvValuesPerToken(config),
  };
  const prefix = { bytes: options.prefixCacheBytes ?? DEFAULT_PREFIX_CACHE_BYTES, blockTokens: options.prefixBlockTokens };
  return new ColmEngine(runner, info, tokenizer, options.maxBatch, options.prefillChunk, prefix);
}
