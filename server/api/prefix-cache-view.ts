// GET /v1/cache: what the engine's prefix cache holds and how often it serves prompts.
import type { Engine } from "../engine/types.ts";

export interface PrefixCacheView {
  object: "prefix_cache";
  enabled: boolean;
  block_tokens?: number;
  blocks?: number;
  /** Blocks some running generation holds (kept from the cache's own eviction). */
  held_blocks?: number;
  bytes?: number;
  /** COLM_PREFIX_CACHE_BYTES (null: unbounded); the KV budget left by admission bounds it too. */
  limit_bytes?: number | null;
  /** Chain 1's keys/values per token (spec §5.6): what a cached token costs at every chain count. */
  bytes_per_token?: number;
  /** Prompt tokens of generations that looked the cache up, those served from it, and their ratio. */
  query_tokens?: number;
  hit_tokens?: number;
  hit_rate?: number | null;
  evicted_blocks?: number;
  stored_blocks?: number;
}

export function prefixCacheView(engine: Engine): PrefixCacheView {
  const s = engine.prefixCache?.stats();
  if (!s) return { object: "prefix_cache", enabled: false };
  return {
    object: "prefix_cache",
    enabled: true,
    block_tokens: s.blockTokens,
    blocks: s.blocks,
    held_blocks: s.heldBlocks,
    bytes: s.bytes,
    limit_bytes: Number.isFinite(s.limitBytes) ? s.limitBytes : null,
    bytes_per_token: s.bytesPerToken,
    query_tokens: s.queryTokens,
    hit_tokens: s.hitTokens,
    hit_rate: s.queryTokens > 0 ? s.hitTokens / s.queryTokens : null,
    evicted_blocks: s.evictedBlocks,
    stored_blocks: s.storedBlocks,
  };
}
