import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ByteTokenizer, HfTokenizer, IncrementalDecoder, TokenizerError, loadTokenizer, tokenText } from "../models/tokenizer.ts";

/** A hand-made byte-level BPE tokenizer.json: letters of "hello world", a few merges, two specials. */
function tinyBpeJson(): object {
  const vocab: Record<string, number> = { "<unk>": 0, "</s>": 1 };
  for (const piece of ["h", "e", "l", "o", "Ġ", "w", "r", "d", "he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld"]) {
    vocab[piece] = Object.keys(vocab).length;
  }
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [special(0, "<unk>"), special(1, "</s>")],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: null,
    decoder: byteLevel,
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges: ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"],
    },
  };
}

function withTempDir(body: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "colm-tok-"));
  try {
    body(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const SAMPLES = ["", "plain ASCII, with punctuation!", "emoji 😀👍🏽 and flags 🇳🇿", "中文字符 日本語 한국어", "mixed: é ß ∑ 𝄞 \n\t end"];

test("byte tokenizer: ids are the UTF-8 bytes and round-trip any text", () => {
  const t = new ByteTokenizer({ bos: 256, eos: 257 });
  assert.deepEqual(t.encode("A€"), [0x41, 0xe2, 0x82, 0xac]);
  for (const text of SAMPLES) {
    const ids = t.encode(text);
    assert.deepEqual(ids, Array.from(Buffer.from(text, "utf8")));
    assert.equal(t.decode(ids), text);
  }
  // Special ids (≥ 256) decode to nothing.
  assert.equal(t.decode([256, 0x68, 0x69, 257]), "hi");
});

test("byte tokenizer: tokenText shows ASCII as itself, lone high bytes as \\xNN, specials as empty", () => {
  const t = new ByteTokenizer({ bos: 256, eos: 257 });
  assert.equal(t.tokenText(0x61), "a");
  assert.equal(t.tokenText(0xf0), "\\xF0");
  assert.equal(t.tokenText(0x9f), "\\x9F");
  assert.equal(t.tokenText(257), "");
  assert.equal(tokenText(t, 0x20), " ");
});

test("incremental decoder releases a 4-byte emoji only when all its bytes are in", () => {
  const t = new ByteTokenizer({ bos: null, eos: null });
  const d = new IncrementalDecoder(t);
  const [b0, b1, b2, b3] = t.encode("😀");
  assert.equal(d.push(0x61), "a");
  assert.equal(d.push(b0), "");
  assert.equal(d.push(b1), "");
  assert.equal(d.push(b2), "");
  assert.equal(d.push(b3), "😀");
  assert.equal(d.push(0x62), "b");
  assert.equal(d.flush(), "");
});

test("incremental decoder: streaming any text byte by byte reproduces it exactly", () => {
  const t = new ByteTokenizer();
  for (const text of SAMPLES) {
    const d = new IncrementalDecoder(t);
    let out = "";
    for (const id of t.encode(text)) {
      const piece = d.push(id);
      assert.ok(!piece.includes("\uFFFD"), `a partial character leaked from ${JSON.stringify(text)}`);
      out += piece;
    }
    out += d.flush();
    assert.equal(out, text);
  }
});

test("incremental decoder: an unfinished character comes out at flush as U+FFFD; invalid bytes do not stall", () => {
  const t = new ByteTokenizer();
  const d = new IncrementalDecoder(t);
  assert.equal(d.push(0xe4), "");
  assert.equal(d.push(0xb8), "");
  assert.equal(d.flush(), "\uFFFD");
  // A stray continuation byte followed by ASCII: the replacement char and the letter come out together.
  const d2 = new IncrementalDecoder(t);
  assert.equal(d2.push(0x80), "");
  assert.equal(d2.push(0x41), "\uFFFDA");
  // A long run of invalid bytes is released after MAX_HELD_TOKENS instead of being held forever.
  const d3 = new IncrementalDecoder(t);
  let out = "";
  for (let i = 0; i < IncrementalDecoder.MAX_HELD_TOKENS; i++) out += d3.push(0xff);
  assert.ok(out.length > 0);
});

test("HfTokenizer: a hand-made BPE tokenizer.json loads and round-trips", () => {
  withTempDir((dir) => {
    writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(tinyBpeJson()));
    const t = loadTokenizer(dir, undefined, { bos: null, eos: 1 });
    assert.ok(t instanceof HfTokenizer);
    const ids = t.encode("hello world");
    assert.deepEqual(ids, [13, 18]); // "hello", "Ġworld"
    assert.equal(t.decode(ids), "hello world");
    assert.deepEqual(t.encode("held"), [10, 17]); // "he" "ld": merges stop where the vocabulary does
    assert.equal(t.decode(t.encode("hello wold")), "hello wold");
    // Special tokens are skipped when decoding; a lone token shows its text.
    assert.equal(t.decode([13, 1]), "hello");
    assert.equal(t.tokenText(18), " world");
    assert.equal((t as HfTokenizer).vocabSize, 19);
  });
});

test("HfTokenizer: the incremental decoder keeps the spaces that depend on neighbouring tokens", () => {
  withTempDir((dir) => {
    writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(tinyBpeJson()));
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ eos_token: "</s>" }));
    const t = HfTokenizer.fromDirectory(dir);
    const text = "hello world hello";
    const d = new IncrementalDecoder(t);
    let out = "";
    for (const id of t.encode(text)) out += d.push(id);
    out += d.flush();
    assert.equal(out, text);
  });
});

test("loadTokenizer: 'byte' gives the byte tokenizer; a folder without tokenizer.json names the missing file", () => {
  withTempDir((dir) => {
    assert.ok(loadTokenizer(dir, "byte", { bos: 256, eos: 257 }) instanceof ByteTokenizer);
    assert.throws(
      () => loadTokenizer(dir, undefined, { bos: null, eos: null }),
      (err: unknown) => err instanceof TokenizerError && err.reason === "missing_file" && err.message.includes(join(dir, "tokenizer.json")),
    );
    writeFileSync(join(dir, "tokenizer.json"), "{ not json");
    assert.throws(
      () => loadTokenizer(dir, undefined, { bos: null, eos: null }),
      (err: unknown) => err instanceof TokenizerError && err.reason === "invalid_file" && err.message.includes("tokenizer.json"),
    );
  });
});
