"""Write the long-context model's card.md from the runs' eval.json files (evaluate_long.py), the
corpus summary (data-long-stats.json) and, when given, colm-serve's decode speed per k.

  python3 models/train/card_long.py --runs models/train/runs --model models/colm-long \\
      --out models/colm-long/card.md [--bench decode.json]

--bench: a JSON object {"decode_tok_s": {"1": ..., "2": ..., ...}, "how": "..."} measured in
colm-serve with training paused.  Sections whose run has no eval.json yet say so.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from colm import ColmConfig, param_count  # noqa: E402
import export  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = [("long-c4b", "default model: long-c4, then chain 4 alone (chains 1-3 frozen, loss k=4)"),
        ("long-c4", "stage 2: +2 chains grown from long-c2, the old ones frozen, loss k=3,4"),
        ("long-c2", "stage 1: the 2-chain model it grew from"),
        ("long-mini-c4", "comparison: progressive, 100 steps of 2 chains (replayed head of stage 1) + 100 steps of +2"),
        ("long-joint4", "comparison: the same 4 chains trained jointly from scratch, 200 steps"),
        ("long-dense", "comparison: dense baseline of the full width, 200 steps")]


def load(runs, name):
    """A run's eval.json: from its run folder, else the committed copy in models/train/evals/."""
    for p in (os.path.join(runs, name, "eval.json"), os.path.join(HERE, "evals", f"{name}.json")):
        if os.path.exists(p):
            return json.load(open(p))
    return None


def tokens_params(ev):
    """(tokens trained, trainable non-zero params) of a run."""
    cfg = ColmConfig(**ev["config"])
    n_old = ev.get("n_old", 0)
    trained = param_count(cfg) - (param_count(cfg, n_old) if n_old else 0)
    return ev["tokens_trained"], trained


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=os.path.join(HERE, "runs"))
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bench", default=None)
    ap.add_argument("--stats", default=os.path.join(HERE, "data-long-stats.json"))
    ap.add_argument("--tokenizer-stats", default=os.path.join(HERE, "tokenizer-long-stats.json"))
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    files = export.weight_files(a.model)
    size = sum(os.path.getsize(f) for f in files)
    st = json.load(open(a.stats))
    ev = {name: load(a.runs, name) for name, _ in RUNS}
    d = ev["long-c4b"] or ev["long-c4"]
    n = len(cfg["chain_heads"])
    L = []
    w = L.append
    w(f"# {cfg['name']}: a long-context CoLM-Air model of English documentation and reference text\n")
    w(f"One weight set holds {n} nested language models (sub-models k = 1..{n}, chain widths "
      f"{'/'.join(str(h * cfg['head_dim']) for h in cfg['chain_heads'])}), context {cfg['max_position']} tokens, "
      f"a {cfg['vocab_size']}-token byte-level BPE tokenizer. It was grown chain by chain (the paper's "
      "progressive scaling): 2 chains trained first; then 2 more with the first two frozen; then, because "
      "sub-model 4 was not yet better than sub-model 3 (held-out 5.1701 vs 5.1659 nats/token), chain 4 alone with "
      "chains 1-3 frozen. So sub-models 1-2 are bit for bit the 2-chain model and 1-3 the 4-chain stage's. "
      "A small CPU-trained model: fluent-looking technical English "
      "at best, no knowledge to rely on.\n")
    w("## Files\n")
    w(f"- `config.json` (spec section 2; `bos_token_id` = `eos_token_id` = {cfg['eos_token_id']} = `<|endoftext|>`), "
      f"`tokenizer.json` (Hugging Face, ByteLevel BPE), {' + '.join(f'`{os.path.basename(f)}`' for f in files)} (float32, {size:,} bytes, tied "
      "embeddings, masked blocks stored as exact zeros).\n")
    w("## Data\n")
    w("English text from Debian 12 packages (`models/train/data_long.py`); held-out split by document "
      "(sha1 of the document id mod 1000 < 30); the World English Bible is not used (kept for evaluation).\n")
    w("| package | licence | MB train | MB held-out |")
    w("| --- | --- | --- | --- |")
    for v in st["sources"].values():
        w(f"| {v['package']} | {v['licence']} | {v['train_bytes'] / 1e6:.2f} | {v['val_bytes'] / 1e6:.2f} |")
    w(f"| **total** | | {st['total_bytes']['train'] / 1e6:.2f} | {st['total_bytes']['val'] / 1e6:.2f} |\n")
    w("## Tokenizer\n")
    ts = json.load(open(a.tokenizer_stats))
    w(f"Byte-level BPE, vocabulary {cfg['vocab_size']} (256 bytes, merges, `<|endoftext|>`), trained on the "
      f"training split by `models/train/bpe.py`. Held-out English: **{ts['bytes_per_token']:.3f} bytes per token** "
      f"({ts['heldout_bytes']:,} bytes of {ts['docs']} held-out documents, {ts['heldout_tokens']:,} tokens, measured "
      "in @huggingface/tokenizers by `models/train/check_tokenizer.mjs`, whose ids equal the Python encoder's). "
      f"decode(encode(x)) = x on every held-out document and {ts['awkward_strings']} random and awkward UTF-8 strings."
      + (f" Over the evaluation windows (which include the `<|endoftext|>` separators): {d['bytes_per_token']:.3f}."
         if d else "") + "\n")
    w("## Architecture\n")
    c = ColmConfig(**{k: cfg[k] for k in ("vocab_size", "n_layers", "head_dim", "chain_heads", "kv_heads",
                                          "ffn_chain_dims", "rope_theta", "norm_eps", "max_position",
                                          "tie_embeddings")})
    w(f"{cfg['n_layers']} layers, head_dim {cfg['head_dim']}, chain_heads {cfg['chain_heads']}, kv_heads "
      f"{cfg['kv_heads']} (keys/values from chain 1), SwiGLU {cfg['ffn_chain_dims']}, RoPE θ {cfg['rope_theta']}, "
      f"tied embeddings. Non-zero parameters per k: {', '.join(f'{param_count(c, k):,}' for k in range(1, n + 1))}.\n")
    w("## Training runs\n")
    w("| run | what | steps | tokens | trained non-zero params | tokens × params | train time |")
    w("| --- | --- | --- | --- | --- | --- | --- |")
    for name, what in RUNS:
        e = ev[name]
        if not e:
            w(f"| {name} | {what} | not evaluated | | | | |")
            continue
        t, p = tokens_params(e)
        w(f"| {name} | {what} | {e['step']} | {t:,} | {p:,} | {t * p:.2e} | {e['train_seconds'] / 3600:.2f} h |")
    stages = [ev[s] for s in ("long-c2", "long-c4", "long-c4b")]
    if all(stages):
        tp = [tokens_params(e) for e in stages]
        spent = sum(t * p for t, p in tp)
        tokens = sum(t for t, _ in tp)
        joint = tokens * param_count(ColmConfig(**stages[-1]["config"]))
        w(f"\nThe default model's three stages: {tokens:,} tokens, {spent:.2e} tokens × trained non-zero parameters, "
          f"against {joint:.2e} to train all 4 chains jointly on as many tokens ({(1 - spent / joint) * 100:.0f}% less).")
    w("")
    w("## Held-out loss\n")
    w("Nats per token over the held-out windows of 2048 tokens; perplexity per token; bits per byte.\n")
    w("| run | k | loss | ppl | bits/byte |")
    w("| --- | --- | --- | --- | --- |")
    for name, _ in RUNS:
        e = ev[name]
        if not e:
            continue
        for k in sorted(e["val_loss"], key=int):
            w(f"| {name} | {k} | {e['val_loss'][k]:.4f} | {e['val_ppl'][k]:.1f} | {e['val_bits_per_byte'][k]:.4f} |")
    if d:
        ls = [d["val_loss"][str(k)] for k in range(1, n + 1)]
        w(f"\nDefault model, strictly better as k grows: {all(ls[i + 1] < ls[i] for i in range(n - 1))}.")
    dn, jt = ev["long-dense"], ev["long-joint4"]
    if dn and jt:
        r = jt["val_loss"][str(n)] / dn["val_loss"]["1"]
        w(f"Joint 4-chain k={n} vs dense at the same tokens: {jt['val_loss'][str(n)]:.4f} vs "
          f"{dn['val_loss']['1']:.4f} ({(r - 1) * 100:+.1f}%).")
    mi = ev["long-mini-c4"]
    if mi and jt:
        w("Progressive (mini) vs joint at the same 1.64 M tokens, per k: "
          + ", ".join(f"k={k} {mi['val_loss'][str(k)]:.4f} vs {jt['val_loss'][str(k)]:.4f}" for k in range(1, n + 1))
          + ".")
        # mini's first stage is long-c2's first half at its own (2-chain) size: as many tokens as its second
        t2, p2 = tokens_params(mi)
        progressive = t2 * param_count(ColmConfig(**mi["config"]), mi.get("n_old", 2)) + t2 * p2
        tj, pj = tokens_params(jt)
        w(f"Compute (tokens × trained non-zero parameters): progressive {progressive:.2e} "
          f"({t2:,} tokens at 2 chains, then {t2:,} training the 2 new chains) against {tj * pj:.2e} "
          f"jointly ({(1 - progressive / (tj * pj)) * 100:.0f}% less), for a higher loss at every k at this budget.")
    w("")
    if a.bench:
        b = json.load(open(a.bench))
        w("## Decode speed in colm-serve\n")
        w(b.get("how", ""))
        w("\n| k | tokens/s |")
        w("| --- | --- |")
        for k, v in sorted(b["decode_tok_s"].items(), key=lambda kv: int(kv[0])):
            w(f"| {k} | {v:.1f} |")
        w("")
    if d:
        w("## Samples (greedy)\n")
        ls_ = d.get("long_prompt_sample")
        if ls_:
            w(f"After a {ls_['prompt_tokens']}-token held-out prompt (GNU Coding Standards) ending in "
              f"`…{ls_['prompt_tail'][-100:]!r}`:\n")
            for k, t in ls_["continuations"].items():
                w(f"- k={k}: `{t!r}`")
            w("")
        for p, s in d["samples"].items():
            for k, t in s.items():
                w(f"- k={k}: `{t!r}`")
        w("")
    w("## Reproduce\n")
    w("    bash models/train/run_long.sh   # stages 1, 2, 2b (the default model), then the comparisons")
    w("    bash models/train/install_long.sh   # export to models/colm-long, golden fixtures, expansion checks, tests")
    w("    # evaluate_long.py per run, then card_long.py (see models/train/NOTES-long.md)\n")
    with open(a.out, "w") as f:
        f.write("\n".join(L))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
