"""Export a train_long.py checkpoint to a colm-serve model folder: config.json (no "tokenizer"
key, so the server loads tokenizer.json beside it), model.safetensors (float32, spec names,
masked blocks exactly zero, read back and checked by export.export) and tokenizer.json.

  python3 models/train/export_long.py --run models/train/runs/long-c4 --out models/colm-long --name colm-long

<|endoftext|> (the last id) separates documents in training, so it is both bos_token_id (the
request layer prepends it: a prompt starts as a document does) and eos_token_id (generation
stops when the model ends a document).
"""
import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def export_long(run, out, name, tokenizer):
    size = export.export(run, out, name)
    tj = json.load(open(tokenizer))
    eot = next(t["id"] for t in tj["added_tokens"] if t["content"] == "<|endoftext|>")
    cpath = os.path.join(out, "config.json")
    cfg = json.load(open(cpath))
    assert cfg["vocab_size"] == eot + 1, (cfg["vocab_size"], eot)
    cfg.pop("tokenizer")
    cfg["bos_token_id"] = eot
    cfg["eos_token_id"] = eot
    with open(cpath, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    shutil.copyfile(tokenizer, os.path.join(out, "tokenizer.json"))
    print(f"config: bos = eos = {eot} (<|endoftext|>), tokenizer.json copied; model.safetensors {size} bytes")
    return size


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="colm-long")
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "tokenizer-long.json"))
    a = ap.parse_args()
    export_long(a.run, a.out, a.name, a.tokenizer)
