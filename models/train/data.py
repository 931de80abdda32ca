"""Corpus preparation for the colm-kjv model.

Source: the King James Bible as printed by the Debian `bible-kjv` package
(`bible "Gen1:1-Rev22:21"`).  The printout has a "Book N" header per chapter,
verse numbers, and hard line wrapping at ~80 columns.  We remove headers and
verse numbers, undo the wrapping, and emit ONE VERSE PER LINE ("\n"-terminated),
so the model learns running text.

Split: chapters are numbered globally 0..1188 in canonical order; every chapter
whose global index is congruent to 19 mod 20 (i.e. the 20th, 40th, ...) is held
out for validation (~5% of the text, spread over the whole Bible).  Everything
else is training data.

Tokenizer: byte-level, token id = UTF-8 byte value (the text is pure ASCII).
"""
import os
import re
import subprocess
import sys

import numpy as np

HEADER = re.compile(r"^(?:[1-3] )?[A-Z][A-Za-z ]* \d+$")
VERSE = re.compile(r"^\s*(\d+) (.*)$")
VAL_EVERY = 20
VAL_OFFSET = 19


def read_raw():
    out = subprocess.run(["bible", "Gen1:1-Rev22:21"], check=True,
                         stdout=subprocess.PIPE).stdout
    return out.decode("utf-8")


def parse_chapters(raw):
    """Return a list of (header, [verse strings])."""
    lines = raw.split("\n")
    chapters = []
    cur = None
    verse = None
    for i, line in enumerate(lines):
        if HEADER.match(line) and (i == 0 or lines[i - 1].strip() == ""):
            if cur is not None:
                if verse is not None:
                    cur[1].append(verse)
                chapters.append(cur)
            cur = (line, [])
            verse = None
            continue
        if line.strip() == "":
            continue
        m = VERSE.match(line)
        if m and line.startswith(" "):
            if verse is not None:
                cur[1].append(verse)
            verse = m.group(2).strip()
        else:
            assert verse is not None, f"continuation line without verse: {line!r}"
            verse = verse + " " + line.strip()
    if cur is not None:
        if verse is not None:
            cur[1].append(verse)
        chapters.append(cur)
    return chapters


def build(out_dir):
    raw = read_raw()
    chapters = parse_chapters(raw)
    assert len(chapters) == 1189, len(chapters)
    train_parts, val_parts = [], []
    n_verses = 0
    for ci, (_, verses) in enumerate(chapters):
        n_verses += len(verses)
        text = "".join(re.sub(r"\s+", " ", v) + "\n" for v in verses)
        (val_parts if ci % VAL_EVERY == VAL_OFFSET else train_parts).append(text)
    train = "".join(train_parts).encode("utf-8")
    val = "".join(val_parts).encode("utf-8")
    os.makedirs(out_dir, exist_ok=True)
    np.frombuffer(train, dtype=np.uint8).tofile(os.path.join(out_dir, "train.bin"))
    np.frombuffer(val, dtype=np.uint8).tofile(os.path.join(out_dir, "val.bin"))
    stats = dict(chapters=len(chapters), verses=n_verses,
                 val_chapters=sum(1 for ci in range(len(chapters)) if ci % VAL_EVERY == VAL_OFFSET),
                 train_bytes=len(train), val_bytes=len(val))
    return stats


def load(data_dir):
    if not os.path.exists(os.path.join(data_dir, "train.bin")):
        print("preparing data:", build(data_dir), file=sys.stderr)
    train = np.fromfile(os.path.join(data_dir, "train.bin"), dtype=np.uint8)
    val = np.fromfile(os.path.join(data_dir, "val.bin"), dtype=np.uint8)
    return train, val


if __name__ == "__main__":
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "data")
    print(build(d))
