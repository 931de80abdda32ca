// Small random checkpoints for tests, written once per process into a temp folder.
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ColmConfigJson } from "../../models/config.ts";
import { writeRandomCheckpoint } from "../../models/random.ts";

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

export function tempDir(prefix = "colm-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function makeCheckpoint(config: ColmConfigJson, seed = 1): string {
  const dir = tempDir();
  writeRandomCheckpoint(dir, config, seed);
  return dir;
}
