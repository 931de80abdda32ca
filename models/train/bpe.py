"""A small byte-level BPE trainer and encoder that writes a Hugging Face `tokenizer.json`.

  python3 models/train/bpe.py train  --data models/train/data-long --vocab 8192 --out models/train/tokenizer-long.json
  python3 models/train/bpe.py encode --data models/train/data-long --tokenizer models/train/tokenizer-long.json
  python3 models/train/bpe.py stats  --data models/train/data-long --tokenizer models/train/tokenizer-long.json

The scheme is GPT-2's: the text is split by the GPT-2 pre-tokenisation regex (HF's ByteLevel
pre-tokenizer with use_regex), each piece's UTF-8 bytes are mapped to printable characters
(bytes_to_unicode), and merges are learned inside pieces only.  All 256 bytes are in the
vocabulary, so every UTF-8 string encodes, and the ByteLevel decoder gives decode(encode(x)) == x.
Ids: 0..255 the bytes (in bytes_to_unicode order), then the merges in order, then the special
token <|endoftext|> as the last id (vocab - 1).  Documents are separated by <|endoftext|>.

Training counts pieces over the training split only (a seeded sample of its documents when
--sample-mb is set), then merges greedily the most frequent adjacent pair (ties: the pair that
sorts first by id), updating counts incrementally.
"""
import argparse
import heapq
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict

import numpy as np
import regex

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data_long import read_docs  # noqa: E402

PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
EOT = "<|endoftext|>"


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


B2U = bytes_to_unicode()


def pieces(text):
    return PAT.findall(text)


def train(docs, vocab_size, min_count=2, log_every=500):
    t0 = time.time()
    counts = Counter()
    for d in docs:
        counts.update(pieces(d))
    print(f"pieces counted: {len(counts)} distinct in {time.time()-t0:.0f}s", file=sys.stderr, flush=True)
    byte_syms = [B2U[b] for b in range(256)]          # id order = byte value
    vocab = {s: i for i, s in enumerate(byte_syms)}
    syms = list(byte_syms)                             # id -> string
    words, freqs = [], []
    for w, c in counts.items():
        if c < min_count:
            continue
        words.append([vocab[B2U[b]] for b in w.encode("utf-8")])
        freqs.append(c)
    pair_count = defaultdict(int)
    where = defaultdict(set)
    for wi, w in enumerate(words):
        f = freqs[wi]
        for a, b in zip(w, w[1:]):
            pair_count[(a, b)] += f
            where[(a, b)].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges = []
    n_merges = vocab_size - 256 - 1
    while len(merges) < n_merges and heap:
        c, p = heapq.heappop(heap)
        if pair_count.get(p, 0) != -c or -c <= 0:
            continue
        a, b = p
        new = len(syms)
        syms.append(syms[a] + syms[b])
        vocab[syms[new]] = new
        merges.append((a, b))
        touched = {}
        for wi in list(where[p]):
            w = words[wi]
            f = freqs[wi]
            # remove old pairs
            for q in zip(w, w[1:]):
                pair_count[q] -= f
                touched[q] = True
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for q in zip(w, w[1:]):
                where[q].discard(wi)
            for q in zip(out, out[1:]):
                pair_count[q] += f
                where[q].add(wi)
                touched[q] = True
        del pair_count[p]
        where.pop(p, None)
        for q in touched:
            c2 = pair_count.get(q, 0)
            if c2 > 0:
                heapq.heappush(heap, (-c2, q))
        if len(merges) % log_every == 0:
            print(f"  {len(merges)} merges, last {syms[new]!r} x{-c}, {time.time()-t0:.0f}s", file=sys.stderr, flush=True)
    return syms, merges


def tokenizer_json(syms, merges):
    vocab = {s: i for i, s in enumerate(syms)}
    eot_id = len(syms)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": eot_id, "content": EOT, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [f"{syms[a]} {syms[b]}" for a, b in merges]},
    }


class Encoder:
    """Encodes exactly as HF's ByteLevel + BPE (checked against @huggingface/tokenizers)."""

    def __init__(self, path):
        with open(path) as f:
            tj = json.load(f)
        self.vocab = tj["model"]["vocab"]
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(tj["model"]["merges"])}
        self.eot = tj["added_tokens"][0]["id"]
        self.vocab_size = max(max(self.vocab.values()), self.eot) + 1
        self.cache = {}

    def bpe(self, piece):
        r = self.cache.get(piece)
        if r is not None:
            return r
        w = [B2U[b] for b in piece.encode("utf-8")]
        while len(w) > 1:
            best, bi = None, -1
            for i in range(len(w) - 1):
                rk = self.ranks.get((w[i], w[i + 1]))
                if rk is not None and (best is None or rk < best):
                    best, bi = rk, i
            if best is None:
                break
            a, b = w[bi], w[bi + 1]
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            w = out
        r = [self.vocab[s] for s in w]
        if len(self.cache) < 2_000_000:
            self.cache[piece] = r
        return r

    def encode(self, text):
        ids = []
        for p in pieces(text):
            ids.extend(self.bpe(p))
        return ids

    def encode_docs(self, docs):
        """Documents joined by <|endoftext|> (one before every document)."""
        out = []
        for d in docs:
            out.append(self.eot)
            out.extend(self.encode(d))
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["train", "encode", "stats"])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data-long"))
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--sample-mb", type=float, default=40.0)
    ap.add_argument("--min-count", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--tokenizer", "--out", dest="tokenizer",
                    default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizer-long.json"))
    a = ap.parse_args()
    if a.cmd == "train":
        docs = read_docs(os.path.join(a.data, "train.txt"))
        rng = random.Random(a.seed)
        rng.shuffle(docs)
        sample, n = [], 0
        for d in docs:
            if n >= a.sample_mb * 1e6:
                break
            sample.append(d)
            n += len(d.encode("utf-8"))
        print(f"training BPE on {len(sample)} docs, {n/1e6:.1f} MB", file=sys.stderr, flush=True)
        syms, merges = train(sample, a.vocab, a.min_count)
        with open(a.tokenizer, "w") as f:
            json.dump(tokenizer_json(syms, merges), f, ensure_ascii=False)
        print(f"wrote {a.tokenizer}: vocab {len(syms)+1}", file=sys.stderr)
    elif a.cmd == "encode":
        enc = Encoder(a.tokenizer)
        assert enc.vocab_size <= 65536
        for split in ("val", "train"):
            t0 = time.time()
            docs = read_docs(os.path.join(a.data, f"{split}.txt"))
            ids = np.array(enc.encode_docs(docs), dtype=np.uint16)
            ids.tofile(os.path.join(a.data, f"{split}.tok.u16"))
            nbytes = sum(len(d.encode("utf-8")) for d in docs)
            print(f"{split}: {len(docs)} docs, {nbytes} bytes -> {len(ids)} tokens "
                  f"({nbytes/(len(ids)-len(docs)):.3f} bytes/token, {time.time()-t0:.0f}s)", flush=True)
    else:
        enc = Encoder(a.tokenizer)
        docs = read_docs(os.path.join(a.data, "val.txt"))
        nb = sum(len(d.encode("utf-8")) for d in docs)
        nt = sum(len(enc.encode(d)) for d in docs)
        print(json.dumps({"val_bytes": nb, "val_tokens": nt, "bytes_per_token": nb / nt}))


if __name__ == "__main__":
    main()
