// The shared KV cache (spec §5.3, §5.6): only chain 1's rotated keys and values, kv_heads · hd per
// token per layer, whatever chain count produced them. A cache holds one or more rows (sequences
// decoded together); each layer's keys and values live in one [rows, kv_heads, capacity, hd]
// buffer that the graph reads in place (slots past a row's length are masked), so a step never
// copies the cache. Capacity grows geometrically (see reserve): amortised O(1) per token, the whole
// cache is never copied per token. Rows are allocated as they come into use (ensureRows), not all
// `rows` up front: capacity is per row and the same for every row, so a 16-row cache holding one
// 2000-token prompt would otherwise allocate (and zero) 16 such rows — 2.2 GB on bench-m instead of
// 138 MB, seconds of page faults on a prefix-cache hit.

/** Capacity grows in multiples of this many slots (see KvCache.reserve). */
export const GROWTH_SLOTS = 64;

export class KvCache {
  /** Tokens held by each row. */
  readonly lengths: number[];
  private cap: number;
  /** Rows with storage (0 … allocated-1); grows up to `rows` as rows come into use. */
  private allocated = 1;
  private keys: Float32Array[];
  private values: Float32Array[];

  constructor(
    readonly layers: number,
    readonly kvHeads: number,
    readonly headDim: number,
    private readonly initialCapacity = 64,
    readonly rows = 1,
  ) {
    this.cap = Math.max(1, initialCapacity);
    this.lengths = new Array<number>(rows).fill(0);
    this.keys = this.alloc();
    this.values = this.alloc();
  }

  private alloc(): Float32Array[] {
    return Array.from({ length: this.layers }, () => new Float32Array(this.allocated * this.kvHeads * this.cap * this.headDim));
  }

  /** Tokens held by row 0 (the sequence, for a one-row cache). */
  get length(): number {
    return this.lengths[0];
  }

  /** Slots allocated per row per layer (the C of the [rows, kv_heads, C, hd] buffers). */
  get capacity(): number {
    return this.cap;
  }

  /** Bytes per token: 2 · L · kv_heads · hd · 4 (spec §5.6). */
  get bytesPerToken(): number {
    return 2 * this.layers * this.kvHeads * this.headDim * 4;
  }

  /** Bytes of the tokens held. */
  get bytesInUse(): number {
    return this.lengths.reduce((a, b) => a + b, 0) * this.bytesPerToken;
  }

  /** Bytes allocated (capacity of the rows with storage). */
  get bytesAllocated(): number {
    return this.allocated * this.cap * this.bytesPerToken;
  }

  /** Rows with storage now. */
  get allocatedRows(): number {
    return this.allocated;
  }

  /**
   * Gives rows 0 … n-1 storage (at the current capacity), doubling the rows allocated so that rows
   * joining one by one cost amortised O(1) copies. Rows are the outermost axis, so the rows held
   * keep their offsets and are copied as one block per layer.
   */
  ensureRows(n: number): void {
    if (n <= this.allocated) return;
    if (n > this.rows) throw new RangeError(`KvCache.ensureRows(${n}): the cache has ${this.rows} rows`);
    if (this.keys.length !== this.layers) throw new Error("KvCache used after release()");
    const rows = Math.min(this.rows, Math.max(n, 2 * this.allocated));
    const size = rows * this.kvHeads * this.cap * this.headDim;
    const grow = (a: Float32Array): Float32Array => {
      const b = new Float32Array(size);
      b.set(a);
      return b;
    };
    this.allocated = rows;
    this.keys = this.keys.map(grow);
    this.values = this.values.map(grow);
  }

  /** Layer l's key buffer [rows, kv_heads, capacity, hd] (no copy; slots ≥ a row's length are garbage). */
  keyBuffer(l: number): Float32Array {
    return this.keys[l];
  }

  valueBuffer(l: number): Float32Array {
    return this.values[l];
  }

  /**
   * Appends `tokens` tokens to rows firstRow … firstRow+count-1, keys/values given head-major
   * ([count, kv_heads, tokens, hd], as a step over those rows returns them): one block copy per
   * row and head.
   */
  append(newKeys: Float32Array[], newValues: Float32Array[], tokens: number, firstRow = 0, count = this.rows - firstRow): void {
    if (newKeys.length !== this.layers || newValues.length !== this.layers) {
      throw new RangeError(`KvCache.append: expected ${this.layers} layers, got ${newKeys.length}/${newValues.length}`);
    }
    const rows = Array.from({ length: count }, (_, i) => firstRow + i);
    this.ensureRows(firstRow + count);
    this.reserve(Math.max(...rows.map((r) => this.lengths[r])) + tokens);
    const { kvHeads, headDim: hd, cap } = this;
    const block = tokens * hd;
    for (let l = 0; l < this.layers; l++) {
      rows.forEach((r, i) => {
        for (let h = 0; h < kvHeads; h++) {
          const from = (i * kvHeads + h) * block;
          const to = ((r * kvHeads + h) * cap + this.lengths[r]) * hd;
          this.keys[l].set(newKeys[l].subarray(from, from + block), to);
          this.values[l].set(newValues[l].subarray(from, from + block), to);
        }
      });
    }
    for (const r of rows) this.lengths[r] += tokens;
  }

  /** Exchanges two rows (the scheduler keeps rows grouped by chain count). */
  swapRows(a: number, b: number): void {
    this.ensureRows(Math.max(a, b) + 1);
    const size = this.kvHeads * this.cap * this.headDim;
    for (const buffers of [this.keys, this.values]) {
      for (const buf of buffers) {
        const held = buf.slice(a * size, (a + 1) * size);
        buf.copyWithin(a * size, b * size, (b + 1) * size);
        buf.set(held, b * size);
      }
    }
    [this.lengths[a], this.lengths[b]] = [this.lengths[b], this.lengths[a]];
  }

  /** Moves row `from`'s tokens into row `to` (compacting the rows in use); `from` is left empty. */
  moveRow(from: number, to: number): void {
    this.ensureRows(Math.max(from, to) + 1);
    const size = this.kvHeads * this.cap * this.headDim;
    for (let l = 0; l < this.layers; l++) {
      this.keys[l].copyWithin(to * size, from * size, (from + 1) * size);
      this.values[l].copyWithin(to * size, from * size, (from + 1) * size);
    }
    this.lengths[to] = this.lengths[from];
    this.lengths[from] = 0;
  }

  /**
   * Ensures room for `tokens` tokens in every row. Capacity grows by a quarter (rounded up to whole
   * multiples of GROWTH_SLOTS), not by doubling: every step's attention reads all
   * `capacity` slots (those past a row's length are masked, not skipped), so doubling could have a
   * step read up to twice what the rows hold. A quarter keeps that under 1.25× for about four
   * slots copied per token appended (figures in kernels/README.md).
   */
  reserve(tokens: number): void {
    if (tokens <= this.cap) return;
    if (this.keys.length !== this.layers) throw new Error("KvCache used after release()");
    const old = this.cap;
    const cap = Math.ceil(Math.max(tokens, old * 1.25) / GROWTH_SLOTS) * GROWTH_SLOTS;
    const { kvHeads, headDim: hd } = this;
    const grow = (a: Float32Array): Float32Array => {
      const b = new Float32Array(this.allocated * kvHeads * cap * hd);
      for (let r = 0; r < this.allocated; r++) {
        for (let h = 0; h < kvHeads; h++) {
          const head = r * kvHeads + h;
          b.set(a.subarray(head * old * hd, (head * old + this.lengths[r]) * hd), head * cap * hd);
        }
      }
      return b;
    };
    this.cap = cap;
    this.keys = this.keys.map(grow);
    this.values = this.values.map(grow);
  }

  /** Floats of `tokens` tokens in every layer, keys and values (the size of a copyOut block). */
  blockFloats(tokens: number): number {
    return 2 * this.layers * this.kvHeads * tokens * this.headDim;
  }

  /**
   * Copies tokens from … from+count-1 of `row` into `out` as one block: per layer, keys then
   * values, each [kv_heads, count, hd] (the layout append takes for one row, see appendBlocks).
   */
  copyOut(row: number, from: number, count: number, out: Float32Array = new Float32Array(this.blockFloats(count))): Float32Array {
    if (from < 0 || from + count > this.lengths[row]) throw new RangeError(`KvCache.copyOut: tokens ${from} … ${from + count - 1} outside row ${row}'s ${this.lengths[row]}`);
    const { kvHeads, headDim: hd, cap } = this;
    const half = kvHeads * count * hd;
    for (let l = 0; l < this.layers; l++) {
      for (let h = 0; h < kvHeads; h++) {
        const at = ((row * kvHeads + h) * cap + from) * hd;
        const to = 2 * l * half + h * count * hd;
        out.set(this.keys[l].subarray(at, at + count * hd), to);
        out.set(this.values[l].subarray(at, at + count * hd), to + half);
      }
    }
    return out;
  }

  /**
   * Appends blocks laid out as copyOut writes them (`tokens` tokens each) to the end of `row`, in
   * one pass per layer and head: a prefix-cache hit copies hundreds of blocks, and going through
   * append per block (its row lists, reserve and views) cost about as much again as the copying.
   */
  appendBlocks(blocks: readonly Float32Array[], tokens: number, row: number): void {
    if (!blocks.length) return;
    this.ensureRows(row + 1);
    this.reserve(this.lengths[row] + blocks.length * tokens);
    const { kvHeads, headDim: hd, cap } = this;
    const chunk = tokens * hd;
    const half = kvHeads * chunk;
    for (let l = 0; l < this.layers; l++) {
      const keys = this.keys[l];
      const values = this.values[l];
      for (let h = 0; h < kvHeads; h++) {
        let to = ((row * kvHeads + h) * cap + this.lengths[row]) * hd;
        const from = 2 * l * half + h * chunk;
        for (const b of blocks) {
          keys.set(b.subarray(from, from + chunk), to);
          values.set(b.subarray(from + half, from + half + chunk), to);
          to += chunk;
        }
      }
    }
    this.lengths[row] += blocks.length * tokens;
  }

  /** Token-major copy of a row's keys or values in layer l: [length, kv_heads · hd] (tests, tools). */
  read(l: number, which: "keys" | "values", row = 0): Float32Array {
    const src = (which === "keys" ? this.keys : this.values)[l];
    const { kvHeads, headDim: hd, cap } = this;
    const length = this.lengths[row];
    const out = new Float32Array(length * kvHeads * hd);
    for (let t = 0; t < length; t++) {
      for (let h = 0; h < kvHeads; h++) {
        const at = ((row * kvHeads + h) * cap + t) * hd;
        out.set(src.subarray(at, at + hd), (t * kvHeads + h) * hd);
      }
    }
    return out;
  }

  /** Drops a row's tokens from `length` on (cancellation, rejected speculative tokens). */
  truncate(length: number, row = 0): void {
    if (length < 0 || length > this.lengths[row]) throw new RangeError(`KvCache.truncate(${length}) outside [0, ${this.lengths[row]}]`);
    this.lengths[row] = length;
  }

  /**
   * Once every row is empty, gives back all rows but the first (an idle server holds one row). The
   * first keeps its capacity: the next long prompt — often the same conversation's next turn, its
   * prefix in the prefix cache — then neither reallocates nor faults in fresh pages (on bench-m a
   * 2000-token row is 69 MB, ~25 ms of page faults on a prefix hit that otherwise takes ~100 ms).
   */
  shrink(): void {
    if (this.lengths.some((n) => n > 0) || this.allocated === 1 || this.keys.length !== this.layers) return;
    this.allocated = 1;
    const size = this.kvHeads * this.cap * this.headDim;
    this.keys = this.keys.map((a) => a.slice(0, size));
    this.values = this.values.map((a) => a.slice(0, size));
  }

  /** Frees the storage; the cache holds nothing afterwards. */
  release(): void {
    this.lengths.fill(0);
    this.cap = 0;
    this.keys = [];
    this.values = [];
  }
}
