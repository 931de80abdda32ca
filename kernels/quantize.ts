// The quantizer: float32 CoLM-Air weights to the block-quantized format of models/quantized.ts
// (models/QUANTIZATION.md), symmetric per block of `blockSize` values along a matrix's input
// dimension, as llama.cpp's Q4_0 and Q8_0. Every chain block W_i is quantized on its own, so the
// weights of chains ≤ k (and sub-model k) never depend on a chain above k.
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import type { Checkpoint } from "../models/checkpoint.ts";
import { weightBytesOf } from "../models/checkpoint.ts";
import { SHARD_INDEX, weightFiles, writeSafetensors } from "../models/safetensors.ts";
import {
  QuantizationError,
  blockBytes,
  blocksPerRow,
  checkQuantization,
  dequantizeWeights,
  floatMatrix,
  normGainsOf,
  precisionOf,
  quantizedLayout,
  quantizedTensors,
  zeroPoint,
  type QuantBits,
  type QuantizedMatrix,
} from "../models/quantized.ts";

/**
 * Quantizes a rows × cols float32 matrix, blocked along cols (a short last block is padded with
 * zeros, which encode exactly). 4-bit takes Q4_0's scale, the block's largest-magnitude value over
 * −8, so that value is exact and the 16 levels are all used; 8-bit takes max|x| / 127. Per value,
 * the error is at most |scale| / 2, or |scale| for the one 4-bit level (+8) that is clipped to +7.
 */
export function quantizeMatrix(x: Float32Array, rows: number, cols: number, bits: number, blockSize: number): QuantizedMatrix {
  checkQuantization(bits, blockSize);
  if (x.length !== rows * cols) throw new QuantizationError(`a ${rows} × ${cols} matrix needs ${rows * cols} values, got ${x.length}`);
  const nb = blocksPerRow(cols, blockSize);
  const bb = blockBytes(bits, blockSize);
  const zero = zeroPoint(bits);
  const top = (1 << bits) - 1;
  const data = new Uint8Array(rows * nb * bb);
  const scales = new Float32Array(rows * nb);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < nb; b++) {
      const from = r * cols + b * blockSize;
      const to = r * cols + Math.min(cols, (b + 1) * blockSize);
      let extreme = 0;
      for (let i = from; i < to; i++) if (Math.abs(x[i]) > Math.abs(extreme)) extreme = x[i];
      const scale = Math.fround(bits === 4 ? extreme / -8 : Math.abs(extreme) / 127) || 0; // a zero block: +0, not -0
      const inv = scale === 0 ? 0 : 1 / scale;
      scales[r * nb + b] = scale;
      const at = (r * nb + b) * bb;
      for (let i = from; i < to; i++) {
        const q = Math.min(top, Math.max(0, Math.round(x[i] * inv) + zero));
        const j = i - from;
        if (bits === 8) data[at + j] = q;
        else data[at + (j >> 1)] |= j & 1 ? q << 4 : q;
      }
      // Padding past cols encodes 0: the zero point.
      for (let j = to - from; j < blockSize; j++) {
        if (bits === 8) data[at + j] = zero;
        else data[at + (j >> 1)] |= j & 1 ? zero << 4 : zero;
      }
    }
  }
  return { rows, cols, bits: bits as QuantBits, blockSize, data, scales };
}

/**
 * The checkpoint quantized to `bits`: its quantized matrices, and as `weights` their dequantized
 * values (the reference forward runs those; the norm gains stay float32). A checkpoint already
 * stored at that precision and block size is returned as it is; requantizing another is refused.
 */
export function quantizeCheckpoint(ckpt: Checkpoint, bits: number, blockSize: number): Checkpoint {
  const c = ckpt.config;
  checkQuantization(bits, blockSize, c);
  if (c.quantization) {
    if (c.quantization.bits === bits && c.quantization.block_size === blockSize) return ckpt;
    throw new QuantizationError(`${ckpt.dir} is stored at ${precisionOf(c.quantization.bits)} (block size ${c.quantization.block_size}); quantize the float32 checkpoint instead`);
  }
  const w = ckpt.weights;
  const matrices = new Map(quantizedLayout(c).map((s) => [s.name, quantizeMatrix(floatMatrix(s, c, w), s.rows, s.cols, bits, blockSize)] as const));
  const quantized = { bits: bits as QuantBits, blockSize, matrices };
  const config = { ...c, quantization: { bits: bits as QuantBits, block_size: blockSize } };
  const weights = dequantizeWeights(config, quantized, normGainsOf(w));
  return { dir: ckpt.dir, config, weights, quantized, weightBytes: weightBytesOf(config) };
}

/**
 * Writes a quantized checkpoint folder the server loads directly: config.json (the source's, with
 * "quantization"), model.safetensors in the quantized format, and every other file of the source
 * folder (tokenizer, model card) copied.
 */
export function writeQuantizedCheckpoint(ckpt: Checkpoint, outDir: string): void {
  const { config, quantized } = ckpt;
  if (!quantized || !config.quantization) throw new QuantizationError("writeQuantizedCheckpoint needs a quantized checkpoint (quantizeCheckpoint)");
  mkdirSync(outDir, { recursive: true });
  const json = JSON.parse(readFileSync(join(ckpt.dir, "config.json"), "utf8")) as Record<string, unknown>;
  writeFileSync(join(outDir, "config.json"), JSON.stringify({ ...json, quantization: config.quantization }, null, 2) + "\n");
  const meta = { format: "colm-blockwise", bits: String(quantized.bits), block_size: String(quantized.blockSize) };
  writeSafetensors(join(outDir, "model.safetensors"), quantizedTensors(config, quantized, ckpt.weights), meta);
  // The rest of the folder (tokenizer, card) comes along; the float32 weights (one file or shards and their index) do not.
  const weights = new Set(["config.json", SHARD_INDEX, ...weightFiles(ckpt.dir).map((f) => basename(f))]);
  for (const f of readdirSync(ckpt.dir, { withFileTypes: true })) {
    if (f.isFile() && !weights.has(f.name) && !existsSync(join(outDir, f.name))) copyFileSync(join(ckpt.dir, f.name), join(outDir, f.name));
  }
}
