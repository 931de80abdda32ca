// The shared KV cache of one sequence (spec §5.3, §5.6): only chain 1's rotated keys and values,
// kv_heads · hd per token per layer, whatever chain count produced them. Each layer's keys and
// values live in one [kv_heads, capacity, hd] buffer that the graph reads in place (slots past
// `length` are masked), so a decode step never copies the cache. Capacity grows by doubling:
// amortised O(1) per token, the whole cache is never copied per token.

export class KvCache {
  /** Tokens held. */
  length = 0;
  private cap: number;
  private keys: Float32Array[];
  private values: Float32Array[];

  constructor(
    readonly layers: number,
    readonly kvHeads: number,
    readonly headDim: number,
    initialCapacity = 64,
  ) {
    this.cap = Math.max(1, initialCapacity);
    this.keys = this.alloc();
    this.values = this.alloc();
  }

  private alloc(): Float32Array[] {
    return Array.from({ length: this.layers }, () => new Float32Array(this.kvHeads * this.cap * this.headDim));
  }

  /** Slots allocated per layer (the C of the [kv_heads, C, hd] buffers). */
  get capacity(): number {
    return this.cap;
  }

  /** Bytes per token: 2 · L · kv_heads · hd · 4 (spec §5.6). */
  get bytesPerToken(): number {
    return 2 * this.layers * this.kvHeads * this.headDim * 4;
  }

  /** Bytes of the tokens held. */
  get bytesInUse(): number {
    return this.length * this.bytesPerToken;
  }

  /** Bytes allocated (capacity). */
  get bytesAllocated(): number {
    return this.cap * this.bytesPerToken;
  }

  /** Layer l's key buffer [kv_heads, capacity, hd] (no copy; slots ≥ length are garbage). */
  keyBuffer(l: number): Float32Array {
    return this.keys[l];
  }

  valueBuffer(l: number): Float32Array {
    return this.values[l];
  }

  /** Appends `tokens` tokens' keys/values, given token-major ([tokens, kv_heads · hd] per layer). */
  append(newKeys: Float32Array[], newValues: Float32Array[], tokens: number): void {
    if (newKeys.length !== this.layers || newValues.length !== this.layers) {
      throw new RangeError(`KvCache.append: expected ${this.layers} layers, got ${newKeys.length}/${newValues.length}`);
    }
    this.reserve(this.length + tokens);
    const { kvHeads, headDim: hd, cap } = this;
    for (let l = 0; l < this.layers; l++) {
      for (let t = 0; t < tokens; t++) {
        for (let h = 0; h < kvHeads; h++) {
          const from = (t * kvHeads + h) * hd;
          const to = (h * cap + this.length + t) * hd;
          this.keys[l].set(newKeys[l].subarray(from, from + hd), to);
          this.values[l].set(newValues[l].subarray(from, from + hd), to);
        }
      }
    }
    this.length += tokens;
  }

  /** Ensures room for `tokens` tokens, doubling the capacity as needed. */
  reserve(tokens: number): void {
    if (tokens <= this.cap) return;
    if (this.keys.length !== this.layers) throw new Error("KvCache used after release()");
    const old = this.cap;
    let cap = Math.max(1, old);
    while (cap < tokens) cap *= 2;
    const { kvHeads, headDim: hd, length } = this;
    const grow = (a: Float32Array): Float32Array => {
      const b = new Float32Array(kvHeads * cap * hd);
      for (let h = 0; h < kvHeads; h++) b.set(a.subarray(h * old * hd, (h * old + length) * hd), h * cap * hd);
      return b;
    };
    this.cap = cap;
    this.keys = this.keys.map(grow);
    this.values = this.values.map(grow);
  }

  /** Token-major copy of layer l's keys or values: [length, kv_heads · hd] (for tests and tools). */
  read(l: number, which: "keys" | "values"): Float32Array {
    const src = (which === "keys" ? this.keys : this.values)[l];
    const { kvHeads, headDim: hd, cap } = this;
    const out = new Float32Array(this.length * kvHeads * hd);
    for (let t = 0; t < this.length; t++) {
      for (let h = 0; h < kvHeads; h++) out.set(src.subarray((h * cap + t) * hd, (h * cap + t + 1) * hd), (t * kvHeads + h) * hd);
    }
    return out;
  }

  /** Drops every token from `length` on (cancellation, rejected speculative tokens). */
  truncate(length: number): void {
    if (length < 0 || length > this.length) throw new RangeError(`KvCache.truncate(${length}) outside [0, ${this.length}]`);
    this.length = length;
  }

  /** Frees the storage; the cache holds nothing afterwards. */
  release(): void {
    this.length = 0;
    this.cap = 0;
    this.keys = [];
    this.values = [];
  }
}
