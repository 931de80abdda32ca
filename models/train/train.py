"""Train a CoLM-Air model (or the dense one-chain baseline) on the KJV Bible, byte-level, on CPU.

  /usr/bin/python3 models/train/train.py --preset colm  --run /tmp/colm-train/colm
  /usr/bin/python3 models/train/train.py --preset dense --run /tmp/colm-train/dense

Deterministic given the seed and thread count (fixed torch / numpy seeds, batches drawn from a
seeded numpy generator that is checkpointed).  Checkpoints (`ckpt.pt`) are written to the run dir
every --ckpt-every steps and at the end; a rerun with the same --run resumes from the checkpoint.
--minutes is a wall-clock safety cap: training stops (and checkpoints) if it is reached before
--steps; the run's log.jsonl records how far it got.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from colm import ColmConfig, ColmModel, param_count  # noqa: E402
import data as kjv  # noqa: E402

PRESETS = {
    # 4 chains of 64 dims (2 heads of 32 each), shared 2 kv heads from chain 1
    "colm": dict(chain_heads=[2, 2, 2, 2], ffn_chain_dims=[128, 128, 128, 128]),
    # dense baseline: same full size, one chain
    "dense": dict(chain_heads=[8], ffn_chain_dims=[512]),
}
COMMON = dict(vocab_size=256, n_layers=4, head_dim=32, kv_heads=2, rope_theta=10000.0,
              norm_eps=1e-5, tie_embeddings=True)


def make_config(preset, context):
    return ColmConfig(max_position=context, **COMMON, **PRESETS[preset])


def get_batch(arr, rng, batch, context):
    ix = rng.integers(0, len(arr) - context - 1, size=batch)
    x = np.stack([arr[i:i + context] for i in ix]).astype(np.int64)
    y = np.stack([arr[i + 1:i + 1 + context] for i in ix]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def val_windows(val, context):
    """Non-overlapping windows of context+1 bytes covering the validation split (fixed)."""
    n = (len(val) - 1) // context
    return [val[i * context:i * context + context + 1].astype(np.int64) for i in range(n)]


@torch.no_grad()
def evaluate(model, windows, batch=16, limit=None):
    """Mean per-byte cross-entropy (nats) of every sub-model over the given windows."""
    model.eval()
    ws = windows if limit is None else windows[:limit]
    n = model.cfg.n_chains
    tot = [0.0] * n
    count = 0
    for i in range(0, len(ws), batch):
        w = torch.from_numpy(np.stack(ws[i:i + batch]))
        x, y = w[:, :-1], w[:, 1:]
        _, losses = model.loss(x, y)
        for k in range(n):
            tot[k] += losses[k].item() * y.numel()
        count += y.numel()
    model.train()
    return [t / count for t in tot], count


def lr_at(step, args):
    """Warmup-stable-decay: linear warm-up, constant peak, cosine decay to min_lr over the
    last decay_frac of the steps."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    decay_start = int(args.steps * (1 - args.decay_frac))
    if step < decay_start:
        return args.lr
    p = min(1.0, (step - decay_start) / max(1, args.steps - decay_start))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * p))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=sorted(PRESETS), default="colm")
    ap.add_argument("--run", required=True, help="run dir (checkpoint, log)")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--minutes", type=float, default=1e9, help="wall-clock cap for this invocation")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--decay-frac", type=float, default=0.4)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--ckpt-every", type=int, default=50)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.run, exist_ok=True)
    train, val = kjv.load(args.data)
    windows = val_windows(val, args.context)

    cfg = make_config(args.preset, args.context)
    model = ColmModel(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    rng = np.random.default_rng(args.seed)
    step, elapsed = 0, 0.0
    ckpt_path = os.path.join(args.run, "ckpt.pt")
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        rng.bit_generator.state = ck["rng"]
        step, elapsed = ck["step"], ck["elapsed"]
        print(f"resumed at step {step}", flush=True)
    with open(os.path.join(args.run, "args.json"), "w") as f:
        json.dump(vars(args), f, indent=1)
    log = open(os.path.join(args.run, "log.jsonl"), "a")
    print(f"preset {args.preset}: D={cfg.dim} chains={cfg.chain_dims} params(non-zero)="
          f"{[param_count(cfg, k) for k in range(1, cfg.n_chains + 1)]} train={len(train)} val={len(val)} bytes",
          flush=True)

    def save():
        tmp = ckpt_path + ".tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                    "step": step, "elapsed": elapsed, "config": vars(cfg), "preset": args.preset,
                    "args": vars(args)}, tmp)
        os.replace(tmp, ckpt_path)

    t_start = time.time()
    t0 = time.time()
    while step < args.steps:
        if time.time() - t_start > args.minutes * 60:
            print(f"wall-clock cap reached at step {step}", flush=True)
            break
        lr = lr_at(step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch(train, rng, args.batch, args.context)
        loss, losses = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        dt = time.time() - t0
        t0 = time.time()
        elapsed += dt
        rec = {"step": step, "lr": lr, "loss": loss.item(), "losses": [l.item() for l in losses],
               "gnorm": gn.item(), "dt": dt, "elapsed": elapsed}
        if step % args.eval_every == 0 or step == args.steps:
            vl, _ = evaluate(model, windows, limit=args.eval_windows)
            rec["val"] = vl
            t0 = time.time()  # eval time not counted in the step time
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if step % 10 == 0 or "val" in rec:
            print(f"step {step} lr {lr:.2e} loss {loss.item():.4f} "
                  f"[{' '.join(f'{l.item():.3f}' for l in losses)}] {dt:.2f}s/step elapsed {elapsed/60:.1f}m"
                  + (f" val {' '.join(f'{v:.3f}' for v in rec['val'])}" if "val" in rec else ""), flush=True)
        if step % args.ckpt_every == 0:
            save()
    save()
    print(f"done: step {step}, train time {elapsed/60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
