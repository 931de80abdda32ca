// The benchmark shapes of the issues (random weights, cached under .cache/bench/<name>), with the
// same widths, depths and vocabularies as the llama.cpp anchors in loadtest/README.md ("llama.cpp anchors").
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseConfig, type ColmConfigJson } from "../models/config.ts";

const common = { architecture: "colm-air", head_dim: 64, rope_theta: 10000, norm_eps: 1e-5, tie_embeddings: false, tokenizer: "byte" } as const;

/** bench-s: V 8192, D 512 as 4 chains of 128, 8 layers, FFN 4×352. */
export const BENCH_S: ColmConfigJson = { ...common, name: "bench-s", vocab_size: 8192, n_layers: 8, chain_heads: [2, 2, 2, 2], kv_heads: 2, ffn_chain_dims: [352, 352, 352, 352], max_position: 2048 };

/** bench-m: V 32000, D 1024 as 4 chains of 256, 16 layers, FFN 4×704. */
export const BENCH_M: ColmConfigJson = { ...common, name: "bench-m", vocab_size: 32000, n_layers: 16, chain_heads: [4, 4, 4, 4], kv_heads: 4, ffn_chain_dims: [704, 704, 704, 704], max_position: 4096 };

/** bench-m's full width as one chain: the dense baseline. */
export const DENSE_M: ColmConfigJson = { ...BENCH_M, name: "dense-m", chain_heads: [16], ffn_chain_dims: [2816] };

/** The folder of a random checkpoint of `config`, written on first use (same seed, same weights). */
export function benchCheckpoint(config: ColmConfigJson): string {
  const dir = join(".cache", "bench", String(config.name));
  if (!existsSync(join(dir, "model.safetensors"))) {
    console.error(`writing random checkpoint ${dir} …`);
    // In a child process: a benchmark reads this process's resident memory as the model's.
    const writer = join(dirname(fileURLToPath(import.meta.url)), "write-checkpoint.ts");
    const r = spawnSync(process.execPath, ["--import", "tsx", writer, dir, JSON.stringify(config), "1234"], { stdio: "inherit" });
    if (r.status !== 0) throw new Error(`writing ${dir} failed (exit ${r.status})`);
  } else {
    writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 2) + "\n"); // same weights, current config
  }
  return dir;
}

/**
 * The folder of `config`'s random checkpoint quantized to `precision` (.cache/bench/<name>-q4),
 * written on first use by `npm run quantize` in a child process (as benchCheckpoint, so the
 * measuring process never held the weights).
 */
export function quantizedBenchCheckpoint(config: ColmConfigJson, precision: "q8" | "q4"): string {
  const source = benchCheckpoint(config);
  const dir = `${source}-${precision}`;
  if (!existsSync(join(dir, "model.safetensors"))) {
    console.error(`writing quantized checkpoint ${dir} …`);
    const cli = join(dirname(fileURLToPath(import.meta.url)), "quantize.ts");
    const r = spawnSync(process.execPath, ["--import", "tsx", cli, source, "--bits", precision.slice(1), "--out", dir], { stdio: "inherit" });
    if (r.status !== 0) throw new Error(`writing ${dir} failed (exit ${r.status})`);
  }
  return dir;
}

/** "bench-s: V 8192, D 512 (4 chains of 128), 8 layers, head_dim 64, kv_heads 2, FFN 4×352". */
export function describeShape(json: ColmConfigJson): string {
  const c = parseConfig(json);
  const chains = c.nChains === 1 ? "one chain" : `${c.nChains} chains of ${c.chainWidths[0]}`;
  return `${json.name}: V ${c.vocab_size}, D ${c.hidden} (${chains}), ${c.n_layers} layers, head_dim ${c.head_dim}, kv_heads ${c.kv_heads}, FFN ${c.nChains}×${c.ffn_chain_dims[0]}`;
}
