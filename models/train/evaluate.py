"""Final evaluation of a run: validation loss over the WHOLE held-out split for every sub-model,
perplexity per byte, bits per byte, and greedy samples.  Writes <run>/eval.json.

  /usr/bin/python3 models/train/evaluate.py --run models/train/runs/colm
"""
import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from colm import param_count, submodel  # noqa: E402
from export import load_checkpoint  # noqa: E402
from fixtures import greedy  # noqa: E402
import data as kjv  # noqa: E402
from train import val_windows, evaluate  # noqa: E402

PROMPT = "And God said"
SAMPLE_BYTES = 200


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, ck = load_checkpoint(a.run)
    cfg = model.cfg
    train, val = kjv.load(a.data)
    context = ck["args"]["context"]
    windows = val_windows(val, context)
    losses, count = evaluate(model, windows)
    n = cfg.n_chains
    samples = {}
    for k in range(1, n + 1):
        sub = submodel(model, k)
        toks = greedy(sub, k, list(PROMPT.encode()), SAMPLE_BYTES)
        samples[str(k)] = PROMPT + bytes(toks).decode("utf-8", "replace")
    log = [json.loads(l) for l in open(os.path.join(a.run, "log.jsonl"))]
    res = {
        "preset": ck["preset"], "step": ck["step"], "train_seconds": ck["elapsed"],
        "args": ck["args"], "config": ck["config"],
        "params_nonzero": {str(k): param_count(cfg, k) for k in range(1, n + 1)},
        "params_stored": sum(p.numel() for p in model.parameters()),
        "val_tokens": count, "val_windows": len(windows), "train_bytes": int(len(train)), "val_bytes": int(len(val)),
        "val_loss": {str(k + 1): losses[k] for k in range(n)},
        "val_ppl": {str(k + 1): math.exp(losses[k]) for k in range(n)},
        "val_bpb": {str(k + 1): losses[k] / math.log(2) for k in range(n)},
        "final_train_loss_avg50": [sum(r["losses"][k] for r in log[-50:]) / len(log[-50:]) for k in range(n)],
        "prompt": PROMPT, "samples": samples,
    }
    with open(os.path.join(a.run, "eval.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps({k: res[k] for k in ("preset", "step", "val_loss", "val_ppl")}, indent=1))
    for k, s in samples.items():
        print(f"k={k}: {s!r}")


if __name__ == "__main__":
    main()
