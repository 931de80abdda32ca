// Small random checkpoints for tests, written once per process into a temp folder.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ColmConfigJson } from "../../models/config.ts";
import { writeRandomCheckpoint } from "../../kernels/random-checkpoint.ts";

/** Four equal chains, grouped-query sharing with 2 query heads per kv head in every chain. */
export const TINY_EQUAL: ColmConfigJson = {
  architecture: "colm-air",
  vocab_size: 97,
  n_layers: 2,
  head_dim: 8,
  chain_heads: [2, 2, 2, 2],
  kv_heads: 1,
  ffn_chain_dims: [24, 24, 24, 24],
  rope_theta: 10000,
  norm_eps: 1e-5,
  max_position: 128,
  tie_embeddings: false,
  bos_token_id: null,
  eos_token_id: null,
  tokenizer: "byte",
};

/** Unequal chains ({2,2,4} heads, as in the paper's {8,8,16}), tied embeddings. */
export const TINY_UNEQUAL: ColmConfigJson = {
  ...TINY_EQUAL,
  vocab_size: 256,
  chain_heads: [2, 2, 4],
  kv_heads: 2,
  ffn_chain_dims: [16, 24, 40],
  tie_embeddings: true,
};

const made: string[] = [];
// Every test file runs in its own process: its folders go when it exits (they piled up in the
// system's temp folder, ~35 per `npm test`).
process.on("exit", () => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/** A new temp folder, removed when the process exits. */
export function tempDir(prefix = "colm-test-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}

export function makeCheckpoint(config: ColmConfigJson, seed = 1): string {
  const dir = tempDir();
  writeRandomCheckpoint(dir, config, seed);
  return dir;
}
