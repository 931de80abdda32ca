// Automatic prefix caching (vLLM's automatic prefix caching, llama.cpp's cache_prompt): the keys and
// values of full blocks of `blockTokens` prompt (or generated) tokens outlive the sequence that
// computed them, and a new sequence whose prompt starts with cached blocks copies them into its row
// instead of prefilling them. The cache holds chain 1's keys/values only (spec §5.3), which every
// chain count shares, so a block written by a request at any size serves a request at any other.
//
// Blocks are named by a chained hash (sha-256 of the previous block's key and this block's tokens;
// the first block's chain starts from the request's cache salt), so a block names its whole prefix
// and the longest cached prefix is found by walking the prompt's keys until one is missing. A
// block's tokens are compared too: a hash collision can never change an output.
//
// Memory: at most `limitBytes`, and at most what the admission budget leaves (limitBy). Eviction is
// least recently used among leaf blocks (a block is present only while its parent is, so a chain
// never has holes). Blocks a running sequence holds (matched or stored by it) are kept from the
// cache's own eviction; admission (evict) may take them too, since every row holds its own copy.
import { createHash } from "node:crypto";
import type { KvCache } from "../../kernels/kv-cache.ts";

/** Tokens per block (vLLM's default block size). */
export const DEFAULT_BLOCK_TOKENS = 16;

export interface PrefixBlock {
  readonly key: string;
  readonly parent: PrefixBlock | null;
  readonly tokens: Int32Array;
  /** Keys and values of the block's tokens, every layer (KvCache.copyOut's layout). */
  readonly data: Float32Array;
  children: number;
  holders: number;
  evicted: boolean;
}

export interface PrefixCacheStats {
  blockTokens: number;
  blocks: number;
  /** Blocks some running sequence holds. */
  heldBlocks: number;
  bytes: number;
  limitBytes: number;
  /** Chain 1's keys/values: 2 · L · kv_heads · hd · 4. */
  bytesPerToken: number;
  /** Prompt tokens of the sequences that looked the cache up, and those served from it. */
  queryTokens: number;
  hitTokens: number;
  evictedBlocks: number;
  storedBlocks: number;
}

export class PrefixCache {
  /** Every cached block by key, least recently used first (a touch re-inserts). */
  private readonly blocks = new Map<string, PrefixBlock>();
  private headroom: () => number = () => Infinity;
  private held = 0;
  private queried = 0;
  private hits = 0;
  private evictions = 0;
  private stores = 0;

  constructor(
    readonly limitBytes: number,
    readonly bytesPerToken: number,
    readonly blockTokens = DEFAULT_BLOCK_TOKENS,
  ) {
    if (!(blockTokens >= 1) || !Number.isInteger(blockTokens)) throw new RangeError(`prefix cache: block size must be a positive integer, got ${blockTokens}`);
  }

  get blockBytes(): number {
    return this.blockTokens * this.bytesPerToken;
  }

  get bytes(): number {
    return this.blocks.size * this.blockBytes;
  }

  /** Bounds the bytes the cache may hold besides limitBytes (the KV budget left by admission). */
  limitBy(headroom: () => number): void {
    this.headroom = headroom;
  }

  /** The chained key of the block after `parent` holding `tokens`. */
  private key(parent: string, tokens: Int32Array): string {
    return createHash("sha256").update(parent).update(new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength)).digest("base64");
  }

  /** The root of a salt's chain: tenants with different salts never share a block. */
  private root(salt: string | undefined): string {
    return createHash("sha256").update(salt === undefined ? "colm-prefix" : `colm-prefix-salt:${salt}`).digest("base64");
  }

  /**
   * The cached full blocks that `tokens` starts with, as many as cover `maxTokens` tokens (the last
   * one may reach past it: its first tokens are used), no LRU update.
   */
  private find(tokens: readonly number[], salt: string | undefined, maxTokens: number): PrefixBlock[] {
    const B = this.blockTokens;
    const found: PrefixBlock[] = [];
    let parent = this.root(salt);
    for (let at = 0; at + B <= tokens.length && at < maxTokens; at += B) {
      const ids = Int32Array.from(tokens.slice(at, at + B));
      const block = this.blocks.get((parent = this.key(parent, ids)));
      if (!block || block.parent !== (found[found.length - 1] ?? null) || !sameTokens(block.tokens, ids)) break;
      found.push(block);
    }
    return found;
  }

  /** Tokens of `tokens` a sequence would reuse now (at most maxTokens; nothing is touched). */
  cachedTokens(tokens: readonly number[], salt?: string, maxTokens = tokens.length - 1): number {
    return Math.min(this.find(tokens, salt, maxTokens).length * this.blockTokens, maxTokens);
  }

  /**
   * Looks a prompt up for a sequence about to be prefilled: copies the longest cached block prefix
   * (at most maxTokens tokens: the last prompt token must still run at the requested size) into
   * `row` of `kv`, which must be empty. Returns the blocks, now held by the caller (release them).
   */
  reuse(tokens: readonly number[], salt: string | undefined, maxTokens: number, kv: KvCache, row: number): PrefixBlock[] {
    const blocks = this.find(tokens, salt, maxTokens);
    this.queried += tokens.length;
    if (!blocks.length) return blocks;
    const reused = Math.min(blocks.length * this.blockTokens, maxTokens);
    // Room for the whole prompt at once: the rest of it must not grow (and copy) the cache again.
    kv.reserve(Math.max(blocks.length * this.blockTokens, tokens.length));
    kv.appendBlocks(blocks.map((b) => b.data), this.blockTokens, row);
    kv.truncate(reused, row);
    this.hits += reused;
    this.hold(blocks);
    return blocks;
  }

  /**
   * Stores the full blocks of the first `length` tokens of `tokens`, whose keys/values are in `row`
   * of `kv`, that are not cached yet (as room allows). Returns the chain of blocks now cached for
   * that prefix, held by the caller.
   */
  store(tokens: readonly number[], length: number, salt: string | undefined, kv: KvCache, row: number): PrefixBlock[] {
    const B = this.blockTokens;
    const chain: PrefixBlock[] = [];
    let parentKey = this.root(salt);
    for (let at = 0; at + B <= Math.min(length, tokens.length); at += B) {
      const ids = Int32Array.from(tokens.slice(at, at + B));
      const key = (parentKey = this.key(parentKey, ids));
      const parent = chain[chain.length - 1] ?? null;
      let block = this.blocks.get(key);
      if (block && (block.parent !== parent || !sameTokens(block.tokens, ids))) break; // a collision: keep the cached one
      if (!block) {
        if (!this.makeRoom(this.blockBytes, false)) break;
        block = { key, parent, tokens: ids, data: kv.copyOut(row, at, B), children: 0, holders: 0, evicted: false };
        if (parent) parent.children++;
        this.blocks.set(key, block);
        this.stores++;
      }
      chain.push(block);
    }
    this.hold(chain);
    return chain;
  }

  /** Marks blocks held and most recently used (the chain's root most recent: leaves go first). */
  private hold(chain: readonly PrefixBlock[]): void {
    for (let i = chain.length - 1; i >= 0; i--) {
      const b = chain[i];
      if (b.holders++ === 0 && !b.evicted) this.held++;
      if (b.evicted) continue;
      this.blocks.delete(b.key);
      this.blocks.set(b.key, b);
    }
  }

  /** A sequence leaves: it no longer holds these blocks. */
  release(chain: readonly PrefixBlock[]): void {
    for (const b of chain) if (--b.holders === 0 && !b.evicted) this.held--;
  }

  /** Frees room for `bytes` more under both limits; held blocks only when `takeHeld`. */
  private makeRoom(bytes: number, takeHeld: boolean): boolean {
    const limit = Math.min(this.limitBytes, this.headroom());
    while (this.bytes + bytes > limit) if (!this.evictOne(takeHeld)) return false;
    return true;
  }

  /** Evicts the least recently used leaf (not held unless `takeHeld`); false when there is none. */
  private evictOne(takeHeld: boolean): boolean {
    for (const b of this.blocks.values()) {
      if (b.children > 0 || (b.holders > 0 && !takeHeld)) continue;
      this.blocks.delete(b.key);
      b.evicted = true;
      if (b.holders > 0) this.held--;
      if (b.parent) b.parent.children--;
      this.evictions++;
      return true;
    }
    return false;
  }

  /**
   * Frees at least `bytes` (admission needs the room): blocks no sequence holds first, least
   * recently used first, then held ones (each row has its own copy). Returns the bytes freed.
   */
  evict(bytes: number): number {
    const before = this.bytes;
    while (before - this.bytes < bytes && (this.evictOne(false) || this.evictOne(true)));
    return before - this.bytes;
  }

  /** Drops every block (held ones too). */
  clear(): void {
    this.evict(Infinity);
  }

  stats(): PrefixCacheStats {
    return {
      blockTokens: this.blockTokens,
      blocks: this.blocks.size,
      heldBlocks: this.held,
      bytes: this.bytes,
      limitBytes: this.limitBytes,
      bytesPerToken: this.bytesPerToken,
      queryTokens: this.queried,
      hitTokens: this.hits,
      evictedBlocks: this.evictions,
      storedBlocks: this.stores,
    };
  }
}

function sameTokens(a: Int32Array, b: Int32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
