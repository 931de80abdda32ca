// The model runner: one weight set serving every chain count, as one onnxruntime session over the
// graph of ops/colm-graph.ts, or, for a quantized model, on the native kernel
// (kernels/native-decoder.ts). It runs `tokens` new tokens at `chains` chains against a KV cache
// and returns the logits of the requested rows plus the new tokens' keys and values.
import { availableParallelism } from "node:os";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import * as ort from "onnxruntime-node";
import type { Checkpoint } from "../models/checkpoint.ts";
import { ColmError } from "../models/errors.ts";
import type { ColmConfig } from "../models/config.ts";
import type { KvCache } from "../kernels/kv-cache.ts";
import { buildColmGraph } from "./colm-graph.ts";
import type { AccuracyLevel } from "./graph.ts";
import { checkpointPrecision, normGainsOf, quantizedWeightBytes, type Precision } from "../models/quantized.ts";
import { holdFreedMemory, trimHeap } from "./trim-heap.ts";
import { NativeDecoder, weightsInMemory, type NativeStep, type NativeWeights } from "../kernels/native-decoder.ts";

export type Device = "cpu" | "cuda";

export interface RunnerOptions {
  /** "cuda" uses onnxruntime's CUDA provider when installed, else falls back to CPU (logged). */
  device?: Device;
  /** Intra-op threads (default: the machine's cores, or COLM_THREADS). */
  threads?: number;
  log?: (message: string) => void;
  /**
   * Calls whose new keys (or values) per layer reach this many floats get them in the runner's
   * reused buffers (default 65536: prefill chunks, not decode steps); see ModelRunner.kvOut.
   */
  reusedOutputFloats?: number;
  /** A quantized model's MatMulNBits accuracy level (create only; default 4, see ops/graph.ts). */
  accuracyLevel?: AccuracyLevel;
  /**
   * "off" (or COLM_NATIVE=0): a quantized model runs on onnxruntime. Default "auto": on the native
   * kernel (kernels/native-decoder.ts) where it can be built, onnxruntime otherwise.
   */
  native?: "auto" | "off";
}

/** Whether a runner with these options would use the native kernel for a quantized model (if it can be built). */
export const nativeWanted = (options: Pick<RunnerOptions, "native" | "device">): boolean =>
  (options.native ?? (process.env.COLM_NATIVE === "0" ? "off" : "auto")) !== "off" && (options.device ?? "cpu") === "cpu";

export interface StepResult {
  /** [rows, V] logits of the requested rows. */
  logits: Float32Array;
  /** [rows, d_k] final hidden state (pre-norm) of the requested rows. */
  hidden: Float32Array;
  /**
   * Per layer [rows, kv_heads, tokens, hd] keys and values of the new tokens (the cache's layout).
   * Views of buffers the runner reuses: valid until its next call (append them to the cache, or
   * copy them, before then).
   */
  newKeys: Float32Array[];
  newValues: Float32Array[];
}

/**
 * Whether onnxruntime-node's CUDA provider library is on disk (it is not bundled: its installer
 * fetches it). Checked first because a failed attempt to load it makes onnxruntime print a
 * multi-line error of its own, whatever the session's log level.
 */
function cudaProviderInstalled(): boolean {
  const pkgDir = dirname(dirname(createRequire(import.meta.url).resolve("onnxruntime-node")));
  return existsSync(join(pkgDir, "bin", "napi-v6", process.platform, process.arch, process.platform === "win32" ? "onnxruntime_providers_cuda.dll" : "libonnxruntime_providers_cuda.so"));
}

export class RunnerError extends ColmError {
  override name = "RunnerError";
  constructor(message: string) {
    super(message, "internal", "runner_error");
  }
}

export class ModelRunner {
  /**
   * Where onnxruntime writes each call's new keys and values (per layer: keys, values), grown as
   * needed and reused. Without them every call's outputs are copied into fresh JS buffers: for a
   * 1024-token chain-1 prefill of bench-m that is 32 MiB allocated, zeroed and copied per call,
   * often in freshly mapped pages that fault in. They hold the largest call's keys and values.
   * Small outputs (decode steps) are left to onnxruntime: binding 2·L preallocated outputs costs a
   * decode step more than it saves (ops/README.md, Memory). So are the outputs of a call made
   * while another call holds the buffers.
   */
  private readonly kvOut: Float32Array[] = [];
  private kvOutInUse = false;

  private constructor(
    /** The onnxruntime session; none when the native kernel runs the model. */
    private readonly session: ort.InferenceSession | undefined,
    readonly config: ColmConfig,
    readonly device: Device,
    /** Bytes of the weights the session holds (each weight once). */
    readonly weightBytes: number,
    private readonly reusedOutputFloats: number,
    /** The native kernel, which runs a quantized model (every call) where it can be built. */
    readonly native: NativeDecoder | undefined,
  ) {}

  /** The precision the weights run at (the config of a quantized model says its bits). */
  get precision(): Precision {
    return checkpointPrecision(this.config);
  }

  /**
   * A runner for `ckpt` in this process: a quantized one on the native kernel when it can be built
   * (it computes as accuracy level 4 does: int8 activations; level 0 is onnxruntime's alone), else
   * a session over the graph built from it.
   */
  static async create(ckpt: Checkpoint, options: RunnerOptions = {}): Promise<ModelRunner> {
    const native = ckpt.quantized && options.accuracyLevel !== 0 && nativeWanted(options) ? ModelRunner.openNative(ckpt.config, weightsInMemory(ckpt.quantized, normGainsOf(ckpt.weights)), options) : undefined;
    return native ?? ModelRunner.open(buildColmGraph(ckpt, options.accuracyLevel), ckpt.config, ckpt.weightBytes, options);
  }

  /**
   * A quantized model on the native kernel (no onnxruntime session); undefined, with the reason
   * logged, when it cannot be (the caller then uses onnxruntime). Its weight bytes count a tied
   * embedding once: the kernel's gather and head read the same matrix.
   */
  static openNative(config: ColmConfig, weights: NativeWeights, options: RunnerOptions = {}): ModelRunner | undefined {
    const threads = options.threads ?? (Number(process.env.COLM_THREADS) || availableParallelism());
    const native = NativeDecoder.create(config, weights, threads);
    if (!(native instanceof NativeDecoder) || !native.fast) {
      const reason = native instanceof NativeDecoder ? "this CPU has no AVX-512 VNNI, and onnxruntime is faster than the kernel's portable path" : native.reason;
      (options.log ?? ((m: string) => console.error(m)))(`colm: native kernel unavailable (${reason}); the model runs on onnxruntime`);
      return undefined;
    }
    trimHeap(); // what reading the weights freed leaves the process
    const weightBytes = quantizedWeightBytes(config, weights.bits, weights.blockSize);
    return new ModelRunner(undefined, config, "cpu", weightBytes, options.reusedOutputFloats ?? 1 << 16, native);
  }

  /** A session over a built graph: its bytes, or the path of an .onnx file (see ops/graph-cache.ts). */
  static async open(model: Uint8Array | string, config: ColmConfig, weightBytes: number, options: RunnerOptions = {}): Promise<ModelRunner> {
    const log = options.log ?? ((m: string) => console.error(m));
    const threads = options.threads ?? (Number(process.env.COLM_THREADS) || availableParallelism());
    const base: ort.InferenceSession.SessionOptions = {
      graphOptimizationLevel: "all",
      executionMode: "sequential",
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
    };
    // One overload per source type keeps onnxruntime's typings happy.
    const create = (o: ort.InferenceSession.SessionOptions): Promise<ort.InferenceSession> =>
      typeof model === "string" ? ort.InferenceSession.create(model, o) : ort.InferenceSession.create(model, o);
    let device: Device = options.device ?? "cpu";
    let session: ort.InferenceSession;
    if (device === "cuda" && !cudaProviderInstalled()) {
      log("colm: CUDA execution provider not installed (see the README: ONNXRUNTIME_NODE_INSTALL=cuda12); falling back to CPU");
      device = "cpu";
    }
    if (device === "cuda") {
      try {
        // logSeverityLevel 4: onnxruntime's own "cannot load provider" error is replaced by our one line.
        session = await create({ ...base, executionProviders: ["cuda", "cpu"], logSeverityLevel: 4 });
      } catch (e) {
        log(`colm: CUDA execution provider unavailable (${(e as Error).message.split("\n")[0]}); falling back to CPU`);
        device = "cpu";
        session = await create({ ...base, executionProviders: ["cpu"] });
      }
    } else {
      session = await create({ ...base, executionProviders: ["cpu"] });
    }
    trimHeap(); // the unpacked weights onnxruntime freed after prepacking leave the process
    holdFreedMemory(); // and from now on, what calls free stays for the next call (see trim-heap.ts)
    return new ModelRunner(session, config, device, weightBytes, options.reusedOutputFloats ?? 1 << 16, undefined);
  }


  /**
   * Runs `tokens` (positions cache.length …) at `chains` chains. The cache is read, not written:
   * the caller appends the returned keys/values (so a failed step leaves the cache unchanged).
   */
  step(tokens: ArrayLike<number>, chains: number, cache: KvCache, logitsRows: readonly number[]): Promise<StepResult> {
    return this.stepRows([tokens], chains, cache, logitsRows);
  }

  /**
   * Runs one batch over rows firstRow … firstRow+B-1 of `cache`: row b gets the T tokens tokens[b]
   * (every row the same T). `chains` is one count for all rows or one per row; a row's logits are
   * those of its own sub-model (the call runs the largest). Logits rows index the flattened
   * tokens (b · T + t).
   */
  async stepRows(tokens: ArrayLike<number>[], chains: number | readonly number[], cache: KvCache, logitsRows: readonly number[], firstRow = 0): Promise<StepResult> {
    const c = this.config;
    const B = tokens.length;
    const T = tokens[0]?.length ?? 0;
    const perRow = typeof chains === "number" ? new Array<number>(B).fill(chains) : chains;
    if (perRow.length !== B || perRow.some((k) => !Number.isInteger(k) || k < 1 || k > c.nChains)) {
      throw new RunnerError(`chains must be integers in 1 … ${c.nChains}, one per row; got ${JSON.stringify(chains)}`);
    }
    if (firstRow < 0 || firstRow + B > cache.rows) throw new RunnerError(`rows ${firstRow} … ${firstRow + B - 1} are outside a cache of ${cache.rows} rows`);
    if (T === 0 || tokens.some((row) => row.length !== T)) throw new RunnerError("every row needs the same number (≥ 1) of tokens");
    cache.ensureRows(firstRow + B);
    const lengths = cache.lengths.slice(firstRow, firstRow + B);
    const longest = Math.max(...lengths) + T;
    if (longest > c.max_position) throw new RunnerError(`sequence of ${longest} tokens exceeds max_position ${c.max_position}`);
    if (this.native) return this.nativeStep(tokens, perRow, cache, logitsRows, firstRow, lengths);
    const session = this.session!;
    const flat = new BigInt64Array(B * T);
    tokens.forEach((row, b) => Array.from(row, (t, i) => (flat[b * T + i] = BigInt(t))));
    const feeds: Record<string, ort.Tensor> = {
      tokens: new ort.Tensor("int64", flat, [B, T]),
      chains: new ort.Tensor("int64", BigInt64Array.of(BigInt(Math.max(...perRow))), []),
      logits_rows: new ort.Tensor("int64", BigInt64Array.from(logitsRows.map((r) => BigInt(r))), [logitsRows.length]),
      logits_chains: new ort.Tensor("int64", BigInt64Array.from(logitsRows.map((r) => BigInt(perRow[Math.floor(r / T)]))), [logitsRows.length]),
      past_length: new ort.Tensor("int64", BigInt64Array.from(lengths.map((n) => BigInt(n))), [B]),
    };
    // Empty caches are passed as zero slots so a prompt never attends over unused capacity; the
    // rows' buffers are one contiguous view (rows are the outermost axis), never a copy.
    const C = lengths.every((n) => n === 0) ? 0 : cache.capacity;
    const rowSize = c.kv_heads * cache.capacity * c.head_dim;
    const view = (buffer: Float32Array): Float32Array => (C ? buffer.subarray(firstRow * rowSize, (firstRow + B) * rowSize) : new Float32Array(0));
    const shape = [B, c.kv_heads, C, c.head_dim];
    for (let l = 0; l < c.n_layers; l++) {
      feeds[`past_key_${l}`] = new ort.Tensor("float32", view(cache.keyBuffer(l)), shape);
      feeds[`past_value_${l}`] = new ort.Tensor("float32", view(cache.valueBuffer(l)), shape);
    }
    const newShape = [B, c.kv_heads, T, c.head_dim];
    const newSize = B * c.kv_heads * T * c.head_dim;
    if (newSize < this.reusedOutputFloats || this.kvOutInUse) {
      const out = await session.run(feeds);
      const data = (name: string): Float32Array => out[name].data as Float32Array;
      return {
        logits: data("logits"),
        hidden: data("hidden"),
        newKeys: Array.from({ length: c.n_layers }, (_, l) => data(`new_key_${l}`)),
        newValues: Array.from({ length: c.n_layers }, (_, l) => data(`new_value_${l}`)),
      };
    }
    // Logits and hidden states are left to onnxruntime: callers keep them past the next call.
    const fetches: Record<string, ort.Tensor | null> = { logits: null, hidden: null };
    const newKeys: Float32Array[] = [];
    const newValues: Float32Array[] = [];
    for (let l = 0; l < c.n_layers; l++) {
      newKeys.push(this.kvOutput(2 * l, newSize));
      newValues.push(this.kvOutput(2 * l + 1, newSize));
      fetches[`new_key_${l}`] = new ort.Tensor("float32", newKeys[l], newShape);
      fetches[`new_value_${l}`] = new ort.Tensor("float32", newValues[l], newShape);
    }
    this.kvOutInUse = true;
    try {
      const out = await session.run(feeds, fetches);
      return { logits: out.logits.data as Float32Array, hidden: out.hidden.data as Float32Array, newKeys, newValues };
    } finally {
      this.kvOutInUse = false;
    }
  }

  /**
   * stepRows on the native kernel: it reads the cache's rows in place, as onnxruntime does, and
   * writes large calls' keys and values into the reused buffers (unless another call holds them).
   */
  private async nativeStep(tokens: ArrayLike<number>[], chains: readonly number[], cache: KvCache, logitsRows: readonly number[], firstRow: number, lengths: number[]): Promise<StepResult> {
    const c = this.config;
    const B = tokens.length;
    const T = tokens[0].length;
    const newSize = B * T * c.kv_heads * c.head_dim;
    const reuse = newSize >= this.reusedOutputFloats && !this.kvOutInUse;
    const kv = (i: number): Float32Array => (reuse ? this.kvOutput(i, newSize) : new Float32Array(newSize));
    const rowSize = c.kv_heads * cache.capacity * c.head_dim;
    const view = (buffer: Float32Array): Float32Array => buffer.subarray(firstRow * rowSize, (firstRow + B) * rowSize);
    const flat = new Int32Array(B * T);
    tokens.forEach((row, b) => flat.set(Array.from(row), b * T));
    const args: NativeStep = {
      B,
      T,
      tokens: flat,
      chains: Int32Array.from(chains),
      past: Int32Array.from(lengths),
      pastKeys: Array.from({ length: c.n_layers }, (_, l) => view(cache.keyBuffer(l))),
      pastValues: Array.from({ length: c.n_layers }, (_, l) => view(cache.valueBuffer(l))),
      capacity: cache.capacity,
      logitRows: Int32Array.from(logitsRows),
      newKeys: Array.from({ length: c.n_layers }, (_, l) => kv(2 * l)),
      newValues: Array.from({ length: c.n_layers }, (_, l) => kv(2 * l + 1)),
    };
    if (reuse) this.kvOutInUse = true;
    try {
      return await this.native!.step(args);
    } finally {
      if (reuse) this.kvOutInUse = false;
    }
  }

  /** The first `size` floats of reusable output buffer `i`, grown when too small. */
  private kvOutput(i: number, size: number): Float32Array {
    if ((this.kvOut[i]?.length ?? 0) < size) this.kvOut[i] = new Float32Array(size);
    return this.kvOut[i].subarray(0, size);
  }

  async close(): Promise<void> {
    await this.session?.release();
  }
}
