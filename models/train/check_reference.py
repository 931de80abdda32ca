"""Independent float64 numpy re-implementation of /work/shared/colm-air.md section 3, written
block-by-block from the spec (per-chain weight blocks W_i, explicit per-head loops, explicit RoPE
pairs), used to cross-check the golden fixtures produced by the PyTorch code.

  /usr/bin/python3 models/train/check_reference.py --model models/colm-kjv --golden test/fixtures/colm-kjv-golden.json
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402


def forward(W, cfg, tokens, k):
    hd, theta, eps = cfg["head_dim"], cfg["rope_theta"], cfg["norm_eps"]
    ch = cfg["chain_heads"][:k]
    c = [h * hd for h in ch]
    f = cfg["ffn_chain_dims"][:k]
    D, F = sum(c), sum(f)
    kvh = cfg["kv_heads"]
    T = len(tokens)
    g = lambda name: W[name].astype(np.float64)  # noqa: E731

    def chain_lin(Wfull, x, a, b):
        # output chain i = x_{<=i} . W_i, W_i = Wfull[rows of chain i, cols of chains <= i]^T
        out, r = [], 0
        for i in range(len(b)):
            ai = sum(a[:i + 1])
            out.append(x[:, :ai] @ Wfull[r:r + b[i], :ai].T)
            r += b[i]
        return np.concatenate(out, axis=1)

    def chain_norm(gain, x):
        out, o = [], 0
        for ci in c:
            xi = x[:, o:o + ci]
            out.append(xi / np.sqrt((xi ** 2).mean(1, keepdims=True) + eps) * gain[o:o + ci])
            o += ci
        return np.concatenate(out, axis=1)

    def rope(v, t):  # v: [hd]
        out = np.empty_like(v)
        half = hd // 2
        for j in range(half):
            ang = t * theta ** (-2.0 * j / hd)
            cs, sn = np.cos(ang), np.sin(ang)
            out[j] = v[j] * cs - v[j + half] * sn
            out[j + half] = v[j + half] * cs + v[j] * sn
        return out

    x = g("embed.weight")[tokens][:, :D]
    for l in range(cfg["n_layers"]):
        p = f"layers.{l}."
        xn = chain_norm(g(p + "attn_norm.weight"), x)
        q = chain_lin(g(p + "attn.q_proj.weight"), xn, c, c)
        K = xn[:, :c[0]] @ g(p + "attn.k_proj.weight").T
        V = xn[:, :c[0]] @ g(p + "attn.v_proj.weight").T
        Kr = np.stack([[rope(K[t, j * hd:(j + 1) * hd], t) for j in range(kvh)] for t in range(T)])  # [T,kvh,hd]
        heads = []
        hoff = 0
        for i, hi in enumerate(ch):
            for m in range(hi):
                j = m // (hi // kvh)
                qh = np.stack([rope(q[t, (hoff + m) * hd:(hoff + m + 1) * hd], t) for t in range(T)])
                s = qh @ Kr[:, j, :].T / np.sqrt(hd)
                s = s + np.triu(np.full((T, T), -np.inf), 1)
                s = np.exp(s - s.max(1, keepdims=True))
                s /= s.sum(1, keepdims=True)
                heads.append(s @ V[:, j * hd:(j + 1) * hd])
            hoff += hi
        att = np.concatenate(heads, axis=1)
        h = x + chain_lin(g(p + "attn.o_proj.weight"), att, c, c)
        hn = chain_norm(g(p + "ffn_norm.weight"), h)
        gt = chain_lin(g(p + "ffn.gate_proj.weight"), hn, c, f)
        up = chain_lin(g(p + "ffn.up_proj.weight"), hn, c, f)
        a = gt / (1 + np.exp(-gt)) * up
        x = h + chain_lin(g(p + "ffn.down_proj.weight"), a, f, c)
    y = chain_norm(g("norm.weight"), x)
    H = g("embed.weight") if cfg["tie_embeddings"] else g("lm_head.weight")
    return y @ H[:, :D].T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/colm-kjv")
    ap.add_argument("--golden", default="test/fixtures/colm-kjv-golden.json")
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    W, _ = safetensors_io.load(os.path.join(a.model, "model.safetensors"))
    gold = json.load(open(a.golden))
    worst = 0.0
    for s in gold["sequences"]:
        for ks, rows in s["logits"].items():
            ref = forward(W, cfg, s["tokens"], int(ks))
            for p, row in zip(s["positions"], rows):
                worst = max(worst, float(np.abs(ref[p] - np.array(row)).max()))
    # greedy: check the first 8 tokens of every continuation
    for gr in gold["greedy"]:
        for ks, cont in gr["continuations"].items():
            toks = list(gr["prompt_tokens"])
            for t in cont[:8]:
                nxt = int(np.argmax(forward(W, cfg, toks, int(ks))[-1]))
                assert nxt == t, (gr["prompt"], ks, toks, nxt, t)
                toks.append(t)
    print(f"numpy float64 reference vs golden logits: max abs diff {worst:.3e}; greedy prefixes agree")
    assert worst < 1e-3


if __name__ == "__main__":
    main()
