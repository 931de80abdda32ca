"""Export a training checkpoint to the colm-serve model directory layout (spec section 4):
config.json + model.safetensors (float32, spec tensor names, masked blocks exactly zero).

  /usr/bin/python3 models/train/export.py --run models/train/runs/colm --out models/colm-kjv
The file is read back and compared tensor by tensor; masked blocks are checked to be exactly zero.
"""
import argparse
import hashlib
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


SHARD_BYTES = 30_000_000  # no file in the repository over 30 MB: bigger checkpoints are sharded
SHARD_INDEX = "model.safetensors.index.json"


def weight_files(model_dir):
    """The folder's weight files in order: model.safetensors, or the shards its index names."""
    index = os.path.join(model_dir, SHARD_INDEX)
    if not os.path.exists(index):
        return [os.path.join(model_dir, "model.safetensors")]
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    return [os.path.join(model_dir, f) for f in dict.fromkeys(weight_map.values())]


def weights_sha256(model_dir):
    """sha256 over the weight files' bytes in order (what the golden fixtures were made from)."""
    h = hashlib.sha256()
    for path in weight_files(model_dir):
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def load_tensors(model_dir):
    tensors, meta = {}, {}
    for path in weight_files(model_dir):
        t, meta = safetensors_io.load(path)
        tensors.update(t)
    return tensors, meta


def save_tensors(out, sd, meta):
    """Writes model.safetensors, or Hugging Face style shards of at most SHARD_BYTES plus their index."""
    for old in [SHARD_INDEX, "model.safetensors"] + [f for f in os.listdir(out) if f.startswith("model-0")]:
        if os.path.exists(os.path.join(out, old)):
            os.remove(os.path.join(out, old))
    groups, size = [[]], 0
    for name, t in sd.items():
        nbytes = t.numel() * 4
        if groups[-1] and size + nbytes > SHARD_BYTES - 2**20:  # a MiB for the header
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    if len(groups) == 1:
        safetensors_io.save(os.path.join(out, "model.safetensors"), sd, meta)
        return
    weight_map = {}
    for i, names in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        safetensors_io.save(os.path.join(out, fname), {n: sd[n] for n in names}, meta)
        weight_map.update({n: fname for n in names})
    with open(os.path.join(out, SHARD_INDEX), "w") as f:
        json.dump({"metadata": {"total_size": sum(t.numel() * 4 for t in sd.values())}, "weight_map": weight_map}, f, indent=1)
        f.write("\n")


def load_exported(model_dir):
    """Build a ColmModel from config.json + model.safetensors (as colm-serve would see them)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    cfg = ColmConfig(vocab_size=c["vocab_size"], n_layers=c["n_layers"], head_dim=c["head_dim"],
                     chain_heads=c["chain_heads"], kv_heads=c["kv_heads"], ffn_chain_dims=c["ffn_chain_dims"],
                     rope_theta=c["rope_theta"], norm_eps=c["norm_eps"], max_position=c["max_position"],
                     tie_embeddings=c["tie_embeddings"])
    tensors, meta = load_tensors(model_dir)
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
    save_tensors(out, sd, meta)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config_json(cfg, name), f, indent=2)
        f.write("\n")
    # ---- verify by reading back ----
    back, bmeta = load_tensors(out)
    assert list(back) == list(sd), "tensor names/order differ"
    for k, v in sd.items():
        assert back[k].dtype == np.float32 and back[k].shape == tuple(v.shape), k
        assert np.array_equal(back[k], v.numpy()), k
    masks = masks_for(cfg)
    nz_masked = 0
    for k, m in masks.items():
        nz_masked += int((back[k][m.numpy() == 0] != 0).sum())
    assert nz_masked == 0, f"{nz_masked} non-zero values in masked blocks"
    files = weight_files(out)
    for path in files:
        with open(path, "rb") as f:
            assert int.from_bytes(f.read(8), "little") % 8 == 0
    size = sum(os.path.getsize(p) for p in files)
    print(f"exported {len(sd)} tensors, step {ck['step']}, {size} bytes -> {', '.join(files)}; "
          f"read-back identical, masked blocks all zero ({sum(int((m == 0).sum()) for m in masks.values())} zeros)")
    return size


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="colm-kjv")
    a = ap.parse_args()
    export(a.run, a.out, a.name)
