// Checks models/train/tokenizer-long.json in the server's tokenizer library (@huggingface/tokenizers):
// it loads; its ids on the held-out split equal the Python encoder's (bpe.py, val.tok.u16);
// decode(encode(x)) == x on the held-out documents and on random / awkward UTF-8 strings; and the
// held-out bytes per token.   node models/train/check_tokenizer.mjs [tokenizer.json] [data dir]
import { readFileSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";

const tokPath = process.argv[2] ?? "models/train/tokenizer-long.json";
const dataDir = process.argv[3] ?? "models/train/data-long";
const tok = new Tokenizer(JSON.parse(readFileSync(tokPath, "utf8")), {});
const enc = (s) => tok.encode(s, { add_special_tokens: false }).ids;
const dec = (ids) => (ids.length ? tok.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false }) : "");
const eot = tok.token_to_id("<|endoftext|>");
const raw = readFileSync(`${dataDir}/val.txt`);
const docs = raw.toString("utf8").split("\0").filter((d) => d.length > 0);
const py = new Uint16Array(readFileSync(`${dataDir}/val.tok.u16`).buffer.slice(0));
let bytes = 0, tokens = 0, pos = 0, mismatch = 0, roundtripFail = 0;
for (const d of docs) {
  const ids = enc(d);
  if (py[pos] !== eot) throw new Error(`expected <|endoftext|> at ${pos}`);
  pos++;
  for (let i = 0; i < ids.length; i++) if (py[pos + i] !== ids[i]) { mismatch++; break; }
  pos += ids.length;
  bytes += Buffer.byteLength(d, "utf8");
  tokens += ids.length;
  if (dec(ids) !== d) roundtripFail++;
}
if (pos !== py.length) mismatch++;
const awkward = ["", " ", "\n\n\n", "  leading and trailing  ", "tab\there", "naïve café 日本語 🤖 👩‍👩‍👧", "\u0000\u0001\u007f",
  "a".repeat(5000), "Ġ Ċ ĉ", "<|endoftext|>x", "\uFFFD", "e\u0301", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢"];
let rnd = 12345;
const next = () => (rnd = (rnd * 1103515245 + 12345) % 2147483648);
for (let n = 0; n < 300; n++) {
  let s = "";
  const len = next() % 40;
  for (let i = 0; i < len; i++) {
    const r = next() % 10;
    const cp = r < 5 ? 32 + (next() % 95) : r < 7 ? next() % 0x800 : r < 9 ? next() % 0xd800 : 0x10000 + (next() % 0x10000);
    s += String.fromCodePoint(cp);
  }
  awkward.push(s);
}
for (const s of awkward) {
  // the literal special-token string is the one input that is not round-tripped (it becomes the special id)
  if (s.includes("<|endoftext|>")) continue;
  if (dec(enc(s)) !== s) { roundtripFail++; console.log("round trip failed:", JSON.stringify(s)); }
}
console.log(JSON.stringify({ vocab: tok.get_vocab(true).size, eot, docs: docs.length, heldout_bytes: bytes, heldout_tokens: tokens,
  bytes_per_token: +(bytes / tokens).toFixed(4), python_node_id_mismatch_docs: mismatch, roundtrip_failures: roundtripFail,
  awkward_strings: awkward.length }));
if (mismatch || roundtripFail) process.exit(1);
