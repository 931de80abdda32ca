"""Small, fast checks of the long-model training code (tiny shapes, one thread, a few seconds):

  /usr/bin/python3 -m unittest models/train/test_long.py -v     (from the repository root)

- chain_losses (one pass over the head) == cross-entropy of forward()'s logits_k, for every k;
- blockwise chain linears and blocked causal attention == the reference path (values and gradients);
- chain expansion: grown model's sub-models 1..n_old bit-identical to the old model; the frozen
  (no-graph) path gives exactly the same gradients for the new chains' parameters; a few AdamW
  steps with weight decay leave every old entry unchanged;
- the BPE encoder round-trips arbitrary UTF-8 (Python side; check_tokenizer.mjs does the server's
  library) and the tokenizer file is a ByteLevel BPE with <|endoftext|> as the last id.
"""
import json
import os
import random
import sys
import unittest

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import colm  # noqa: E402
from colm import Attention, ChainLinear, ColmConfig, ColmModel  # noqa: E402
from train_long import grow, trainable_masks  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
torch.set_num_threads(1)


def tiny(chains=2, V=97):
    return ColmConfig(vocab_size=V, n_layers=2, head_dim=16, chain_heads=[1] * chains, kv_heads=1,
                      ffn_chain_dims=[24] * chains, max_position=64)


def randomise(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05 * (p != 0))


class Modes:
    def __init__(self, blockwise, q_block, frozen=0):
        self.v = (blockwise, q_block, frozen)

    def __enter__(self):
        self.old = (ChainLinear.blockwise, Attention.q_block, colm.frozen_chains)
        ChainLinear.blockwise, Attention.q_block, colm.frozen_chains = self.v

    def __exit__(self, *a):
        ChainLinear.blockwise, Attention.q_block, colm.frozen_chains = self.old


class TestLong(unittest.TestCase):
    def test_chain_losses_match_forward(self):
        torch.manual_seed(0)
        m = ColmModel(tiny(4))
        randomise(m)
        x = torch.randint(0, 97, (2, 40))
        y = torch.randint(0, 97, (2, 40))
        ref = {k: F.cross_entropy(l.reshape(-1, 97), y.reshape(-1)) for k, l in m(x).items()}
        got = m.chain_losses(x, y)
        for k in ref:
            self.assertAlmostEqual(ref[k].item(), got[k].item(), places=5)

    def test_fast_paths_equal_reference(self):
        torch.manual_seed(1)
        m = ColmModel(tiny(3))
        randomise(m, 1)
        x = torch.randint(0, 97, (1, 50))

        def run():
            m.zero_grad()
            ls = m.chain_losses(x, x)
            sum(ls.values()).backward()
            return m(x), {n: p.grad.clone() for n, p in m.named_parameters()}
        with Modes(False, 0):
            l0, g0 = run()
        with Modes(True, 16):
            l1, g1 = run()
        for k in l0:
            self.assertLess((l0[k] - l1[k]).abs().max().item(), 1e-5)
        for n in g0:
            self.assertLess((g0[n] - g1[n]).abs().max().item(), 1e-5, n)

    def test_expansion_frozen(self):
        torch.manual_seed(2)
        old = ColmModel(tiny(2))
        randomise(old, 2)
        new = grow(old, 2, seed=3)
        randomise(new, 4)  # also perturbs old entries: restore them from old below
        with torch.no_grad():
            for (n, p), (_, q) in zip(new.named_parameters(), old.named_parameters()):
                p[tuple(slice(0, s) for s in q.shape)].copy_(q)
        x = torch.randint(0, 97, (1, 48))
        with Modes(True, 16):
            a, b = old(x, ks=[1, 2]), new(x, ks=[1, 2])
            self.assertTrue(all(torch.equal(a[k], b[k]) for k in a))
            masks = trainable_masks(new, 2)
            grads = []
            for frozen in (0, 2):
                colm.frozen_chains = frozen
                new.zero_grad()
                ls = new.chain_losses(x, x, [3, 4])
                ((ls[3] + ls[4]) / 2).backward()
                grads.append({n: (p.grad if p.grad is not None else torch.zeros_like(p)) * masks[n]
                              for n, p in new.named_parameters()})
            for n in grads[0]:
                self.assertLess((grads[0][n] - grads[1][n]).abs().max().item(), 1e-6, n)
            # AdamW with weight decay, old entries restored after each step (as train_long does)
            params = [(n, p) for n, p in new.named_parameters() if masks[n].any()]
            keep = {n: p.detach().clone() for n, p in params}
            opt = torch.optim.AdamW([p for _, p in params], lr=1e-2, weight_decay=0.1)
            for _ in range(3):
                opt.zero_grad()
                ls = new.chain_losses(x, x, [3, 4])
                ((ls[3] + ls[4]) / 2).backward()
                for n, p in params:
                    p.grad.mul_(masks[n])
                opt.step()
                with torch.no_grad():
                    for n, p in params:
                        p.copy_(torch.where(masks[n].bool(), p, keep[n]))
            c = new(x, ks=[1, 2])
            self.assertTrue(all(torch.equal(a[k], c[k]) for k in a))
            self.assertFalse(torch.equal(new.embed.weight[:, 32:], keep["embed.weight"][:, 32:]))

    def test_bpe_round_trip(self):
        from bpe import B2U, Encoder
        path = os.path.join(HERE, "tokenizer-long.json")
        tj = json.load(open(path))
        self.assertEqual(tj["pre_tokenizer"]["type"], "ByteLevel")
        self.assertEqual(tj["decoder"]["type"], "ByteLevel")
        enc = Encoder(path)
        self.assertEqual(enc.eot, enc.vocab_size - 1)
        u2b = {u: b for b, u in B2U.items()}
        inv = {i: bytes(u2b[ch] for ch in s) for s, i in enc.vocab.items()}
        rnd = random.Random(5)
        for _ in range(200):
            s = "".join(chr(rnd.choice([rnd.randrange(32, 127), rnd.randrange(0x80, 0x800),
                                        rnd.randrange(0x800, 0xD800), rnd.randrange(0x10000, 0x20000)]))
                        for _ in range(rnd.randrange(0, 30)))
            ids = enc.encode(s)
            self.assertEqual(b"".join(inv[i] for i in ids).decode("utf-8"), s)


if __name__ == "__main__":
    unittest.main()
