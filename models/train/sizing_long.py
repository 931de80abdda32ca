"""Sizing arithmetic for the long-context model (printed into NOTES-long.md): non-zero and stored
parameters, checkpoint bytes, and multiply-accumulates of one decode step per sub-model k.

  python3 models/train/sizing_long.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from colm import ColmConfig, param_count  # noqa: E402
from train_long import make_config  # noqa: E402


def chain_lin(a, b):
    return sum(sum(a[:i + 1]) * b[i] for i in range(len(a)))


def decode_macs(cfg: ColmConfig, k, t):
    """MACs of one decode step of sub-model k at position t (t keys in the cache)."""
    c = cfg.sub(k)
    cd, fd, hd = c.chain_dims, c.ffn_chain_dims, c.head_dim
    layer = (2 * chain_lin(cd, cd) + 2 * cfg.kv_heads * hd * cd[0]
             + 2 * chain_lin(cd, fd) + chain_lin(fd, cd) + sum(c.chain_heads) * (t + 1) * hd * 2)
    return cfg.n_layers * layer + cfg.vocab_size * c.dim


def stored(cfg):
    D, F = cfg.dim, sum(cfg.ffn_chain_dims)
    per = 2 * D + 2 * D * D + 2 * cfg.kv_heads * cfg.head_dim * cfg.chain_dims[0] + 3 * D * F
    return cfg.vocab_size * cfg.dim * (1 if cfg.tie_embeddings else 2) + cfg.n_layers * per + D


if __name__ == "__main__":
    for preset in ("colm4", "colm2", "dense"):
        cfg = make_config(preset, 2048)
        n = cfg.n_chains
        print(f"{preset}: D={cfg.dim} chains={cfg.chain_dims} ffn={cfg.ffn_chain_dims} L={cfg.n_layers} "
              f"V={cfg.vocab_size} hd={cfg.head_dim} kv_heads={cfg.kv_heads}")
        print(f"  non-zero params per k: {[param_count(cfg, k) for k in range(1, n + 1)]} "
              f"(embedding/head {cfg.vocab_size * cfg.dim:,} of them)")
        s = stored(cfg)
        print(f"  stored floats {s:,} -> float32 safetensors {4 * s / 1e6:.1f} MB ({4 * s / 2**20:.1f} MiB)")
        for t in (0, 512, 2047):
            m = [decode_macs(cfg, k, t) for k in range(1, n + 1)]
            print(f"  decode MACs at position {t}: " + " ".join(f"k={k}:{v/1e6:.2f}M" for k, v in enumerate(m, 1))
                  + f"  k=1/k={n}: {m[0] / m[-1]:.3f}")
