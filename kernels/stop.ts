// Stop strings matched across token boundaries. Decoded text arrives in arbitrary pieces ("Hel",
// "lo wo", "rld"), so a stop string can straddle pieces. The matcher releases text only once it
// can no longer be the start of a match, and holds back the rest.

export interface StopPush {
  /** Text safe to show now. On a match: the text before the match (the match is never shown). */
  emit: string;
  /** True once a stop string has matched; later pushes emit nothing. */
  stopped: boolean;
}

export class StopMatcher {
  private readonly stops: string[];
  /** Longest stop string, minus one: no held suffix is ever longer. */
  private readonly maxHold: number;
  private held = "";
  private done = false;

  /** Empty strings are ignored (they would match everywhere); an empty list passes text through. */
  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
    this.maxHold = this.stops.reduce((m, s) => Math.max(m, s.length - 1), 0);
  }

  get stopped(): boolean {
    return this.done;
  }

  push(text: string): StopPush {
    if (this.done) return { emit: "", stopped: true };
    if (this.stops.length === 0) return { emit: text, stopped: false };
    const buffer = this.held + text;

    // Earliest match wins; at the same position, the one listed first. Held text has never been
    // emitted, so a match starting inside it is still fully suppressible.
    let matchAt = -1;
    for (const stop of this.stops) {
      const at = buffer.indexOf(stop);
      if (at >= 0 && (matchAt < 0 || at < matchAt)) matchAt = at;
    }
    if (matchAt >= 0) {
      this.done = true;
      this.held = "";
      return { emit: buffer.slice(0, matchAt), stopped: true };
    }

    const hold = this.partialMatchLength(buffer);
    this.held = buffer.slice(buffer.length - hold);
    return { emit: buffer.slice(0, buffer.length - hold), stopped: false };
  }

  /** Held-back text at the end of the generation (nothing after a match). */
  flush(): string {
    const rest = this.done ? "" : this.held;
    this.held = "";
    return rest;
  }

  /** Length of the longest suffix of `buffer` that is a proper prefix of some stop string. */
  private partialMatchLength(buffer: string): number {
    for (let len = Math.min(buffer.length, this.maxHold); len > 0; len--) {
      const suffix = buffer.slice(buffer.length - len);
      if (this.stops.some((s) => s.startsWith(suffix))) return len;
    }
    return 0;
  }
}
