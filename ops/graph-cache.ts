// Built graphs cached on disk, keyed by the checkpoint and the code that builds it. A large
// checkpoint's graph is built by a child process: the serving process then only asks onnxruntime
// to load the file, and never holds the checkpoint or graph bytes itself — which glibc would keep
// as resident heap after they are freed (ops/README.md, Memory).
import { createHash } from "node:crypto";
import { execFile } from "node:child_process";
import { createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, utimesSync } from "node:fs";
import { dirname, join } from "node:path";
import { weightFiles } from "../models/safetensors.ts";
import { fileURLToPath } from "node:url";
import type { Precision } from "../models/quantized.ts";

const HERE = dirname(fileURLToPath(import.meta.url));
/** The sources whose output the cached file is: a change to any of them is a new key. */
const BUILDER_SOURCES = ["build-graph.ts", "colm-graph.ts", "colm-weights.ts", "graph-inputs.ts", "layer-stack.ts", "attention.ts", "chain-gates.ts", "graph.ts", "onnx-proto.ts", "../models/checkpoint.ts", "../models/config.ts", "../models/quantized.ts", "../kernels/quantize.ts"].map((f) => join(HERE, f));

async function hashFile(hash: ReturnType<typeof createHash>, path: string): Promise<void> {
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
}

/**
 * The cache key of a checkpoint folder's graph at a precision: a float32 checkpoint quantized at
 * load time is cached quantized, so a restart does not quantize it again. "stored" is the
 * checkpoint's own precision.
 */
export async function graphKey(checkpointDir: string, precision: Precision | "stored" = "stored"): Promise<string> {
  const hash = createHash("sha256");
  if (precision !== "stored") hash.update(`precision:${precision}`);
  for (const src of BUILDER_SOURCES) hash.update(readFileSync(src));
  hash.update(readFileSync(join(checkpointDir, "config.json")));
  for (const f of weightFiles(checkpointDir)) await hashFile(hash, f);
  return hash.digest("hex").slice(0, 32);
}

export const defaultGraphCacheDir = (): string => process.env.COLM_GRAPH_CACHE ?? join(HERE, "..", ".cache", "graphs");

/** Bytes of built graphs the cache keeps (COLM_GRAPH_CACHE_BYTES, default 8 GiB). */
const cacheBudget = (): number => Number(process.env.COLM_GRAPH_CACHE_BYTES) || 8 * 2 ** 30;

/** What the cache holds: built graphs, and quantized weights for the native kernel. */
const BUILT = [".onnx", ".weights.safetensors"];

/**
 * Deletes the least recently used builds (by access time, which every use sets) until the folder
 * holds at most `budget` bytes; `keep` is never deleted. Every change to the builder or a
 * checkpoint is a new key, so without this the folder only grows (graphs of bench-m are 0.7 GB
 * each). Returns the deleted files.
 */
export function pruneGraphCache(cacheDir: string, keep: string, budget = cacheBudget()): string[] {
  const built = readdirSync(cacheDir)
    .filter((f) => BUILT.some((ext) => f.endsWith(ext)))
    .map((f) => ({ path: join(cacheDir, f), ...statSync(join(cacheDir, f)) }))
    .sort((a, b) => a.atimeMs - b.atimeMs); // least recently used first
  let total = built.reduce((sum, g) => sum + g.size, 0);
  const deleted: string[] = [];
  for (const g of built) {
    if (total <= budget) break;
    if (g.path === keep) continue;
    rmSync(g.path, { force: true });
    total -= g.size;
    deleted.push(g.path);
  }
  return deleted;
}

/**
 * The file a child process builds from a checkpoint (ops/build-graph.ts with `args`), cached under
 * the checkpoint's key at `precision` with the extension `ext`: built when missing, marked used.
 */
async function cachedBuild(checkpointDir: string, cacheDir: string, log: (m: string) => void, precision: Precision | "stored", ext: string, args: (file: string) => string[]): Promise<string> {
  const file = join(cacheDir, `${await graphKey(checkpointDir, precision)}${ext}`);
  if (existsSync(file)) {
    utimesSync(file, new Date(), statSync(file).mtime); // marks it used; mtime stays the build time (to the ms)
    return file;
  }
  mkdirSync(cacheDir, { recursive: true });
  const script = join(HERE, "build-graph.ts");
  const quant = precision === "stored" ? [] : ["--quant", precision];
  await new Promise<void>((resolve, reject) => {
    execFile(process.execPath, ["--import", import.meta.resolve("tsx"), script, checkpointDir, ...quant, ...args(file)], { maxBuffer: 1 << 24 }, (err, _stdout, stderr) => {
      for (const line of stderr.split("\n")) if (line.startsWith("warning: ")) log(line.slice(9));
      if (err) reject(new Error(`building ${ext} of ${checkpointDir} failed: ${stderr.trim() || err.message}`));
      else resolve();
    });
  });
  for (const gone of pruneGraphCache(cacheDir, file)) log(`graph cache: removed least recently used ${gone}`);
  return file;
}

/**
 * Path of the checkpoint's built graph at `precision` (a float32 checkpoint is quantized by the
 * child process), building it in a child process when it is not cached.
 */
export function cachedGraph(checkpointDir: string, cacheDir = defaultGraphCacheDir(), log: (m: string) => void = () => {}, precision: Precision | "stored" = "stored"): Promise<string> {
  return cachedBuild(checkpointDir, cacheDir, log, precision, ".onnx", (file) => ["--graph", file]);
}

/**
 * Path of a float32 checkpoint's weights quantized to `precision` (a checkpoint file in the
 * format of models/QUANTIZATION.md), for the native kernel: quantized once, by a child process, so
 * that the serving process never holds the float32 weights.
 */
export function cachedQuantizedWeights(checkpointDir: string, precision: "q8" | "q4", cacheDir = defaultGraphCacheDir(), log: (m: string) => void = () => {}): Promise<string> {
  return cachedBuild(checkpointDir, cacheDir, log, precision, ".weights.safetensors", (file) => ["--weights", file]);
}
