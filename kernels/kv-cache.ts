// The shared KV cache of one sequence (spec §5.3, §5.6): only chain 1's rotated keys and values,
// kv_heads · hd wide per layer, whatever chain count produced them. Stored token-major per layer
// so the first `length` tokens are one contiguous prefix that onnxruntime reads in place.
// Capacity grows by doubling (amortised O(1) per token; the whole cache is never copied per token).

export class KvCache {
  /** Tokens held. */
  length = 0;
  private capacity: number;
  private keys: Float32Array[];
  private values: Float32Array[];

  constructor(
    readonly layers: number,
    /** Values per token per layer for K (and for V): kv_heads · hd. */
    readonly width: number,
    initialCapacity = 64,
  ) {
    this.capacity = Math.max(1, initialCapacity);
    this.keys = Array.from({ length: layers }, () => new Float32Array(this.capacity * width));
    this.values = Array.from({ length: layers }, () => new Float32Array(this.capacity * width));
  }

  /** Bytes per token: 2 · L · kv_heads · hd · 4 (spec §5.6). */
  get bytesPerToken(): number {
    return 2 * this.layers * this.width * 4;
  }

  /** Bytes of the tokens held. */
  get bytesInUse(): number {
    return this.length * this.bytesPerToken;
  }

  /** Bytes allocated (capacity). */
  get bytesAllocated(): number {
    return this.capacity * this.bytesPerToken;
  }

  /** The cached keys of layer l: [length, width], a view (no copy). */
  pastKeys(l: number): Float32Array {
    return this.keys[l].subarray(0, this.length * this.width);
  }

  pastValues(l: number): Float32Array {
    return this.values[l].subarray(0, this.length * this.width);
  }

  /** Appends `tokens` tokens' keys/values ([tokens, width] per layer). */
  append(newKeys: Float32Array[], newValues: Float32Array[], tokens: number): void {
    if (newKeys.length !== this.layers || newValues.length !== this.layers) {
      throw new RangeError(`KvCache.append: expected ${this.layers} layers, got ${newKeys.length}/${newValues.length}`);
    }
    this.reserve(this.length + tokens);
    const at = this.length * this.width;
    for (let l = 0; l < this.layers; l++) {
      this.keys[l].set(newKeys[l].subarray(0, tokens * this.width), at);
      this.values[l].set(newValues[l].subarray(0, tokens * this.width), at);
    }
    this.length += tokens;
  }

  /** Ensures room for `tokens` tokens, doubling the capacity as needed. */
  reserve(tokens: number): void {
    if (tokens <= this.capacity) return;
    if (this.keys.length !== this.layers) throw new Error("KvCache used after release()");
    let cap = Math.max(1, this.capacity);
    while (cap < tokens) cap *= 2;
    const grow = (a: Float32Array): Float32Array => {
      const b = new Float32Array(cap * this.width);
      b.set(a.subarray(0, this.length * this.width));
      return b;
    };
    this.keys = this.keys.map(grow);
    this.values = this.values.map(grow);
    this.capacity = cap;
  }

  /** Drops every token from `length` on (cancellation, rejected speculative tokens). */
  truncate(length: number): void {
    if (length < 0 || length > this.length) throw new RangeError(`KvCache.truncate(${length}) outside [0, ${this.length}]`);
    this.length = length;
  }

  /** Frees the storage; the cache holds nothing afterwards. */
  release(): void {
    this.length = 0;
    this.capacity = 0;
    this.keys = [];
    this.values = [];
  }
}
