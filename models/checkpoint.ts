// Loads a CoLM-Air checkpoint folder (spec §4) into chain blocks: for every chain linear, the
// weight of output chain i as an [in_i, out_i] matrix (in × out, row-major) holding only the
// blocks on and below the diagonal. The structurally-zero blocks are checked, then dropped.
import { existsSync } from "node:fs";
import { basename, join } from "node:path";
import { readConfig, type ColmConfig } from "./config.ts";
import { openWeights, weightFiles } from "./safetensors.ts";
import { ModelLoadError } from "./errors.ts";
import { quantizedWeightBytes, readQuantized, type QuantizedWeights } from "./quantized.ts";

export class CheckpointError extends ModelLoadError {
  override name = "CheckpointError";
}

/** Weight of each output chain i: [inPrefix[i+1], outWidth_i], in × out. */
export type ChainLinear = Float32Array[];

export interface LayerWeights {
  attnNorm: Float32Array;
  q: ChainLinear;
  /** Keys and values read chain 1 only: [c_1, kv_heads · hd]. */
  k: Float32Array;
  v: Float32Array;
  o: ChainLinear;
  ffnNorm: Float32Array;
  gate: ChainLinear;
  up: ChainLinear;
  down: ChainLinear;
}

export interface ColmWeights {
  /** [V, D] */
  embed: Float32Array;
  layers: LayerWeights[];
  norm: Float32Array;
  /** [V, D]; the same array as embed when tied. */
  head: Float32Array;
}

export interface Checkpoint {
  dir: string;
  config: ColmConfig;
  weights: ColmWeights;
  /**
   * Bytes of the weights the graph holds: float32 (masked blocks excluded, tied head counted
   * once), or the quantized matrices and float32 norm gains (see weightBytesOf).
   */
  weightBytes: number;
  /** A quantized model's weights as stored (models/quantized.ts); `weights` then holds their dequantized values. */
  quantized?: QuantizedWeights;
}

export interface LoadOptions {
  /** Called with a message naming the tensor when a masked block holds non-zeros. */
  onWarning?: (message: string) => void;
}

/** The names and shapes a checkpoint must hold (spec §4). */
export function expectedTensors(c: ColmConfig): Map<string, number[]> {
  const D = c.hidden;
  const F = c.fk[c.nChains];
  const m = new Map<string, number[]>([["embed.weight", [c.vocab_size, D]]]);
  for (let l = 0; l < c.n_layers; l++) {
    const p = `layers.${l}.`;
    m.set(p + "attn_norm.weight", [D]);
    m.set(p + "attn.q_proj.weight", [D, D]);
    m.set(p + "attn.k_proj.weight", [c.kvWidth, c.chainWidths[0]]);
    m.set(p + "attn.v_proj.weight", [c.kvWidth, c.chainWidths[0]]);
    m.set(p + "attn.o_proj.weight", [D, D]);
    m.set(p + "ffn_norm.weight", [D]);
    m.set(p + "ffn.gate_proj.weight", [F, D]);
    m.set(p + "ffn.up_proj.weight", [F, D]);
    m.set(p + "ffn.down_proj.weight", [D, F]);
  }
  m.set("norm.weight", [D]);
  if (!c.tie_embeddings) m.set("lm_head.weight", [c.vocab_size, D]);
  return m;
}

/**
 * Splits a dense chain-masked [out, in] matrix into per-output-chain blocks [in_i, out_i]
 * (transposed to in × out). Reports non-zeros in the masked region through `masked`.
 */
export function toChainBlocks(
  dense: Float32Array,
  outPrefix: number[],
  inPrefix: number[],
  masked: (count: number, maxAbs: number) => void = () => {},
): ChainLinear {
  const n = outPrefix.length - 1;
  const inTotal = inPrefix[n];
  const blocks: ChainLinear = [];
  let nonZero = 0;
  let maxAbs = 0;
  for (let i = 0; i < n; i++) {
    const o0 = outPrefix[i];
    const outW = outPrefix[i + 1] - o0;
    const inW = inPrefix[i + 1];
    const w = new Float32Array(inW * outW);
    for (let r = 0; r < outW; r++) {
      const row = (o0 + r) * inTotal;
      for (let col = 0; col < inW; col++) w[col * outW + r] = dense[row + col];
      for (let col = inW; col < inTotal; col++) {
        const x = dense[row + col];
        if (x !== 0) {
          nonZero++;
          maxAbs = Math.max(maxAbs, Math.abs(x));
        }
      }
    }
    blocks.push(w);
  }
  if (nonZero) masked(nonZero, maxAbs);
  return blocks;
}

function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = x[r * cols + c];
  return t;
}

/** Number of float32 values a chain-structured model reads (its parameter count). */
export function parameterCount(c: ColmConfig, chains = c.nChains): number {
  const { dk, fk } = c;
  let perLayer = 2 * dk[chains] + 2 * c.chainWidths[0] * c.kvWidth;
  for (let i = 1; i <= chains; i++) {
    const ci = c.chainWidths[i - 1];
    const fi = c.ffn_chain_dims[i - 1];
    perLayer += 2 * dk[i] * ci; // q, o
    perLayer += 2 * dk[i] * fi + fk[i] * ci; // gate, up, down
  }
  const vocab = c.vocab_size * dk[chains] * (c.tie_embeddings ? 1 : 2);
  return c.n_layers * perLayer + dk[chains] + vocab;
}

/**
 * Bytes of weights a model's graph holds at its checkpoint's precision, or quantized to `bits`. A
 * quantized tied embedding is held twice: as the embedding's gather table and as the head's
 * matrix (onnxruntime's two kernels want different shapes).
 */
export function weightBytesOf(c: ColmConfig, bits = c.quantization?.bits, blockSize = c.quantization?.block_size ?? 32): number {
  if (!bits) return 4 * parameterCount(c);
  const tiedHead = c.tie_embeddings ? quantizedWeightBytes({ ...c, n_layers: 0 }, bits, blockSize) - 4 * c.hidden : 0;
  return quantizedWeightBytes(c, bits, blockSize) + tiedHead;
}

export function loadCheckpoint(dir: string, options: LoadOptions = {}): Checkpoint {
  const configPath = join(dir, "config.json");
  if (!existsSync(configPath)) throw new CheckpointError(`${dir}: no config.json`);
  const config = readConfig(configPath);
  const missingFile = weightFiles(dir).find((f) => !existsSync(f));
  if (missingFile) throw new CheckpointError(`${dir}: no ${basename(missingFile)}`);
  const file = openWeights(dir);
  const stPath = file.path;
  try {
    if (config.quantization) return { dir, config, ...readQuantized(file, config), weightBytes: weightBytesOf(config) };
    const expected = expectedTensors(config);
    const missing = [...expected.keys()].filter((n) => !file.entries.has(n));
    if (missing.length) {
      throw new CheckpointError(`${stPath}: missing tensor${missing.length > 1 ? "s" : ""} ${missing.slice(0, 5).join(", ")}${missing.length > 5 ? ` and ${missing.length - 5} more` : ""}`);
    }
    for (const [name, shape] of expected) {
      const got = file.entries.get(name)!.shape;
      if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
        throw new CheckpointError(`${stPath}: tensor ${name} has shape [${got}], expected [${shape}]`);
      }
    }
    const warn = options.onWarning ?? ((m: string) => process.emitWarning(m, "CheckpointWarning"));
    const get = (name: string): Float32Array => file.read(name);
    const blocks = (name: string, outP: number[], inP: number[]): ChainLinear =>
      toChainBlocks(get(name), outP, inP, (count, maxAbs) =>
        warn(`${name}: ${count} non-zero values (max |x| ${maxAbs.toExponential(2)}) in masked blocks above the chain diagonal; they are ignored`),
      );
    const { dk, fk, kvWidth } = config;
    const c1 = config.chainWidths[0];
    const layers: LayerWeights[] = [];
    for (let l = 0; l < config.n_layers; l++) {
      const p = `layers.${l}.`;
      layers.push({
        attnNorm: get(p + "attn_norm.weight"),
        q: blocks(p + "attn.q_proj.weight", dk, dk),
        k: transpose(get(p + "attn.k_proj.weight"), kvWidth, c1),
        v: transpose(get(p + "attn.v_proj.weight"), kvWidth, c1),
        o: blocks(p + "attn.o_proj.weight", dk, dk),
        ffnNorm: get(p + "ffn_norm.weight"),
        gate: blocks(p + "ffn.gate_proj.weight", fk, dk),
        up: blocks(p + "ffn.up_proj.weight", fk, dk),
        down: blocks(p + "ffn.down_proj.weight", dk, fk),
      });
    }
    const embed = get("embed.weight");
    const weights: ColmWeights = {
      embed,
      layers,
      norm: get("norm.weight"),
      head: config.tie_embeddings ? embed : get("lm_head.weight"),
    };
    return { dir, config, weights, weightBytes: 4 * parameterCount(config) };
  } finally {
    file.close();
  }
}
