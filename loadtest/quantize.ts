// npm run quantize -- DIR --bits 4|8 --out DIR2 [--block-size 32]: writes DIR's float32 checkpoint,
// block-quantized, as a checkpoint folder the server loads directly (models/QUANTIZATION.md).
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { loadCheckpoint } from "../models/checkpoint.ts";
import { DEFAULT_BLOCK_SIZE, matrixBytes } from "../models/quantized.ts";
import { quantizeCheckpoint, writeQuantizedCheckpoint } from "../kernels/quantize.ts";

const USAGE = "usage: npm run quantize -- DIR --bits 4|8 --out DIR2 [--block-size 32]";
let parsed;
try {
  parsed = parseArgs({ allowPositionals: true, options: { bits: { type: "string" }, out: { type: "string" }, "block-size": { type: "string" } } });
} catch (e) {
  console.error(`quantize: ${(e as Error).message}\n${USAGE}`);
  process.exit(2);
}
const { positionals, values } = parsed;
const [dir] = positionals;
if (positionals.length !== 1 || !values.bits || !values.out) {
  console.error(USAGE);
  process.exit(2);
}
if (resolve(values.out) === resolve(dir)) {
  console.error("quantize: --out must be another folder than DIR");
  process.exit(2);
}
try {
  const t0 = performance.now();
  const ckpt = quantizeCheckpoint(loadCheckpoint(dir), Number(values.bits), Number(values["block-size"] ?? DEFAULT_BLOCK_SIZE));
  writeQuantizedCheckpoint(ckpt, values.out);
  const bytes = [...ckpt.quantized!.matrices.values()].reduce((s, m) => s + matrixBytes(m), 0);
  console.log(`quantize: ${dir} → ${values.out}: ${ckpt.quantized!.bits}-bit, block size ${ckpt.quantized!.blockSize}, ${(bytes / 2 ** 20).toFixed(1)} MiB of quantized matrices (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
} catch (e) {
  console.error(`quantize: ${(e as Error).message}`);
  process.exit(1);
}
