// Seeded pseudo-random numbers for sampling. Requests that pass a seed must get the same tokens
// every time, so the generator is a small, fully specified one (xoshiro128**, state expanded from
// the seed with splitmix32) rather than Math.random, whose algorithm and state are opaque.
import { randomBytes } from "node:crypto";

/** A source of uniform numbers in [0, 1). */
export interface Rng {
  next(): number;
}

const TWO_POW_32 = 4294967296;

/** splitmix32: spreads any 32-bit input over the state words, so nearby seeds give unrelated streams. */
function splitmix32(state: { x: number }): number {
  state.x = (state.x + 0x9e3779b9) | 0;
  let z = state.x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/**
 * xoshiro128** with 128 bits of state. `seed` may be any finite number (OpenAI seeds are 64-bit
 * integers): its integer part's low and high 32-bit halves both feed the state, and the sign too.
 * Without a seed the state comes from crypto randomness.
 */
export class SeededRng implements Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed?: number) {
    if (seed === undefined) {
      const bytes = randomBytes(16);
      this.s0 = bytes.readUInt32LE(0);
      this.s1 = bytes.readUInt32LE(4);
      this.s2 = bytes.readUInt32LE(8);
      this.s3 = bytes.readUInt32LE(12);
    } else {
      if (!Number.isFinite(seed)) throw new RangeError(`seed must be a finite number, got ${seed}`);
      const whole = Math.trunc(Math.abs(seed));
      const low = whole % TWO_POW_32;
      const high = Math.floor(whole / TWO_POW_32) % TWO_POW_32;
      const mix = { x: (low ^ Math.imul(high, 0x27d4eb2d) ^ (seed < 0 ? 0x5bd1e995 : 0)) | 0 };
      this.s0 = splitmix32(mix);
      this.s1 = splitmix32(mix);
      this.s2 = splitmix32(mix);
      this.s3 = splitmix32(mix);
    }
    // The all-zero state is the one fixed point of xoshiro; splitmix never yields it in practice,
    // but crypto bytes could.
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** Next raw 32-bit output (unsigned). */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 bits of resolution (two 32-bit draws). */
  next(): number {
    const high = this.nextUint32() >>> 5; // 27 bits
    const low = this.nextUint32() >>> 6; // 26 bits
    return (high * 67108864 + low) / 9007199254740992;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
