"""CoLM-Air (Chain-of-Model, KV-sharing variant) in plain PyTorch.

This file is the training-side reference of /work/shared/colm-air.md sections 2-4 and 6.
Every layer is chain-causal: output chain i only reads input chains 1..i, so the first d_k
dims of every hidden state of the full model are exactly the hidden states of sub-model k.

Chain linears keep a dense [out, in] weight and multiply it by a fixed block-lower-triangular
0/1 mask in forward.  Masked entries get zero gradient, are initialised to zero and therefore
stay exactly zero under AdamW (zero grad -> zero Adam update, and decay of 0 is 0); the state
dict is thus the spec's checkpoint layout with zeros in the masked blocks.
"""
import math
from dataclasses import dataclass, field, asdict
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ColmConfig:
    vocab_size: int = 256
    n_layers: int = 6
    head_dim: int = 32
    chain_heads: List[int] = field(default_factory=lambda: [2, 2, 2, 2])
    kv_heads: int = 2
    ffn_chain_dims: List[int] = field(default_factory=lambda: [176, 176, 176, 176])
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_position: int = 256
    tie_embeddings: bool = True

    @property
    def n_chains(self):
        return len(self.chain_heads)

    @property
    def chain_dims(self):
        return [h * self.head_dim for h in self.chain_heads]

    @property
    def dim(self):
        return sum(self.chain_dims)

    def prefix_dim(self, k):
        """d_k: width of the first k chains."""
        return sum(self.chain_dims[:k])

    def sub(self, k):
        """Config of sub-model k (first k chains)."""
        d = asdict(self)
        d["chain_heads"] = list(self.chain_heads[:k])
        d["ffn_chain_dims"] = list(self.ffn_chain_dims[:k])
        return ColmConfig(**d)

    def validate(self):
        assert len(self.chain_heads) == len(self.ffn_chain_dims)
        for h in self.chain_heads:
            assert h % self.kv_heads == 0, "kv_heads must divide every chain's head count"
        assert self.head_dim % 2 == 0


# Chain expansion (train_long.py): the number of leading chains whose parameters are frozen.  With
# ChainLinear.blockwise on, their outputs are computed without an autograd graph (their gradients
# would only reach frozen parameters), so the backward pass covers the new chains only.  The values
# computed are the same; gradients of the new chains' parameters are the same.
frozen_chains = 0


def chain_mask(in_dims, out_dims):
    """Block-lower-triangular 0/1 mask of shape [sum(out), sum(in)]:
    output chain i reads input chains 0..i (counted from 0)."""
    assert len(in_dims) == len(out_dims)
    m = torch.zeros(sum(out_dims), sum(in_dims))
    r = 0
    for i, bo in enumerate(out_dims):
        m[r:r + bo, :sum(in_dims[:i + 1])] = 1.0
        r += bo
    return m


class ChainLinear(nn.Module):
    # blockwise=True: compute output chain i as x[..., :a_1+..+a_i] @ W_i (the non-zero blocks only,
    # ~n(n+1)/2n^2 of the dense work); same maths, different float summation order.  Off by default so
    # that the colm-kjv reproduction is unchanged; train_long.py turns it on.
    blockwise = False

    def __init__(self, in_dims, out_dims, std=0.02):
        super().__init__()
        self.in_dims, self.out_dims = list(in_dims), list(out_dims)
        self.register_buffer("mask", chain_mask(in_dims, out_dims), persistent=False)
        w = torch.randn(sum(out_dims), sum(in_dims)) * std
        self.weight = nn.Parameter(w * self.mask)

    def forward(self, x):
        if ChainLinear.blockwise and len(self.out_dims) > 1:
            outs, r, a = [], 0, 0
            for i, (ai, bo) in enumerate(zip(self.in_dims, self.out_dims)):
                a += ai
                if i < frozen_chains:  # a frozen (old) output chain: no autograd graph
                    outs.append(F.linear(x[..., :a].detach(), self.weight[r:r + bo, :a].detach()))
                else:
                    outs.append(F.linear(x[..., :a], self.weight[r:r + bo, :a]))
                r += bo
            return torch.cat(outs, dim=-1)
        return F.linear(x, self.weight * self.mask)


class ChainRMSNorm(nn.Module):
    """Each chain normalised on its own, with its own slice of the gain."""

    def __init__(self, dims, eps):
        super().__init__()
        self.dims = list(dims)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(sum(dims)))

    def forward(self, x):
        if len(set(self.dims)) == 1:  # equal chains: normalise a [..., n, c] view (same maths, faster)
            xs = x.view(*x.shape[:-1], len(self.dims), self.dims[0])
            xs = xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + self.eps)
            return xs.view(x.shape) * self.weight
        parts = []
        for xi in torch.split(x, self.dims, dim=-1):
            parts.append(xi * torch.rsqrt(xi.pow(2).mean(-1, keepdim=True) + self.eps))
        return torch.cat(parts, dim=-1) * self.weight


def rope_cos_sin(T, hd, theta, device=None):
    """HF LLaMA convention: inv_freq_j = theta^(-2j/hd), emb = cat(freqs, freqs), positions from 0."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device=device) / hd))
    t = torch.arange(T, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):
    # x: [B, H, T, hd]; cos/sin: [T, hd]
    return x * cos + rotate_half(x) * sin


def kv_index(cfg):
    """For every query head (stored chain after chain) the kv head it attends with:
    head m of chain i (m counted from 0 inside the chain) -> floor(m / (h_i / kv_heads))."""
    idx = []
    for h in cfg.chain_heads:
        group = h // cfg.kv_heads
        idx += [m // group for m in range(h)]
    return idx


class Attention(nn.Module):
    # q_block > 0: causal attention computed in blocks of q_block queries (train_long.py sets 512);
    # 0 (default): one T x T matrix, as the colm-kjv scripts have always done.
    q_block = 0

    def __init__(self, cfg: ColmConfig, resid_std):
        super().__init__()
        self.cfg = cfg
        cd = cfg.chain_dims
        hd = cfg.head_dim
        self.q_proj = ChainLinear(cd, cd)
        # keys / values from chain 1 only: plain linears [kv_heads*hd, c_1]
        self.k_proj = nn.Linear(cd[0], cfg.kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cd[0], cfg.kv_heads * hd, bias=False)
        nn.init.normal_(self.k_proj.weight, std=0.02)
        nn.init.normal_(self.v_proj.weight, std=0.02)
        self.o_proj = ChainLinear(cd, cd, std=resid_std)
        self.register_buffer("kv_idx", torch.tensor(kv_index(cfg), dtype=torch.long), persistent=False)

    def forward(self, x, cos, sin):
        cfg = self.cfg
        B, T, _ = x.shape
        hd = cfg.head_dim
        nh = sum(cfg.chain_heads)
        q = self.q_proj(x).view(B, T, nh, hd).transpose(1, 2)              # [B, nh, T, hd]
        x1 = x[..., :cfg.chain_dims[0]]
        k = self.k_proj(x1).view(B, T, cfg.kv_heads, hd).transpose(1, 2)   # [B, kvh, T, hd]
        v = self.v_proj(x1).view(B, T, cfg.kv_heads, hd).transpose(1, 2)
        q = apply_rope(q, cos, sin) * (1.0 / math.sqrt(hd))  # scale 1/sqrt(hd) folded into q
        k = apply_rope(k, cos, sin)
        k = k.index_select(1, self.kv_idx)                                  # [B, nh, T, hd]
        v = v.index_select(1, self.kv_idx)
        nf = frozen_chains
        if nf and ChainLinear.blockwise:
            # chains 1..nf are frozen (chain expansion): their heads, and chain 1's keys and values,
            # are computed without an autograd graph; only the new chains' heads are differentiated.
            ho = sum(cfg.chain_heads[:nf])
            k, v = k.detach(), v.detach()
            with torch.no_grad():
                y_old = causal_attention(q[:, :ho].detach(), k[:, :ho], v[:, :ho])
            y = torch.cat([y_old, causal_attention(q[:, ho:], k[:, ho:], v[:, ho:])], dim=1)
        else:
            y = causal_attention(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, nh * hd))


def causal_attention(q, k, v):
    """softmax(q k^T + causal mask) v for q, k, v of shape [B, H, T, hd] (q already scaled)."""
    T = q.shape[2]
    qb = Attention.q_block
    if qb and T > qb:
        # blocks of queries attend only to the keys up to their last position: the upper
        # triangle beyond each block is never computed (same maths, ~(n+1)/2n of the work)
        outs = []
        for s in range(0, T, qb):
            e = min(T, s + qb)
            att = q[:, :, s:e] @ k[:, :, :e].transpose(-2, -1)
            causal = torch.ones(e - s, e, dtype=torch.bool, device=q.device).triu(s + 1)
            att = att.masked_fill_(causal, float("-inf")).softmax(-1)
            outs.append(att @ v[:, :, :e])
        return torch.cat(outs, dim=2)
    att = q @ k.transpose(-2, -1)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    att = att.masked_fill_(causal, float("-inf")).softmax(-1)
    return att @ v


class FeedForward(nn.Module):
    def __init__(self, cfg: ColmConfig, resid_std):
        super().__init__()
        cd, fd = cfg.chain_dims, cfg.ffn_chain_dims
        self.gate_proj = ChainLinear(cd, fd)
        self.up_proj = ChainLinear(cd, fd)
        self.down_proj = ChainLinear(fd, cd, std=resid_std)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg, resid_std):
        super().__init__()
        self.attn_norm = ChainRMSNorm(cfg.chain_dims, cfg.norm_eps)
        self.attn = Attention(cfg, resid_std)
        self.ffn_norm = ChainRMSNorm(cfg.chain_dims, cfg.norm_eps)
        self.ffn = FeedForward(cfg, resid_std)

    def forward(self, x, cos, sin):
        h = x + self.attn(self.attn_norm(x), cos, sin)
        return h + self.ffn(self.ffn_norm(h))


class ColmModel(nn.Module):
    def __init__(self, cfg: ColmConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        resid_std = 0.02 / math.sqrt(2 * cfg.n_layers)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.layers = nn.ModuleList([Block(cfg, resid_std) for _ in range(cfg.n_layers)])
        self.norm = ChainRMSNorm(cfg.chain_dims, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
            nn.init.normal_(self.lm_head.weight, std=0.02)

    def head_weight(self):
        return self.embed.weight if self.cfg.tie_embeddings else self.lm_head.weight

    def hidden(self, idx):
        """Final normalised hidden states y: [B, T, D]."""
        T = idx.shape[1]
        cos, sin = rope_cos_sin(T, self.cfg.head_dim, self.cfg.rope_theta, idx.device)
        x = self.embed(idx)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)

    def forward(self, idx, ks=None):
        """Returns {k: logits_k [B, T, V]} for every k in ks (default: all 1..n).
        logits_k = y[..., :d_k] @ H[:, :d_k]^T from one full forward (valid by chain causality)."""
        y = self.hidden(idx)
        H = self.head_weight()
        ks = ks or list(range(1, self.cfg.n_chains + 1))
        out = {}
        for k in ks:
            d = self.cfg.prefix_dim(k)
            out[k] = y[..., :d] @ H[:, :d].t()
        return out

    def chain_losses(self, idx, targets, ks=None):
        """Cross-entropy of logits_k for k in ks (default all), computed with ONE pass over the head:
        logits_k = sum_{j<=k} y_j H_j^T, so the per-chain partial logits are accumulated chain by
        chain (same maths as forward(); the head costs V*D instead of V*(d_1+...+d_n))."""
        y = self.hidden(idx)
        H = self.head_weight()
        n = self.cfg.n_chains
        ks = ks or list(range(1, n + 1))
        V = H.shape[0]
        acc, out, o = None, {}, 0
        for j, c in enumerate(self.cfg.chain_dims, start=1):
            if j > max(ks):
                break
            if j <= frozen_chains and ChainLinear.blockwise:
                with torch.no_grad():
                    part = y[..., o:o + c].detach() @ H[:, o:o + c].detach().t()
            else:
                part = y[..., o:o + c] @ H[:, o:o + c].t()
            acc = part if acc is None else acc + part
            o += c
            if j in ks:
                out[j] = F.cross_entropy(acc.reshape(-1, V), targets.reshape(-1))
        return out

    def loss(self, idx, targets):
        """Spec section 6: mean over k = 1..n of next-token cross-entropy of logits_k.
        Returns (mean loss, [loss_k for k = 1..n])."""
        logits = self.forward(idx)
        losses = [F.cross_entropy(l.reshape(-1, l.shape[-1]), targets.reshape(-1)) for l in logits.values()]
        return torch.stack(losses).mean(), losses

    # ---- checkpoint layout (spec section 4) ----
    def export_state_dict(self):
        """Spec tensor names, float32, masked blocks forced to exact zeros."""
        sd = {"embed.weight": self.embed.weight}
        for l, b in enumerate(self.layers):
            p = f"layers.{l}."
            sd[p + "attn_norm.weight"] = b.attn_norm.weight
            sd[p + "attn.q_proj.weight"] = b.attn.q_proj.weight * b.attn.q_proj.mask
            sd[p + "attn.k_proj.weight"] = b.attn.k_proj.weight
            sd[p + "attn.v_proj.weight"] = b.attn.v_proj.weight
            sd[p + "attn.o_proj.weight"] = b.attn.o_proj.weight * b.attn.o_proj.mask
            sd[p + "ffn_norm.weight"] = b.ffn_norm.weight
            sd[p + "ffn.gate_proj.weight"] = b.ffn.gate_proj.weight * b.ffn.gate_proj.mask
            sd[p + "ffn.up_proj.weight"] = b.ffn.up_proj.weight * b.ffn.up_proj.mask
            sd[p + "ffn.down_proj.weight"] = b.ffn.down_proj.weight * b.ffn.down_proj.mask
        sd["norm.weight"] = self.norm.weight
        if not self.cfg.tie_embeddings:
            sd["lm_head.weight"] = self.lm_head.weight
        return {k: v.detach().float().contiguous().clone() for k, v in sd.items()}

    def load_export_state_dict(self, sd):
        """Inverse of export_state_dict (spec names -> module parameters)."""
        own = dict(self.named_parameters())
        for name, t in sd.items():
            assert name in own, f"unexpected tensor {name}"
            assert own[name].shape == t.shape, (name, own[name].shape, t.shape)
            with torch.no_grad():
                own[name].copy_(t)
        missing = set(own) - set(sd)
        assert not missing, f"missing tensors {missing}"


def submodel(full: ColmModel, k: int) -> ColmModel:
    """Build sub-model k as a standalone model by slicing the full weights to chains 1..k.
    Used to check the prefix property: its logits must equal the full model's logits_k."""
    cfg = full.cfg.sub(k)
    m = ColmModel(cfg)
    d, f = cfg.dim, sum(cfg.ffn_chain_dims)
    sd = full.export_state_dict()
    out = {}
    for name, t in sd.items():
        if name == "embed.weight" or name == "lm_head.weight":
            out[name] = t[:, :d]
        elif name.endswith("norm.weight"):
            out[name] = t[:d]
        elif name.endswith(("q_proj.weight", "o_proj.weight")):
            out[name] = t[:d, :d]
        elif name.endswith(("k_proj.weight", "v_proj.weight")):
            out[name] = t
        elif name.endswith(("gate_proj.weight", "up_proj.weight")):
            out[name] = t[:f, :d]
        elif name.endswith("down_proj.weight"):
            out[name] = t[:d, :f]
        else:
            raise KeyError(name)
    m.load_export_state_dict(out)
    return m


def param_count(cfg: ColmConfig, k: Optional[int] = None):
    """Number of structurally non-zero parameters of sub-model k (default: full model)."""
    k = cfg.n_chains if k is None else k
    c = cfg.sub(k)
    cd, fd = c.chain_dims, c.ffn_chain_dims
    D, hd = c.dim, c.head_dim

    def chain_lin(a, b):
        return sum(sum(a[:i + 1]) * b[i] for i in range(len(a)))

    per_layer = (2 * D + chain_lin(cd, cd) * 2 + 2 * cfg.kv_heads * hd * cd[0]
                 + 2 * chain_lin(cd, fd) + chain_lin(fd, cd))
    total = cfg.vocab_size * D + cfg.n_layers * per_layer + D
    if not cfg.tie_embeddings:
        total += cfg.vocab_size * D
    return total
