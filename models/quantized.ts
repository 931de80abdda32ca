// Block-quantized CoLM-Air weights: the format of a quantized checkpoint (models/QUANTIZATION.md)
// and how to read it. Every matrix is stored as rows × cols, blocked along cols (the input
// dimension K of a linear); each block of `block_size` values has one float32 scale and the
// implicit zero point 2^(bits-1), so a value is scale · (q − zero). Every chain block W_i of every
// chain linear is its own matrix, so chain i's weights never share a block or a scale with another
// chain's (chain causality, spec §5.1, holds exactly). Encoding (choosing the scales) lives in
// kernels/quantize.ts; this file only decodes.
import type { ColmConfig } from "./config.ts";
import type { ColmWeights, LayerWeights } from "./checkpoint.ts";
import { ModelLoadError } from "./errors.ts";
import type { TensorSource, TensorToWrite } from "./safetensors.ts";

/** The precision a model's weights run at. */
export type Precision = "f32" | "q8" | "q4";
export const PRECISIONS: readonly Precision[] = ["f32", "q8", "q4"];
export type QuantBits = 4 | 8;
/** Values per block, as llama.cpp's Q4_0 / Q8_0 and onnxruntime's MatMulNBits default. */
export const DEFAULT_BLOCK_SIZE = 32;

export const bitsOf = (p: Precision): QuantBits | undefined => (p === "q4" ? 4 : p === "q8" ? 8 : undefined);
export const precisionOf = (bits: QuantBits | undefined): Precision => (bits === 4 ? "q4" : bits === 8 ? "q8" : "f32");
/** The stored precision of a checkpoint (from its config.json). */
export const checkpointPrecision = (c: ColmConfig): Precision => precisionOf(c.quantization?.bits);

export class QuantizationError extends ModelLoadError {
  override name = "QuantizationError";
}

/** A rows × cols matrix, blocked along cols: data [rows, blocks, blockBytes] (4-bit: low nibble first), scales [rows, blocks]. */
export interface QuantizedMatrix {
  rows: number;
  cols: number;
  bits: QuantBits;
  blockSize: number;
  data: Uint8Array;
  scales: Float32Array;
}

export const blocksPerRow = (cols: number, blockSize: number): number => Math.ceil(cols / blockSize);
export const blockBytes = (bits: QuantBits, blockSize: number): number => (blockSize * bits) / 8;
/** The implicit zero point: 8 (4-bit) or 128 (8-bit), onnxruntime's default when none is stored. */
export const zeroPoint = (bits: QuantBits): number => 1 << (bits - 1);
export const matrixBytes = (m: QuantizedMatrix): number => m.data.byteLength + m.scales.byteLength;

/**
 * Refuses a bit width or block size the format (and onnxruntime's MatMulNBits) does not take, and
 * a block size that does not divide every chain width (embedding rows are gathered whole).
 */
export function checkQuantization(bits: number, blockSize: number, c?: ColmConfig): asserts bits is QuantBits {
  if (bits !== 4 && bits !== 8) throw new QuantizationError(`bits must be 4 or 8, got ${bits}`);
  if (!Number.isInteger(blockSize) || blockSize < 16 || (blockSize & (blockSize - 1)) !== 0) {
    throw new QuantizationError(`block size must be a power of two ≥ 16, got ${blockSize}`);
  }
  const bad = c?.chainWidths.find((w) => w % blockSize !== 0);
  if (bad !== undefined) throw new QuantizationError(`block size ${blockSize} does not divide chain width ${bad}`);
}

/**
 * The config a checkpoint runs with at `quant` (default: its own precision): a float32 one quantized
 * at load gets a "quantization" entry with the default block size. A quantized checkpoint runs at
 * its stored precision only (requantizing would add the two precisions' errors).
 */
export function configAtPrecision(dir: string, stored: ColmConfig, quant: Precision | undefined): { config: ColmConfig; precision: Precision } {
  const own = checkpointPrecision(stored);
  const precision = quant ?? own;
  if (own !== "f32" && precision !== own) throw new QuantizationError(`${dir} is stored at ${own} and runs at ${own} only; quantize its float32 checkpoint to run at ${precision}`);
  const bits = bitsOf(precision);
  if (!bits || stored.quantization) return { config: stored, precision };
  checkQuantization(bits, DEFAULT_BLOCK_SIZE, stored);
  return { config: { ...stored, quantization: { bits, block_size: DEFAULT_BLOCK_SIZE } }, precision };
}

/** Decodes a matrix to float32 [rows, cols]: scale · (q − zero). */
export function dequantizeMatrix(m: QuantizedMatrix): Float32Array {
  const nb = blocksPerRow(m.cols, m.blockSize);
  const bb = blockBytes(m.bits, m.blockSize);
  const zero = zeroPoint(m.bits);
  const out = new Float32Array(m.rows * m.cols);
  for (let r = 0; r < m.rows; r++) {
    for (let b = 0; b < nb; b++) {
      const scale = m.scales[r * nb + b];
      const at = (r * nb + b) * bb;
      for (let j = 0; j < m.blockSize && b * m.blockSize + j < m.cols; j++) {
        const q = m.bits === 8 ? m.data[at + j] : (m.data[at + (j >> 1)] >> ((j & 1) * 4)) & 15;
        out[r * m.cols + b * m.blockSize + j] = scale * (q - zero);
      }
    }
  }
  return out;
}

type Linear = "q" | "k" | "v" | "o" | "gate" | "up" | "down";

/** One quantized matrix of a model: its tensor name in the file (less .qweight / .scales), its shape, and what it is. */
export interface MatrixSlot {
  name: string;
  rows: number;
  cols: number;
  tensor: "embed" | "head" | Linear;
  layer: number; // -1 for embed and head
  chain: number; // 1-based; 1 for k and v
}

const FILE_NAMES: Record<Linear, string> = { q: "attn.q_proj", k: "attn.k_proj", v: "attn.v_proj", o: "attn.o_proj", gate: "ffn.gate_proj", up: "ffn.up_proj", down: "ffn.down_proj" };

/** Every quantized matrix of a model, in file order. Chain linears: one per output chain i, rows out_i, cols the input prefix d_i. */
export function quantizedLayout(c: ColmConfig): MatrixSlot[] {
  const slots: MatrixSlot[] = [];
  for (const tensor of c.tie_embeddings ? (["embed"] as const) : (["embed", "head"] as const)) {
    const name = tensor === "embed" ? "embed.weight" : "lm_head.weight";
    c.chainWidths.forEach((w, i) => slots.push({ name: `${name}.chain${i + 1}`, rows: c.vocab_size, cols: w, tensor, layer: -1, chain: i + 1 }));
  }
  const linears: [Linear, number[], number[]][] = [["q", c.dk, c.dk], ["o", c.dk, c.dk], ["gate", c.fk, c.dk], ["up", c.fk, c.dk], ["down", c.dk, c.fk]];
  for (let l = 0; l < c.n_layers; l++) {
    const p = `layers.${l}.`;
    for (const tensor of ["k", "v"] as const) slots.push({ name: `${p}${FILE_NAMES[tensor]}.weight`, rows: c.kvWidth, cols: c.chainWidths[0], tensor, layer: l, chain: 1 });
    for (const [tensor, outP, inP] of linears) {
      for (let i = 1; i <= c.nChains; i++) slots.push({ name: `${p}${FILE_NAMES[tensor]}.weight.chain${i}`, rows: outP[i] - outP[i - 1], cols: inP[i], tensor, layer: l, chain: i });
    }
  }
  return slots;
}

/** Quantized weights by slot name (quantizedLayout), with their bit width and block size. */
export interface QuantizedWeights {
  bits: QuantBits;
  blockSize: number;
  matrices: Map<string, QuantizedMatrix>;
}

/** Bytes of the quantized matrices plus the float32 norm gains. */
export function quantizedWeightBytes(c: ColmConfig, bits: QuantBits, blockSize: number): number {
  let bytes = 4 * (c.n_layers * 2 + 1) * c.hidden;
  for (const s of quantizedLayout(c)) {
    const nb = blocksPerRow(s.cols, blockSize);
    bytes += s.rows * nb * (blockBytes(bits, blockSize) + 4);
  }
  return bytes;
}

/** The slot's matrix, rows × cols, out of float chain-block weights (chain linears are stored in × out there). */
export function floatMatrix(s: MatrixSlot, c: ColmConfig, w: ColmWeights): Float32Array {
  if (s.tensor === "embed" || s.tensor === "head") {
    const src = s.tensor === "embed" ? w.embed : w.head;
    const out = new Float32Array(s.rows * s.cols);
    for (let r = 0; r < s.rows; r++) out.set(src.subarray(r * c.hidden + c.dk[s.chain - 1], r * c.hidden + c.dk[s.chain]), r * s.cols);
    return out;
  }
  const L = w.layers[s.layer];
  const block = s.tensor === "k" || s.tensor === "v" ? L[s.tensor] : L[s.tensor][s.chain - 1];
  return transpose(block, s.cols, s.rows);
}

function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = x[r * cols + c];
  return t;
}

/** Float chain-block weights holding the dequantized values (what the reference forward runs), with the given norm gains. */
export function dequantizeWeights(c: ColmConfig, q: QuantizedWeights, norms: NormGains): ColmWeights {
  const embed = new Float32Array(c.vocab_size * c.hidden);
  const head = c.tie_embeddings ? embed : new Float32Array(embed.length);
  const layers: LayerWeights[] = norms.attn.map((attnNorm, l) => ({ attnNorm, ffnNorm: norms.ffn[l], q: [], o: [], gate: [], up: [], down: [], k: new Float32Array(0), v: new Float32Array(0) }));
  for (const s of quantizedLayout(c)) {
    const m = q.matrices.get(s.name)!;
    const x = dequantizeMatrix(m);
    if (s.tensor === "embed" || s.tensor === "head") {
      const dst = s.tensor === "embed" ? embed : head;
      for (let r = 0; r < s.rows; r++) dst.set(x.subarray(r * s.cols, (r + 1) * s.cols), r * c.hidden + c.dk[s.chain - 1]);
    } else if (s.tensor === "k" || s.tensor === "v") layers[s.layer][s.tensor] = transpose(x, s.rows, s.cols);
    else layers[s.layer][s.tensor][s.chain - 1] = transpose(x, s.rows, s.cols);
  }
  return { embed, head, layers, norm: norms.final };
}

/** The tensors of a quantized checkpoint's model.safetensors: every slot's .qweight and .scales, and the norm gains. */
export function quantizedTensors(c: ColmConfig, q: QuantizedWeights, w: ColmWeights): TensorToWrite[] {
  const t: TensorToWrite[] = [];
  for (const s of quantizedLayout(c)) {
    const m = q.matrices.get(s.name)!;
    const nb = blocksPerRow(m.cols, m.blockSize);
    t.push({ name: `${s.name}.qweight`, shape: [m.rows, nb, blockBytes(m.bits, m.blockSize)], data: m.data });
    t.push({ name: `${s.name}.scales`, shape: [m.rows, nb], data: m.scales });
  }
  w.layers.forEach((L, l) => t.push({ name: `layers.${l}.attn_norm.weight`, shape: [c.hidden], data: L.attnNorm }, { name: `layers.${l}.ffn_norm.weight`, shape: [c.hidden], data: L.ffnNorm }));
  t.push({ name: "norm.weight", shape: [c.hidden], data: w.norm });
  return t;
}

/** The float32 norm gains a quantized checkpoint keeps beside its matrices. */
export interface NormGains {
  attn: Float32Array[];
  ffn: Float32Array[];
  final: Float32Array;
}

/** The norm gains of float chain-block weights. */
export const normGainsOf = (w: ColmWeights): NormGains => ({ attn: w.layers.map((L) => L.attnNorm), ffn: w.layers.map((L) => L.ffnNorm), final: w.norm });

/** Reads a quantized checkpoint's tensors, checking every name and shape; returns them and their dequantized float weights. */
export function readQuantized(file: TensorSource, c: ColmConfig): { quantized: QuantizedWeights; weights: ColmWeights } {
  const { bits, block_size: blockSize } = c.quantization!;
  const { matrices, norms } = quantizedEntries(file, c, (s, qweight, scales) => ({ rows: s.rows, cols: s.cols, bits, blockSize, data: file.readBytes(qweight), scales: file.read(scales) }));
  const quantized = { bits, blockSize, matrices };
  return { quantized, weights: dequantizeWeights(c, quantized, norms) };
}

/**
 * Checks a quantized checkpoint's tensors (every name and shape) and hands each matrix's
 * `.qweight` and `.scales` names to `take`, which reads them (or says where they are); reads the
 * norm gains.
 */
export function quantizedEntries<T>(file: TensorSource, c: ColmConfig, take: (slot: MatrixSlot, qweight: string, scales: string) => T): { matrices: Map<string, T>; norms: NormGains } {
  const { bits, block_size: blockSize } = c.quantization!;
  checkQuantization(bits, blockSize, c);
  const expect = (name: string, shape: number[]): void => {
    const got = file.entries.get(name)?.shape;
    if (!got) throw new QuantizationError(`${file.path}: missing tensor ${name} (a ${precisionOf(bits)} checkpoint)`);
    if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) throw new QuantizationError(`${file.path}: tensor ${name} has shape [${got}], expected [${shape}]`);
  };
  const matrices = new Map<string, T>();
  for (const s of quantizedLayout(c)) {
    const nb = blocksPerRow(s.cols, blockSize);
    expect(`${s.name}.qweight`, [s.rows, nb, blockBytes(bits, blockSize)]);
    expect(`${s.name}.scales`, [s.rows, nb]);
    matrices.set(s.name, take(s, `${s.name}.qweight`, `${s.name}.scales`));
  }
  const gain = (name: string): Float32Array => (expect(name, [c.hidden]), file.read(name));
  const range = Array.from({ length: c.n_layers }, (_, l) => l);
  const norms = { attn: range.map((l) => gain(`layers.${l}.attn_norm.weight`)), ffn: range.map((l) => gain(`layers.${l}.ffn_norm.weight`)), final: gain("norm.weight") };
  return { matrices, norms };
}
