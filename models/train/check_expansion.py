"""Chain-expansion identity, on the exported model folders (as colm-serve reads them):
sub-models 1..n_old of the grown model give bit-identical logits to the model it grew from,
and every tensor entry of the old chains is unchanged.

  python3 models/train/check_expansion.py --old models/colm-long-c2 --new models/colm-long

Compares (a) the stored tensors: the old model's tensors must equal the leading blocks of the new
model's (rows/columns of old chains), bit for bit; (b) PyTorch float32 logits of sub-model k (k <= n_old) built standalone from
each folder by slicing the weights to chains 1..k (colm.submodel, as colm-serve runs sub-model k),
on a long held-out token sequence: exact equality.  (c) for information: the new model run whole
(one dense masked matmul per chain linear, ks <= n_old) differs from the old one by float
summation order only (the zero blocks lengthen the dot products); the blockwise path
(ChainLinear.blockwise, used in training) is bit-identical.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export import load_exported  # noqa: E402
from colm import ChainLinear, submodel  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--tokens", type=int, default=1600)
    ap.add_argument("--data", default=os.path.join(HERE, "data-long"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    old, ocfg, ot, _ = load_exported(a.old)
    new, ncfg, nt, _ = load_exported(a.new)
    n_old = old.cfg.n_chains
    assert n_old < new.cfg.n_chains
    bad = 0
    for name, t in ot.items():
        sl = tuple(slice(0, s) for s in t.shape)
        if not np.array_equal(nt[name][sl], t):
            bad += 1
            print("tensor differs:", name)
    val = np.fromfile(os.path.join(a.data, "val.tok.u16"), dtype=np.uint16)
    x = torch.from_numpy(val[:a.tokens].astype(np.int64))[None]
    ks = list(range(1, n_old + 1))
    with torch.no_grad():
        for k in ks:
            lo = submodel(old, k)(x, ks=[k])[k]
            ln = submodel(new, k)(x, ks=[k])[k]
            same = torch.equal(lo, ln)
            print(f"sub-model k={k} (sliced, standalone): bit-identical logits over {a.tokens} positions: {same}"
                  + ("" if same else f" (max diff {(lo - ln).abs().max().item()})"))
            bad += 0 if same else 1
        for blockwise in (False, True):
            ChainLinear.blockwise = blockwise
            lo, ln = old(x, ks=ks), new(x, ks=ks)
            print(f"whole model, {'blockwise' if blockwise else 'masked dense'} chain linears: max |diff| per k "
                  + " ".join(f"{k}:{(lo[k] - ln[k]).abs().max().item():.2e}" for k in ks)
                  + f"; bit-identical: {all(torch.equal(lo[k], ln[k]) for k in ks)}")
        ChainLinear.blockwise = False
    print("OK" if bad == 0 else f"FAILED ({bad})")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
