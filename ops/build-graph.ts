// node --import tsx ops/build-graph.ts CHECKPOINT_DIR OUT.onnx — builds the ONNX graph of a
// checkpoint and writes it. Run as a child process by ops/graph-cache.ts, so that the serving
// process never holds the checkpoint and graph bytes on its own heap.
import { renameSync, writeFileSync } from "node:fs";
import { loadCheckpoint } from "../models/checkpoint.ts";
import { buildColmGraph } from "./colm-graph.ts";

const [dir, out] = process.argv.slice(2);
if (!dir || !out) {
  console.error("usage: build-graph.ts CHECKPOINT_DIR OUT.onnx");
  process.exit(2);
}
const model = buildColmGraph(loadCheckpoint(dir, { onWarning: (m) => console.error(`warning: ${m}`) }));
writeFileSync(`${out}.tmp`, model);
renameSync(`${out}.tmp`, out); // readers never see a half-written file
