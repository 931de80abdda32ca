"""Pack a training checkpoint small enough to commit, and unpack it back into a resumable run.

  python3 models/train/ckpt_portable.py pack     models/train/runs/long-c2/ckpt.pt models/train/ckpt/long-c2.pt
  python3 models/train/ckpt_portable.py finished models/train/runs/long-c2/ckpt.pt models/train/ckpt/long-c2.pt
  python3 models/train/ckpt_portable.py unpack   models/train/ckpt/long-c2.pt models/train/runs/long-c2/ckpt.pt

finished drops the optimiser state of a run that has reached its last step: what is left (weights,
config, step, data generator state, arguments) seeds --expand-from and lets run_long.sh see the stage
as done, at a third of the size.

pack keeps the model weights, the step, the data generator state and the run arguments exactly,
and stores the AdamW moments (exp_avg, exp_avg_sq) as bfloat16 instead of float32 (a 3-digit
rounding of the optimiser state only; the weights are bit-exact).  unpack casts them back to
float32.  A run resumed from an unpacked checkpoint therefore continues with the same weights
and batches, and an optimiser state that differs by bfloat16 rounding.
"""
import os
import sys

import torch


def save(ck, dst):
    """Writes the checkpoint atomically (a .tmp beside it, then renamed)."""
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save(ck, dst + ".tmp")
    os.replace(dst + ".tmp", dst)


def pack(src, dst):
    ck = torch.load(src)
    for st in ck["opt"]["state"].values():
        for k in ("exp_avg", "exp_avg_sq"):
            st[k] = st[k].to(torch.bfloat16)
    ck["packed"] = "adam moments bfloat16"
    save(ck, dst)
    print(f"packed {src} ({os.path.getsize(src)} bytes) -> {dst} ({os.path.getsize(dst)} bytes), step {ck['step']}")


def finished(src, dst):
    ck = torch.load(src)
    del ck["opt"]
    ck["packed"] = "weights only (finished run)"
    save(ck, dst)
    print(f"kept the weights of {src} -> {dst} ({os.path.getsize(dst)} bytes), step {ck['step']}")


def unpack(src, dst):
    ck = torch.load(src)
    for st in ck.get("opt", {"state": {}})["state"].values():
        for k in ("exp_avg", "exp_avg_sq"):
            st[k] = st[k].to(torch.float32)
    ck.pop("packed", None)
    save(ck, dst)
    print(f"unpacked {src} -> {dst}, step {ck['step']}")


if __name__ == "__main__":
    cmd, src, dst = sys.argv[1:4]
    {"pack": pack, "finished": finished, "unpack": unpack}[cmd](src, dst)
