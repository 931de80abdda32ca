// What a loaded model is, as every layer above the engine sees it.
import type { Precision } from "./quantized.ts";

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
  /** The precision its weights run at: float32, or block-quantized to 8 or 4 bits (models/QUANTIZATION.md). */
  precision: Precision;
  /** Execution provider actually in use. */
  device: "cpu" | "cuda";
  /** KV cache bytes per token (spec §5.6: 2 · L · kv_heads · hd · 4). */
  kvBytesPerToken: number;
}
