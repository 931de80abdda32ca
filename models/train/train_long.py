"""Train the long-context CoLM-Air model (BPE tokens, 2048-token windows) on CPU, one thread,
resumable, with chain expansion (spec section 6, "Chain expansion").

  # stage 1: two chains from scratch
  python3 models/train/train_long.py --preset colm2 --run models/train/runs/long-c2 --steps 700
  # stage 2: grow by two chains, old chains frozen, loss over k = 3, 4 only
  python3 models/train/train_long.py --expand-from models/train/runs/long-c2/ckpt.pt --add-chains 2 \\
      --run models/train/runs/long-c4 --steps 400
  # comparisons: the same 4-chain shape trained jointly from scratch, and a dense one-chain baseline
  python3 models/train/train_long.py --preset colm4 --run models/train/runs/long-joint4 --steps ...
  python3 models/train/train_long.py --preset dense --run models/train/runs/long-dense --steps ...
  # continue any of them after an interruption (same command plus --resume)

Data: models/train/data-long/{train,val}.tok.u16 (data_long.py, then bpe.py encode).  A step is
--batch windows of --context+1 tokens drawn at random offsets (seeded numpy generator, saved in
the checkpoint).  The checkpoint (ckpt.pt) is written every --ckpt-every steps, at the end, and on
SIGTERM / SIGINT; --resume continues from it (the learning-rate schedule is recomputed from the
step and the --steps / --decay-frac given now, so a run can be lengthened on resume).

Expansion: the new model's tensors hold the old ones in their leading blocks; every parameter
entry that belongs to an old chain (rows of old output chains of every chain linear, the old
columns of the embedding, the old norm gains, k_proj and v_proj) is frozen: its gradient is zeroed
before the optimiser step and its value is restored after it (AdamW's decoupled weight decay
would otherwise shrink it).  So sub-models 1..n_old stay bit-identical to the checkpoint grown
from; train_long.py checks that on a batch at start and at the end.
"""
import argparse
import json
import math
import os
import shutil
import signal
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import colm  # noqa: E402
from colm import Attention, ColmConfig, ColmModel, ChainLinear, param_count  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
COMMON = dict(vocab_size=12288, n_layers=4, head_dim=128, kv_heads=1, rope_theta=10000.0, norm_eps=1e-5,
              tie_embeddings=True)
PRESETS = {
    # one head of 128 per chain, chain width 128, SwiGLU 256 per chain
    "colm2": dict(chain_heads=[1, 1], ffn_chain_dims=[256, 256]),
    "colm4": dict(chain_heads=[1, 1, 1, 1], ffn_chain_dims=[256, 256, 256, 256]),
    # dense baseline of the full width: one chain of 4 heads (one kv head, as the chain models)
    "dense": dict(chain_heads=[4], ffn_chain_dims=[1024]),
    # test fixtures only (test/fixtures/expansion/make.sh): byte tokens (V=256), two chains of two
    # 8-dim heads sharing one KV head, 2 layers; a few hundred KB exported
    "tiny2": dict(vocab_size=256, n_layers=2, head_dim=8, chain_heads=[2, 2], ffn_chain_dims=[32, 32]),
}


def make_config(preset, context):
    return ColmConfig(**{**COMMON, "max_position": context, **PRESETS[preset]})


def expand_config(old: ColmConfig, m, heads=None, ffn=None):
    d = dict(vars(old))
    d["chain_heads"] = list(old.chain_heads) + [heads or old.chain_heads[-1]] * m
    d["ffn_chain_dims"] = list(old.ffn_chain_dims) + [ffn or old.ffn_chain_dims[-1]] * m
    return ColmConfig(**d)


def trainable_masks(model: ColmModel, n_old):
    """name -> float mask (1 = trainable) for an expanded model whose chains 1..n_old are old."""
    cfg = model.cfg
    d_old = cfg.prefix_dim(n_old)
    f_old = sum(cfg.ffn_chain_dims[:n_old])
    masks = {}
    for name, p in model.named_parameters():
        m = torch.zeros_like(p)
        if name == "embed.weight" or name == "lm_head.weight":
            m[:, d_old:] = 1
        elif name.endswith("norm.weight"):
            m[d_old:] = 1
        elif name.endswith(("k_proj.weight", "v_proj.weight")):
            pass
        elif name.endswith(("q_proj.weight", "o_proj.weight", "down_proj.weight")):
            m[d_old:, :] = 1
        elif name.endswith(("gate_proj.weight", "up_proj.weight")):
            m[f_old:, :] = 1
        else:
            raise KeyError(name)
        masks[name] = m
    return masks


def grow(old_model: ColmModel, m, heads=None, ffn=None, seed=0):
    """A model with m more chains whose leading blocks are the old model's tensors."""
    torch.manual_seed(seed)
    cfg = expand_config(old_model.cfg, m, heads, ffn)
    new = ColmModel(cfg)
    old_sd = dict(old_model.named_parameters())
    with torch.no_grad():
        for name, p in new.named_parameters():
            o = old_sd[name]
            sl = tuple(slice(0, s) for s in o.shape)
            p[sl].copy_(o)
    return new


def get_batch(arr, rng, batch, context):
    ix = rng.integers(0, len(arr) - context - 1, size=batch)
    w = np.stack([arr[i:i + context + 1] for i in ix]).astype(np.int64)
    w = torch.from_numpy(w)
    return w[:, :-1], w[:, 1:]


def val_windows(val, context, n=None):
    k = (len(val) - 1) // context
    ws = [val[i * context:i * context + context + 1].astype(np.int64) for i in range(k)]
    if n is not None and n < len(ws):  # evenly spread fixed subset
        ws = [ws[int(i * len(ws) / n)] for i in range(n)]
    return ws


@torch.no_grad()
def evaluate(model, windows, ks=None):
    model.eval()
    ks = ks or list(range(1, model.cfg.n_chains + 1))
    tot = {k: 0.0 for k in ks}
    count = 0
    for w in windows:
        w = torch.from_numpy(w)[None]
        losses = model.chain_losses(w[:, :-1], w[:, 1:], ks)
        for k in ks:
            tot[k] += losses[k].item() * (w.shape[1] - 1)
        count += w.shape[1] - 1
    model.train()
    return {k: tot[k] / count for k in ks}, count


def lr_at(step, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    decay_start = int(a.steps * (1 - a.decay_frac))
    if step < decay_start:
        return a.lr
    p = min(1.0, (step - decay_start) / max(1, a.steps - decay_start))
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1 + math.cos(math.pi * p))


def load_ckpt_model(path):
    ck = torch.load(path)
    cfg = ColmConfig(**ck["config"])
    model = ColmModel(cfg)
    model.load_state_dict(ck["model"])
    return model, ck


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--expand-from", help="checkpoint (ckpt.pt) of a trained model to grow")
    ap.add_argument("--add-chains", type=int, default=0)
    ap.add_argument("--freeze-chains", type=int, default=None,
                    help="with --expand-from and --add-chains 0: train the model as it is, chains 1..N frozen, "
                         "loss over k = N+1..n (e.g. a last chain alone, its smaller sub-models unchanged)")
    ap.add_argument("--new-chain-heads", type=int, default=None)
    ap.add_argument("--new-ffn", type=int, default=None)
    ap.add_argument("--run", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--data", default=os.path.join(HERE, "data-long"))
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--minutes", type=float, default=1e9, help="wall-clock cap for this invocation")
    ap.add_argument("--stop-at", type=int, default=None,
                    help="end this run at this step (a finished head of a --steps schedule: regenerates a snapshot)")
    ap.add_argument("--batch", type=int, default=4, help="windows per optimiser step")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--decay-frac", type=float, default=0.25)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-windows", type=int, default=12)
    ap.add_argument("--ckpt-every", type=int, default=10)
    ap.add_argument("--snapshots", default="", help="comma-separated steps at which a copy ckpt-step<N>.pt is kept")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    ChainLinear.blockwise = True
    Attention.q_block = 256
    os.makedirs(a.run, exist_ok=True)
    ckpt_path = os.path.join(a.run, "ckpt.pt")
    if os.path.exists(ckpt_path) and not a.resume:
        sys.exit(f"{ckpt_path} exists: pass --resume to continue it, or use another --run")
    train = np.memmap(os.path.join(a.data, "train.tok.u16"), dtype=np.uint16, mode="r")
    val = np.fromfile(os.path.join(a.data, "val.tok.u16"), dtype=np.uint16)
    windows = val_windows(val, a.context, a.eval_windows)

    n_old = 0
    if a.resume and os.path.exists(ckpt_path):
        model, ck = load_ckpt_model(ckpt_path)
        n_old = ck.get("n_old", 0)
    elif a.expand_from and a.add_chains == 0:
        assert a.freeze_chains is not None, "--add-chains 0 needs --freeze-chains N"
        old, _ = load_ckpt_model(a.expand_from)
        assert 0 < a.freeze_chains < old.cfg.n_chains
        n_old = a.freeze_chains
        model, _ = load_ckpt_model(a.expand_from)  # its own copy: `old` stays the reference for the check
        ck = None
    elif a.expand_from:
        assert a.add_chains > 0
        old, ock = load_ckpt_model(a.expand_from)
        n_old = old.cfg.n_chains
        model = grow(old, a.add_chains, a.new_chain_heads, a.new_ffn, seed=a.seed)
        ck = None
    else:
        assert a.preset, "--preset or --expand-from"
        torch.manual_seed(a.seed)
        model = ColmModel(make_config(a.preset, a.context))
        ck = None
    cfg = model.cfg
    assert cfg.vocab_size > int(val.max())
    n = cfg.n_chains
    ks = list(range(n_old + 1, n + 1))
    masks = trainable_masks(model, n_old) if n_old else None
    colm.frozen_chains = n_old  # old chains run without autograd graph (same values, same new-chain gradients)
    params = [(nm, p) for nm, p in model.named_parameters() if masks is None or masks[nm].any()]
    for nm, p in model.named_parameters():
        p.requires_grad_(any(nm == q for q, _ in params))
    frozen = {nm: p.detach().clone() for nm, p in params} if masks else None
    decay = [p for nm, p in params if p.dim() >= 2]
    no_decay = [p for nm, p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    rng = np.random.default_rng(a.seed)
    step, elapsed, tokens = 0, 0.0, 0
    if ck is not None:
        # A finished run may be committed as weights only (ckpt_portable.py finished): it seeds
        # --expand-from and reports itself done, but cannot be trained further.
        if "opt" not in ck and ck["step"] < a.steps:
            sys.exit(f"{ckpt_path} holds weights only (a finished run at step {ck['step']}): it cannot be resumed to {a.steps}")
        if "opt" in ck:
            opt.load_state_dict(ck["opt"])
        rng.bit_generator.state = ck["rng"]
        step, elapsed, tokens = ck["step"], ck["elapsed"], ck.get("tokens", 0)
        print(f"resumed at step {step}", flush=True)

    # sub-models 1..n_old must be the old model exactly: check on a fixed batch
    probe = torch.from_numpy(val[:257].astype(np.int64))[None]
    if n_old:
        with torch.no_grad():  # fresh expansion: the old model itself; on resume: the model as loaded
            ref = (old if a.expand_from and ck is None else model)(probe, ks=list(range(1, n_old + 1)))
    with open(os.path.join(a.run, "args.json"), "w") as f:
        json.dump(vars(a), f, indent=1)
    log = open(os.path.join(a.run, "log.jsonl"), "a")
    pc = [param_count(cfg, k) for k in range(1, n + 1)]
    trained = sum(int(masks[nm].sum()) if masks else p.numel() for nm, p in params)
    trained_nz = (pc[-1] - (param_count(cfg, n_old) if n_old else 0))
    print(f"config D={cfg.dim} chains={cfg.chain_dims} ffn={cfg.ffn_chain_dims} L={cfg.n_layers} V={cfg.vocab_size} "
          f"ctx={a.context}; non-zero params per k {pc}; old chains {n_old}, loss over k={ks}; "
          f"trainable non-zero params {trained_nz}; train tokens {len(train)} val tokens {len(val)}", flush=True)

    def save():
        tmp = ckpt_path + ".tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                    "step": step, "elapsed": elapsed, "tokens": tokens, "config": vars(cfg), "n_old": n_old,
                    "expand_from": a.expand_from, "preset": a.preset, "args": vars(a),
                    "trainable_nonzero_params": trained_nz}, tmp)
        os.replace(tmp, ckpt_path)

    stop = {"flag": False}

    def on_signal(sig, frame):
        stop["flag"] = True
        print(f"signal {sig}: checkpointing after this step", flush=True)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    snapshots = {int(v) for v in a.snapshots.split(",") if v}
    t_start = time.time()
    last = a.steps if a.stop_at is None else min(a.stop_at, a.steps)
    while step < last and not stop["flag"]:
        if time.time() - t_start > a.minutes * 60:
            print(f"wall-clock cap reached at step {step}", flush=True)
            break
        t0 = time.time()
        lr = lr_at(step, a)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        acc = {k: 0.0 for k in ks}
        for _ in range(a.batch):
            x, y = get_batch(train, rng, 1, a.context)
            losses = model.chain_losses(x, y, ks)
            loss = torch.stack([losses[k] for k in ks]).mean() / a.batch
            loss.backward()
            for k in ks:
                acc[k] += losses[k].item() / a.batch
        if masks:
            for nm, p in params:
                p.grad.mul_(masks[nm])
        gn = torch.nn.utils.clip_grad_norm_([p for _, p in params], a.clip)
        opt.step()
        if masks:
            with torch.no_grad():
                for nm, p in params:
                    p.copy_(torch.where(masks[nm].bool(), p, frozen[nm]))
        step += 1
        tokens += a.batch * a.context
        dt = time.time() - t0
        elapsed += dt
        rec = {"step": step, "lr": lr, "loss": sum(acc.values()) / len(acc), "losses": acc, "gnorm": gn.item(),
               "dt": dt, "tok_s": a.batch * a.context / dt, "elapsed": elapsed, "tokens": tokens}
        if step % a.eval_every == 0 or step == a.steps:
            rec["val"], _ = evaluate(model, windows)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(f"step {step} lr {lr:.2e} loss {rec['loss']:.4f} [{' '.join(f'{k}:{v:.3f}' for k, v in acc.items())}] "
              f"{dt:.1f}s {rec['tok_s']:.0f} tok/s tokens {tokens} elapsed {elapsed/60:.1f}m"
              + (f" val {' '.join(f'{k}:{v:.3f}' for k, v in rec['val'].items())}" if "val" in rec else ""), flush=True)
        if step % a.ckpt_every == 0 or step in snapshots:
            save()
        if step in snapshots:
            shutil.copyfile(ckpt_path, os.path.join(a.run, f"ckpt-step{step}.pt"))
    save()
    if n_old:
        with torch.no_grad():
            now = model(probe, ks=list(range(1, n_old + 1)))
        same = all(torch.equal(ref[k], now[k]) for k in ref)
        print(f"old sub-models 1..{n_old} bit-identical after training: {same}", flush=True)
        assert same
    print(f"stopped at step {step}/{a.steps}, train time {elapsed/60:.1f} min, tokens {tokens}", flush=True)
    if step < last:
        sys.exit(3)  # interrupted (signal or --minutes): run_long.sh must not go on to the next stage


if __name__ == "__main__":
    main()
