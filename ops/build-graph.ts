// node --import tsx ops/build-graph.ts CHECKPOINT_DIR [--quant f32|q8|q4] [--graph OUT.onnx] [--weights OUT.safetensors]
// — a checkpoint (a float32 one quantized first when asked) as an ONNX graph (--graph) and as
// quantized weights (--weights, for the native kernel). Run as a child process by
// ops/graph-cache.ts, so that the serving process never holds the checkpoint and graph bytes on
// its own heap.
import { renameSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { loadCheckpoint } from "../models/checkpoint.ts";
import { bitsOf, DEFAULT_BLOCK_SIZE, PRECISIONS, quantizedTensors, type Precision } from "../models/quantized.ts";
import { writeSafetensors } from "../models/safetensors.ts";
import { quantizeCheckpoint } from "../kernels/quantize.ts";
import { buildColmGraph } from "./colm-graph.ts";

const { positionals, values } = parseArgs({ allowPositionals: true, options: { quant: { type: "string" }, graph: { type: "string" }, weights: { type: "string" } } });
const [dir] = positionals;
const quant = values.quant as Precision | undefined;
const bits = quant && bitsOf(quant);
if (!dir || (quant !== undefined && !PRECISIONS.includes(quant)) || (values.weights && !bits)) {
  console.error("usage: build-graph.ts CHECKPOINT_DIR [--quant f32|q8|q4] [--graph OUT.onnx] [--weights OUT.safetensors (q8 or q4 only)]");
  process.exit(2);
}
let ckpt = loadCheckpoint(dir, { onWarning: (m) => console.error(`warning: ${m}`) });
if (bits) ckpt = quantizeCheckpoint(ckpt, bits, ckpt.config.quantization?.block_size ?? DEFAULT_BLOCK_SIZE);
// Each written beside its final name first: readers never see a half-written file.
if (values.weights) {
  writeSafetensors(`${values.weights}.tmp`, quantizedTensors(ckpt.config, ckpt.quantized!, ckpt.weights));
  renameSync(`${values.weights}.tmp`, values.weights);
}
if (values.graph) {
  writeFileSync(`${values.graph}.tmp`, buildColmGraph(ckpt));
  renameSync(`${values.graph}.tmp`, values.graph);
}
