// node --import tsx ops/build-graph.ts CHECKPOINT_DIR OUT.onnx [--quant f32|q8|q4 [--weights OUT.safetensors]]
// — builds the ONNX graph of a checkpoint (a float32 one quantized first when asked) and writes it,
// and with --weights the quantized weights too (for the native decode kernel). Run as a child
// process by ops/graph-cache.ts, so that the serving process never holds the checkpoint and graph
// bytes on its own heap.
import { renameSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { loadCheckpoint } from "../models/checkpoint.ts";
import { bitsOf, DEFAULT_BLOCK_SIZE, PRECISIONS, quantizedTensors, type Precision } from "../models/quantized.ts";
import { writeSafetensors } from "../models/safetensors.ts";
import { quantizeCheckpoint } from "../kernels/quantize.ts";
import { buildColmGraph } from "./colm-graph.ts";

const { positionals, values } = parseArgs({ allowPositionals: true, options: { quant: { type: "string" }, weights: { type: "string" } } });
const [dir, out] = positionals;
const quant = values.quant as Precision | undefined;
if (!dir || !out || (quant !== undefined && !PRECISIONS.includes(quant))) {
  console.error("usage: build-graph.ts CHECKPOINT_DIR OUT.onnx [--quant f32|q8|q4 [--weights OUT.safetensors]]");
  process.exit(2);
}
let ckpt = loadCheckpoint(dir, { onWarning: (m) => console.error(`warning: ${m}`) });
const bits = quant && bitsOf(quant);
if (bits) ckpt = quantizeCheckpoint(ckpt, bits, ckpt.config.quantization?.block_size ?? DEFAULT_BLOCK_SIZE);
if (bits && values.weights) {
  writeSafetensors(`${values.weights}.tmp`, quantizedTensors(ckpt.config, ckpt.quantized!, ckpt.weights));
  renameSync(`${values.weights}.tmp`, values.weights); // written before the graph: a graph on disk has its weights
}
const model = buildColmGraph(ckpt);
writeFileSync(`${out}.tmp`, model);
renameSync(`${out}.tmp`, out); // readers never see a half-written file
