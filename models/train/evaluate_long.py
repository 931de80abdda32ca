"""Held-out evaluation of a train_long.py run: loss per token, perplexity per token and bits per
byte for every sub-model k over ALL non-overlapping 2048-token windows of the held-out split
(or the first --windows of them), plus greedy samples per k.  Writes <run>/eval.json.

  python3 models/train/evaluate_long.py --run models/train/runs/long-c4

Bits per byte = loss_per_token / ln 2 * tokens / bytes, with tokens / bytes measured on the same
windows (each window's text decoded back to UTF-8 bytes by the tokenizer's byte mapping).
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from colm import Attention, ChainLinear  # noqa: E402
from bpe import B2U  # noqa: E402
from train_long import load_ckpt_model, val_windows, evaluate  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = ["The kernel", "In the beginning", "A dictionary is"]


def token_bytes(tokenizer):
    tj = json.load(open(tokenizer))
    u2b = {u: b for b, u in B2U.items()}
    out = {}
    for s, i in tj["model"]["vocab"].items():
        out[i] = bytes(u2b[ch] for ch in s)
    for t in tj["added_tokens"]:
        out[t["id"]] = b""
    return out


@torch.no_grad()
def greedy(model, k, ids, n):
    toks = list(ids)
    for _ in range(n):
        logits = model(torch.tensor([toks[-2048:]]), ks=[k])[k][0, -1]
        toks.append(int(torch.argmax(logits)))
    return toks[len(ids):]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", default=os.path.join(HERE, "data-long"))
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "tokenizer-long.json"))
    ap.add_argument("--windows", type=int, default=None)
    ap.add_argument("--sample-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--long-prompt", type=int, default=1800, help="tokens of the long-prompt sample (0: none)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ChainLinear.blockwise = True
    Attention.q_block = 256
    model, ck = load_ckpt_model(os.path.join(a.run, "ckpt.pt"))
    model.eval()
    n = model.cfg.n_chains
    context = ck["args"]["context"]
    val = np.fromfile(os.path.join(a.data, "val.tok.u16"), dtype=np.uint16)
    ws = val_windows(val, context, a.windows)
    tb = token_bytes(a.tokenizer)
    nbytes = sum(len(tb[int(t)]) for w in ws for t in w[1:])
    losses, count = evaluate(model, ws)
    from bpe import Encoder
    enc = Encoder(a.tokenizer)
    samples = {}
    for p in PROMPTS:
        ids = [enc.eot] + enc.encode(p)
        samples[p] = {str(k): p + b"".join(tb[t] for t in greedy(model, k, ids, a.sample_tokens)).decode("utf-8", "replace")
                      for k in range(1, n + 1)}
    # a long prompt: the last --long-prompt tokens before a point in the held-out GNU Coding Standards
    long_sample = None
    if a.long_prompt:
        from fixtures_long import LONG_SOURCE
        from data_long import read_docs
        docs = read_docs(os.path.join(a.data, "val.txt"))
        rows = [l.split("\t") for l in open(os.path.join(a.data, "docs.tsv")).read().splitlines()[1:]]
        srcs = [r[0] for r in rows if r[2] == "val"]
        doc = next(d for s_, d in zip(srcs, docs) if s_ == LONG_SOURCE)
        ids = enc.encode(doc)
        start = max(0, min(len(ids) - a.long_prompt, 5000))  # ends in prose about error messages
        prompt = [enc.eot] + ids[start:start + a.long_prompt]
        text = b"".join(tb[t] for t in prompt).decode("utf-8", "replace")
        long_sample = {"prompt_tokens": len(prompt), "prompt_tail": text[-300:],
                       "continuations": {str(k): b"".join(tb[t] for t in greedy(model, k, prompt, a.sample_tokens))
                                         .decode("utf-8", "replace") for k in range(1, n + 1)}}
    res = {"step": ck["step"], "tokens_trained": ck.get("tokens"), "train_seconds": ck["elapsed"],
           "expand_from": ck.get("expand_from"), "n_old": ck.get("n_old", 0), "config": ck["config"],
           "val_windows": len(ws), "val_tokens": count, "val_bytes": nbytes, "bytes_per_token": nbytes / count,
           "val_loss": {str(k): losses[k] for k in losses},
           "val_ppl": {str(k): math.exp(losses[k]) for k in losses},
           "val_bits_per_byte": {str(k): losses[k] / math.log(2) * count / nbytes for k in losses},
           "samples": samples, "long_prompt_sample": long_sample}
    with open(os.path.join(a.run, "eval.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps({k: res[k] for k in ("step", "tokens_trained", "val_windows", "bytes_per_token", "val_loss",
                                          "val_ppl", "val_bits_per_byte")}, indent=1))
    for p, s in samples.items():
        for k, t in s.items():
            print(f"k={k}: {t!r}")
    if long_sample:
        print(f"long prompt ({long_sample['prompt_tokens']} tokens) ...{long_sample['prompt_tail'][-120:]!r}")
        for k, t in long_sample["continuations"].items():
            print(f"  k={k}: {t!r}")


if __name__ == "__main__":
    main()
