// config.json of a CoLM-Air checkpoint (spec §2), validated with zod, plus the widths derived
// from it that every other module uses (chain widths c_i, prefix widths d_k, FFN prefixes F_k).
import { readFileSync } from "node:fs";
import { z } from "zod";
import { ModelLoadError } from "./errors.ts";

const positiveInt = z.number().int().positive();

export const ColmConfigSchema = z
  .object({
    architecture: z.literal("colm-air"),
    name: z.string().min(1).optional(),
    vocab_size: positiveInt,
    n_layers: positiveInt,
    head_dim: positiveInt.refine((v) => v % 2 === 0, "must be even (rotary embedding rotates halves)"),
    chain_heads: z.array(positiveInt).min(1),
    kv_heads: positiveInt,
    ffn_chain_dims: z.array(positiveInt).min(1),
    rope_theta: z.number().positive().default(10000),
    norm_eps: z.number().positive().default(1e-5),
    max_position: positiveInt,
    tie_embeddings: z.boolean().default(false),
    bos_token_id: z.number().int().nonnegative().nullable().default(null),
    eos_token_id: z.number().int().nonnegative().nullable().default(null),
    /** "byte": the built-in byte-level tokenizer; absent: tokenizer.json beside the config. */
    tokenizer: z.literal("byte").optional(),
    /** Present in a quantized checkpoint (models/QUANTIZATION.md): its bits per weight and block size. */
    quantization: z
      .object({
        bits: z.union([z.literal(4), z.literal(8)]),
        block_size: positiveInt.refine((v) => v >= 16 && (v & (v - 1)) === 0, "must be a power of two ≥ 16"),
      })
      .optional(),
  })
  .superRefine((c, ctx) => {
    if (c.ffn_chain_dims.length !== c.chain_heads.length) {
      ctx.addIssue({
        code: "custom",
        path: ["ffn_chain_dims"],
        message: `has ${c.ffn_chain_dims.length} chains but chain_heads has ${c.chain_heads.length}`,
      });
    }
    c.chain_heads.forEach((h, i) => {
      if (h % c.kv_heads !== 0) {
        ctx.addIssue({
          code: "custom",
          path: ["chain_heads", i],
          message: `${h} query heads is not a multiple of kv_heads (${c.kv_heads})`,
        });
      }
    });
    for (const key of ["bos_token_id", "eos_token_id"] as const) {
      const id = c[key];
      if (id !== null && id >= c.vocab_size) {
        ctx.addIssue({ code: "custom", path: [key], message: `${id} is outside the vocabulary (${c.vocab_size})` });
      }
    }
  });

export type ColmConfigJson = z.input<typeof ColmConfigSchema>;

export class ConfigError extends ModelLoadError {
  override name = "ConfigError";
}

/** A validated config with the derived widths. */
export interface ColmConfig extends z.output<typeof ColmConfigSchema> {
  /** Number of chains n. */
  nChains: number;
  /** Chain widths c_i = h_i · hd. */
  chainWidths: number[];
  /** Prefix widths: dk[k] = c_1 + … + c_k, dk[0] = 0. */
  dk: number[];
  /** FFN prefix widths: fk[k] = f_1 + … + f_k, fk[0] = 0. */
  fk: number[];
  /** Query heads of the first k chains: hk[k]. */
  hk: number[];
  /** Full width D. */
  hidden: number;
  /** Key/value width kv_heads · hd (chain 1 only). */
  kvWidth: number;
}

const prefix = (xs: number[]): number[] => xs.reduce((acc, x) => [...acc, acc[acc.length - 1] + x], [0]);

export function parseConfig(json: unknown, source = "config.json"): ColmConfig {
  const r = ColmConfigSchema.safeParse(json);
  if (!r.success) {
    const msgs = r.error.issues.map((i) => `${i.path.length ? i.path.join(".") : "(root)"}: ${i.message}`);
    throw new ConfigError(`invalid ${source}: ${msgs.join("; ")}`);
  }
  const c = r.data;
  const chainWidths = c.chain_heads.map((h) => h * c.head_dim);
  const dk = prefix(chainWidths);
  return {
    ...c,
    nChains: c.chain_heads.length,
    chainWidths,
    dk,
    fk: prefix(c.ffn_chain_dims),
    hk: prefix(c.chain_heads),
    hidden: dk[dk.length - 1],
    kvWidth: c.kv_heads * c.head_dim,
  };
}

export function readConfig(path: string): ColmConfig {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new ConfigError(`cannot read ${path}: ${(e as Error).message}`);
  }
  return parseConfig(json, path);
}

/** KV cache values per token (spec §5.6): 2 · L · kv_heads · hd. */
export const kvValuesPerToken = (c: ColmConfig): number => 2 * c.n_layers * c.kvWidth;
