// The native kernel that runs quantized models (kernels/native/colm_decode.cc; design in
// models/QUANTIZATION.md, "The native kernel"): every call, prompts and decode steps, over
// block-quantized weights it holds itself. Built from source with the system's g++ and Node's own
// headers by `npm install` or on first use, into kernels/native/build/ (`npm run build:native`
// says how it went); where it cannot be built the runner uses onnxruntime.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, renameSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ColmConfig } from "../models/config.ts";
import { quantizedEntries, quantizedLayout, type NormGains, type QuantBits, type QuantizedWeights } from "../models/quantized.ts";
import type { FileRange, TensorSource } from "../models/safetensors.ts";

const HERE = dirname(fileURLToPath(import.meta.url));
export const NATIVE_SOURCE = join(HERE, "native", "colm_decode.cc");
/** Every file of the kernel's source (colm_decode.cc includes the headers beside it). */
const sources = (): string[] => readdirSync(dirname(NATIVE_SOURCE)).filter((f) => /\.(cc|h)$/.test(f)).map((f) => join(dirname(NATIVE_SOURCE), f));
export const NATIVE_BINARY = join(HERE, "native", "build", "colm_decode.node");

/** The addon's functions (colm_decode.cc, "Node-API glue"). */
export interface Addon {
  /** Built with AVX-512 VNNI; false: the portable path (correct, slow; the runner does not use it). */
  fast: boolean;
  create(config: Int32Array, floats: Float64Array, matrices: (Uint8Array | Float32Array | FileRange)[], norms: Float32Array[]): unknown;
  step(
    handle: unknown, B: number, T: number, tokens: Int32Array, chains: Int32Array, past: Int32Array,
    pastKeys: Float32Array[], pastValues: Float32Array[], capacity: number,
    newKeys: Float32Array[], newValues: Float32Array[], logitRows: Int32Array, logits: Float32Array, hidden: Float32Array,
    async: boolean,
  ): Promise<void> | undefined;
}

/**
 * Compiles the addon into `out` against the headers of the Node that runs us, for this machine's
 * CPU (-march=native: AVX-512 VNNI where it has it) or, `portable`, for any x86-64 (the portable
 * path, which the tests hold to the fast one); into a temporary file first, so a process loading
 * it never sees half of one. Returns the loaded addon.
 */
export function compileAddon(out: string, portable = false): Addon {
  const include = join(dirname(dirname(process.execPath)), "include", "node");
  const tmp = `${out}.${process.pid}.tmp`;
  mkdirSync(dirname(out), { recursive: true });
  const arch = portable ? "-march=x86-64-v2" : "-march=native";
  execFileSync("g++", ["-O3", arch, "-std=c++17", "-shared", "-fPIC", "-pthread", "-Wno-maybe-uninitialized", `-I${include}`, NATIVE_SOURCE, "-o", tmp], { stdio: ["ignore", "ignore", "pipe"] });
  renameSync(tmp, out);
  return createRequire(import.meta.url)(out) as Addon;
}

let loaded: { addon: Addon } | { reason: string } | undefined;

/** The addon, built first when missing or older than any file of its source; or why it is unavailable. */
export function nativeAddon(): { addon: Addon } | { reason: string } {
  if (loaded) return loaded;
  try {
    const stale = !existsSync(NATIVE_BINARY) || sources().some((f) => statSync(NATIVE_BINARY).mtimeMs < statSync(f).mtimeMs);
    loaded = { addon: stale ? compileAddon(NATIVE_BINARY) : (createRequire(import.meta.url)(NATIVE_BINARY) as Addon) };
  } catch (e) {
    const err = e as Error & { stderr?: Buffer };
    loaded = { reason: (err.stderr?.toString() || err.message).split("\n")[0] };
  }
  return loaded;
}

/**
 * A quantized model's weights as the kernel takes them: each matrix's bytes and scales in memory,
 * or where they are in a checkpoint file (the kernel then reads them straight into its own memory,
 * and the process never holds a second copy).
 */
export interface NativeWeights {
  bits: QuantBits;
  blockSize: number;
  matrices: Map<string, { data: Uint8Array | FileRange; scales: Float32Array | FileRange }>;
  norms: NormGains;
}

/** Weights already in memory (a checkpoint loaded or quantized in this process). */
export const weightsInMemory = (quantized: QuantizedWeights, norms: NormGains): NativeWeights => ({ ...quantized, norms });

/** Weights where a quantized checkpoint file holds them (names and shapes checked; scales stored as F32). */
export function weightsInFile(file: TensorSource, c: ColmConfig): NativeWeights {
  const { matrices, norms } = quantizedEntries(file, c, (_, qweight, scales) => ({
    data: file.locate(qweight),
    scales: file.entries.get(scales)?.dtype === "F32" ? file.locate(scales) : file.read(scales),
  }));
  return { bits: c.quantization!.bits, blockSize: c.quantization!.block_size, matrices, norms };
}

/** What one call computes: `tokens` [B·T] at positions past[b] … past[b]+T-1 of rows b. */
export interface NativeStep {
  B: number;
  T: number;
  tokens: Int32Array;
  chains: Int32Array;
  past: Int32Array;
  pastKeys: Float32Array[];
  pastValues: Float32Array[];
  capacity: number;
  logitRows: Int32Array;
  /** Per layer [B, kv_heads, T, hd]: where the new keys and values go. */
  newKeys: Float32Array[];
  newValues: Float32Array[];
}

export interface NativeResult {
  logits: Float32Array;
  hidden: Float32Array;
  newKeys: Float32Array[];
  newValues: Float32Array[];
}

/** Calls of up to this many tokens (rows × tokens) run on the calling thread (see NativeDecoder.step). */
export const SYNC_MAX_TOKENS = 16;

/** One model on the kernel: `step` is ModelRunner.stepRows for a quantized model. */
export class NativeDecoder {
  private constructor(
    private readonly addon: Addon,
    private readonly handle: unknown,
    private readonly config: ColmConfig,
  ) {}

  /** Whether the kernel runs on AVX-512 VNNI here (else a slow portable path: tests only). */
  get fast(): boolean {
    return this.addon.fast;
  }

  /**
   * A decoder over `weights`, or why there is none. The kernel copies the weights into memory of
   * its own (on huge pages), so the caller may drop them.
   */
  static create(config: ColmConfig, weights: NativeWeights, threads: number, addon?: Addon): NativeDecoder | { reason: string } {
    const got = addon ? { addon } : nativeAddon();
    if (!("addon" in got)) return got;
    const c = config;
    const cfg = Int32Array.from([c.n_layers, c.nChains, c.vocab_size, c.head_dim, c.kv_heads, weights.bits, weights.blockSize, c.max_position, threads, c.tie_embeddings ? 1 : 0, ...c.chain_heads, ...c.ffn_chain_dims]);
    const matrices = quantizedLayout(c).flatMap((s) => {
      const m = weights.matrices.get(s.name)!;
      return [m.data, m.scales];
    });
    try {
      const { norms } = weights;
      const handle = got.addon.create(cfg, Float64Array.of(c.norm_eps, c.rope_theta), matrices, [...norms.attn, ...norms.ffn, norms.final]);
      return new NativeDecoder(got.addon, handle, c);
    } catch (e) {
      return { reason: (e as Error).message };
    }
  }

  /**
   * Runs a call: one of at most SYNC_MAX_TOKENS tokens (a decode step, a draft or a verification:
   * milliseconds) on this thread, as a server loop's step would (a worker thread's hand-off costs
   * ~15% of a small step); a larger one (a prompt), or any while another is in flight, on a worker
   * thread, so the event loop stays free. Calls on one decoder run one at a time. The cache buffers
   * must not change until it resolves.
   */
  async step(s: NativeStep): Promise<NativeResult> {
    const c = this.config;
    const R = s.logitRows.length;
    const kmax = Math.max(...s.chains);
    const out: NativeResult = { logits: new Float32Array(R * c.vocab_size), hidden: new Float32Array(R * c.dk[kmax]), newKeys: s.newKeys, newValues: s.newValues };
    const async = s.B * s.T > SYNC_MAX_TOKENS || this.inFlight > 0;
    this.inFlight++;
    try {
      await this.addon.step(this.handle, s.B, s.T, s.tokens, s.chains, s.past, s.pastKeys, s.pastValues, s.capacity, out.newKeys, out.newValues, s.logitRows, out.logits, out.hidden, async);
    } finally {
      this.inFlight--;
    }
    return out;
  }

  private inFlight = 0;
}
