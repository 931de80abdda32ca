"""Evaluation-only text: the World English Bible (public domain), from Debian's sword-text-web
module, which is NEVER part of the training corpus.  Prints the tokenizer's bytes per token on it
and, with --run, the held-out loss per k of a train_long.py run on its 2048-token windows.

  apt-get install -y --no-install-recommends sword-text-web libsword-utils
  python3 models/train/web_eval.py [--run models/train/runs/long-c4 --windows 32]

Text: `mod2imp engWEB2015eb` (OSIS markup), notes removed with their content, tags removed, one
verse per line, book/chapter headers and the front matter dropped (the ecumenical edition: with the
deuterocanonical books and the glossary).
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bpe import Encoder  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def web_text():
    raw = subprocess.run(["mod2imp", "engWEB2015eb"], check=True, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL).stdout.decode("utf-8")
    verses = []
    for block in raw.split("$$$")[1:]:
        head, _, body = block.partition("\n")
        m = re.match(r"(.+) (\d+):(\d+)$", head.strip())
        if not m or m.group(3) == "0":
            continue  # module / testament / book / chapter headings and introductions
        body = re.sub(r"<note\b.*?</note>", " ", body, flags=re.S)   # a note sometimes stands for the space
        body = re.sub(r"<[^>]+>", "", body)
        body = re.sub(r"\s+", " ", body).strip()
        body = re.sub(r" ([,.;:!?’”)])", r"\1", body)
        if body:
            verses.append(body)
    return "\n".join(verses) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "tokenizer-long.json"))
    ap.add_argument("--run", default=None)
    ap.add_argument("--windows", type=int, default=32)
    a = ap.parse_args()
    text = web_text()
    enc = Encoder(a.tokenizer)
    ids = enc.encode(text)
    nb = len(text.encode("utf-8"))
    res = {"web_verses": text.count("\n"), "web_bytes": nb, "web_tokens": len(ids), "bytes_per_token": nb / len(ids)}
    if a.run:
        import torch
        from colm import Attention, ChainLinear
        from train_long import load_ckpt_model, val_windows, evaluate
        torch.set_num_threads(1)
        ChainLinear.blockwise = True
        Attention.q_block = 256
        model, ck = load_ckpt_model(os.path.join(a.run, "ckpt.pt"))
        arr = np.array([enc.eot] + ids, dtype=np.uint16)
        ws = val_windows(arr, ck["args"]["context"], a.windows)
        losses, count = evaluate(model, ws)
        res.update({"run": a.run, "step": ck["step"], "windows": len(ws), "tokens": count,
                    "loss": {str(k): v for k, v in losses.items()},
                    "ppl": {str(k): math.exp(v) for k, v in losses.items()}})
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
