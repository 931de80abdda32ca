"""Export a training checkpoint to the colm-serve model directory layout (spec section 4):
config.json + model.safetensors (float32, spec tensor names, masked blocks exactly zero).

  /usr/bin/python3 models/train/export.py --run models/train/runs/colm --out models/colm-kjv
The file is read back and compared tensor by tensor; masked blocks are checked to be exactly zero.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from colm import ColmConfig, ColmModel, chain_mask  # noqa: E402
import safetensors_io  # noqa: E402


def config_json(cfg: ColmConfig, name):
    """Exactly the keys of spec section 2 plus tokenizer and name."""
    return {
        "architecture": "colm-air",
        "vocab_size": cfg.vocab_size,
        "n_layers": cfg.n_layers,
        "head_dim": cfg.head_dim,
        "chain_heads": list(cfg.chain_heads),
        "kv_heads": cfg.kv_heads,
        "ffn_chain_dims": list(cfg.ffn_chain_dims),
        "rope_theta": cfg.rope_theta,
        "norm_eps": cfg.norm_eps,
        "max_position": cfg.max_position,
        "tie_embeddings": cfg.tie_embeddings,
        "bos_token_id": None,
        "eos_token_id": None,
        "tokenizer": "byte",
        "name": name,
    }


def load_checkpoint(run):
    ck = torch.load(os.path.join(run, "ckpt.pt"))
    cfg = ColmConfig(**ck["config"])
    model = ColmModel(cfg)
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck


def load_exported(model_dir):
    """Build a ColmModel from config.json + model.safetensors (as colm-serve would see them)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    cfg = ColmConfig(vocab_size=c["vocab_size"], n_layers=c["n_layers"], head_dim=c["head_dim"],
                     chain_heads=c["chain_heads"], kv_heads=c["kv_heads"], ffn_chain_dims=c["ffn_chain_dims"],
                     rope_theta=c["rope_theta"], norm_eps=c["norm_eps"], max_position=c["max_position"],
                     tie_embeddings=c["tie_embeddings"])
    tensors, meta = safetensors_io.load(os.path.join(model_dir, "model.safetensors"))
    model = ColmModel(cfg)
    model.load_export_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    model.eval()
    return model, c, tensors, meta


def masks_for(cfg: ColmConfig):
    cd, fd = cfg.chain_dims, cfg.ffn_chain_dims
    m = {}
    for l in range(cfg.n_layers):
        p = f"layers.{l}."
        m[p + "attn.q_proj.weight"] = chain_mask(cd, cd)
        m[p + "attn.o_proj.weight"] = chain_mask(cd, cd)
        m[p + "ffn.gate_proj.weight"] = chain_mask(cd, fd)
        m[p + "ffn.up_proj.weight"] = chain_mask(cd, fd)
        m[p + "ffn.down_proj.weight"] = chain_mask(fd, cd)
    return m


def export(run, out, name):
    model, ck = load_checkpoint(run)
    cfg = model.cfg
    sd = model.export_state_dict()
    os.makedirs(out, exist_ok=True)
    meta = {"format": "pt", "name": name, "train_step": ck["step"], "preset": ck["preset"]}
    path = os.path.join(out, "model.safetensors")
    safetensors_io.save(path, sd, meta)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config_json(cfg, name), f, indent=2)
        f.write("\n")
    # ---- verify by reading back ----
    back, bmeta = safetensors_io.load(path)
    assert list(back) == list(sd), "tensor names/order differ"
    for k, v in sd.items():
        assert back[k].dtype == np.float32 and back[k].shape == tuple(v.shape), k
        assert np.array_equal(back[k], v.numpy()), k
    masks = masks_for(cfg)
    nz_masked = 0
    for k, m in masks.items():
        nz_masked += int((back[k][m.numpy() == 0] != 0).sum())
    assert nz_masked == 0, f"{nz_masked} non-zero values in masked blocks"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    assert n % 8 == 0
    size = os.path.getsize(path)
    print(f"exported {len(sd)} tensors, step {ck['step']}, {size} bytes -> {path}; "
          f"read-back identical, masked blocks all zero ({sum(int((m == 0).sum()) for m in masks.values())} zeros)")
    return size


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="colm-kjv")
    a = ap.parse_args()
    export(a.run, a.out, a.name)
