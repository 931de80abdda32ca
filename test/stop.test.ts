import { test } from "node:test";
import assert from "node:assert/strict";
import { StopMatcher } from "../kernels/stop.ts";

/** Feeds pieces and returns everything emitted, whether it stopped, and the flushed tail. */
function run(stops: string[], pieces: string[]): { emitted: string[]; stopped: boolean; tail: string } {
  const m = new StopMatcher(stops);
  const emitted: string[] = [];
  let stopped = false;
  for (const p of pieces) {
    const r = m.push(p);
    emitted.push(r.emit);
    if (r.stopped) {
      stopped = true;
      break;
    }
  }
  return { emitted, stopped, tail: m.flush() };
}

test("a stop string split across pieces is found; text before it is emitted, the match is not", () => {
  const r = run(["lo w"], ["Hel", "lo wo", "rld"]);
  // "Hel": the "l" could start "lo w" → held. "lo wo": "llo wo" matches at 1 → "l" goes out.
  assert.deepEqual(r.emitted, ["He", "l"]);
  assert.equal(r.emitted.join(""), "Hel");
  assert.equal(r.stopped, true);
  assert.equal(r.tail, "");
});

test("held text is released once it can no longer start a match", () => {
  const m = new StopMatcher(["abc"]);
  assert.deepEqual(m.push("xa"), { emit: "x", stopped: false });
  assert.deepEqual(m.push("b"), { emit: "", stopped: false });
  assert.deepEqual(m.push("d"), { emit: "abd", stopped: false });
  assert.deepEqual(m.push("ab"), { emit: "", stopped: false });
  assert.equal(m.flush(), "ab");
  assert.equal(m.flush(), "");
});

test("overlapping prefixes: a failed partial match can still contain the start of a real one", () => {
  // "aab": after "aa" the holdback must keep the second "a", which starts the match.
  const r = run(["ab"], ["a", "a", "b"]);
  assert.deepEqual(r.emitted, ["", "a", ""]);
  assert.equal(r.stopped, true);
  // Self-overlapping stop "abab": "ababab" contains it at 0.
  const r2 = run(["abab"], ["ab", "a", "bab"]);
  assert.equal(r2.emitted.join(""), "");
  assert.equal(r2.stopped, true);
  // "aaab" with stop "aab": the first "a" can go once "aaa" is seen; the rest is the match.
  const r3 = run(["aab"], ["a", "a", "a", "b", "c"]);
  assert.deepEqual(r3.emitted, ["", "", "a", ""]);
  assert.equal(r3.stopped, true);
});

test("several stops: the earliest occurrence wins, whichever is listed first", () => {
  const r = run(["world", "o w"], ["Hello wor", "ld"]);
  // "o w" occurs at index 4, before "world" at 6.
  assert.equal(r.emitted.join(""), "Hell");
  assert.equal(r.stopped, true);
  const r2 = run(["\n\n", "END"], ["one END two\n\n"]);
  assert.deepEqual(r2.emitted, ["one "]);
  // The longest possible prefix across all stops is held back.
  const m = new StopMatcher(["xyz", "yq"]);
  assert.deepEqual(m.push("axy"), { emit: "a", stopped: false });
  assert.deepEqual(m.push("q"), { emit: "x", stopped: true });
});

test("a match inside one piece, and nothing after a stop", () => {
  const m = new StopMatcher(["STOP"]);
  assert.deepEqual(m.push("abcSTOPdef"), { emit: "abc", stopped: true });
  assert.deepEqual(m.push("more"), { emit: "", stopped: true });
  assert.equal(m.flush(), "");
  assert.equal(m.stopped, true);
});

test("flush returns held-back text when the generation ends without a match", () => {
  const r = run(["</s>"], ["Hi", " there<", "/"]);
  assert.deepEqual(r.emitted, ["Hi", " there", ""]);
  assert.equal(r.stopped, false);
  assert.equal(r.tail, "</");
});

test("an empty stop list (or empty stop strings) passes text straight through", () => {
  for (const stops of [[], [""]]) {
    const m = new StopMatcher(stops);
    assert.deepEqual(m.push("Hel"), { emit: "Hel", stopped: false });
    assert.deepEqual(m.push(""), { emit: "", stopped: false });
    assert.equal(m.flush(), "");
  }
});

test("multi-code-unit characters are never split", () => {
  const r = run(["😀!"], ["a😀", "b😀", "!"]);
  assert.deepEqual(r.emitted, ["a", "😀b", ""]);
  assert.equal(r.stopped, true);
});
