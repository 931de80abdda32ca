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

/**
 * Where a float32 checkpoint quantized at load keeps its quantized weights beside its graph, for
 * the native decode kernel (ops/runner.ts), so that the serving process reads them instead of
 * quantizing the float32 weights itself.
 */
export const quantizedWeightsPath = (graph: string): string => graph.replace(/\.onnx$/, ".weights.safetensors");

export const defaultGraphCacheDir = (): string => process.env.COLM_GRAPH_CACHE ?? join(HERE, "..", ".cache", "graphs");

/** Bytes of built graphs the cache keeps (COLM_GRAPH_CACHE_BYTES, default 8 GiB). */
const cacheBudget = (): number => Number(process.env.COLM_GRAPH_CACHE_BYTES) || 8 * 2 ** 30;

/**
 * Deletes the least recently used graphs (by access time, which cachedGraph sets on every use)
 * until the folder holds at most `budget` bytes; `keep` is never deleted. Every change to the
 * builder or a checkpoint is a new key, so without this the folder only grows (graphs of bench-m
 * are 0.7 GB each). Returns the deleted files.
 */
export function pruneGraphCache(cacheDir: string, keep: string, budget = cacheBudget()): string[] {
  const graphs = readdirSync(cacheDir)
    .filter((f) => f.endsWith(".onnx"))
    .map((f) => ({ path: join(cacheDir, f), ...statSync(join(cacheDir, f)) }))
    .sort((a, b) => a.atimeMs - b.atimeMs); // least recently used first
  const sizeOf = (f: string): number => (existsSync(f) ? statSync(f).size : 0);
  let total = graphs.reduce((sum, g) => sum + g.size + sizeOf(quantizedWeightsPath(g.path)), 0);
  const deleted: string[] = [];
  for (const g of graphs) {
    if (total <= budget) break;
    if (g.path === keep) continue;
    rmSync(g.path, { force: true });
    total -= g.size;
    const weights = quantizedWeightsPath(g.path);
    if (existsSync(weights)) total -= statSync(weights).size;
    rmSync(weights, { force: true });
    deleted.push(g.path);
  }
  return deleted;
}

/**
 * Path of the checkpoint's built graph at `precision` (a float32 checkpoint is quantized by the
 * child process), building it in a child process when it is not cached.
 */
export async function cachedGraph(checkpointDir: string, cacheDir = defaultGraphCacheDir(), log: (m: string) => void = () => {}, precision: Precision | "stored" = "stored"): Promise<string> {
  const file = join(cacheDir, `${await graphKey(checkpointDir, precision)}.onnx`);
  if (existsSync(file)) {
    utimesSync(file, new Date(), statSync(file).mtime); // marks it used; mtime stays the build time (to the ms)
    return file;
  }
  mkdirSync(cacheDir, { recursive: true });
  const script = join(HERE, "build-graph.ts");
  await new Promise<void>((resolve, reject) => {
    execFile(process.execPath, ["--import", import.meta.resolve("tsx"), script, checkpointDir, file, ...(precision === "stored" ? [] : ["--quant", precision, "--weights", quantizedWeightsPath(file)])], { maxBuffer: 1 << 24 }, (err, _stdout, stderr) => {
      for (const line of stderr.split("\n")) if (line.startsWith("warning: ")) log(line.slice(9));
      if (err) reject(new Error(`building the graph of ${checkpointDir} failed: ${stderr.trim() || err.message}`));
      else resolve();
    });
  });
  for (const gone of pruneGraphCache(cacheDir, file)) log(`graph cache: removed least recently used ${gone}`);
  return file;
}
