"""English corpus for the long-context default model, rebuilt from installed Debian packages.

  apt-get install -y --no-install-recommends $(python3 models/train/data_long.py --packages)
  python3 models/train/data_long.py --out models/train/data-long

Every source is a Debian package of Debian 12 (bookworm) whose licence allows redistribution
and derivative works (see SOURCES below and NOTES-long.md).  Each source is cut into
*documents* (a file, a Bible book, a run of ~64 KB of dictionary entries, ...).  A document
goes wholly to the held-out split when sha1("source/doc-id") mod 1000 < VAL_PER_MILLE, so
no document is shared between training and held-out text.

The World English Bible is NOT used (it is kept for evaluation); no package here contains it.

Output (in --out):
  train.txt, val.txt   the documents' UTF-8 text, each followed by one NUL byte (NUL never occurs
                       in the text: tidy() removes it), so read_docs() can split them back out;
                       bpe.py encode writes <|endoftext|> before every document.
  docs.tsv             source, doc id, split, bytes (one row per document)
  stats.json           bytes and documents per source and split, with the licences
"""
import argparse
import glob
import gzip
import hashlib
import html
import html.parser
import json
import os
import re
import subprocess
import sys

VAL_PER_MILLE = 30          # ~3% of documents held out
GCIDE_KEEP_EVERY = 4        # a quarter of GCIDE (~8 MB): it is 40 MB of dictionary markup
DICT_CHUNK = 64 * 1024      # dictionary / fortune documents: runs of ~64 KB of whole entries

# package, licence (from /usr/share/doc/<package>/copyright), what is taken
SOURCES = [
    ("dict-gcide", "GPL-2+ (GCIDE: Webster's 1913, public domain, with GPL-2+ additions and markup)", "gcide"),
    ("dict-devil", "public domain (Ambrose Bierce, The Devil's Dictionary, 1911)", "devil"),
    ("dict-jargon", "public domain (The Jargon File 4.4.7)", "jargon"),
    ("dict-foldoc", "GFDL-1.1+ (Free On-line Dictionary of Computing)", "foldoc"),
    ("fortunes", "BSD (Regents of the University of California, 1991), per /usr/share/doc/fortunes/copyright", "fortunes"),
    ("bible-kjv", "public domain text (KJV, via bible-kjv-text: free use, copy, modify, distribute)", "kjv"),
    ("linux-doc-6.1", "GPL-2 (Linux kernel Documentation/, translations excluded)", "linux"),
    ("python3.11-doc", "PSF-2.0 (Python documentation sources)", "python"),
    ("perl-doc", "GPL-1+ or Artistic (Perl core documentation, pod)", "perl"),
    ("git-doc", "GPL-2 (Git documentation, AsciiDoc sources)", "git"),
    ("postgresql-doc-15", "PostgreSQL licence (BSD-like; PostgreSQL 15 manual, HTML stripped)", "postgresql"),
    ("debian-handbook", "GPL-2+ or CC-BY-SA-3.0 (The Debian Administrator's Handbook, en-US HTML stripped)",
     "handbook"),
    ("debian-policy", "GPL-2+ (Debian Policy Manual and related texts)", "policy"),
    ("gnu-standards", "GFDL-1.3+ without invariant sections (GNU Coding Standards, Information for Maintainers)",
     "gnu"),
]


def read_gz_or_plain(path):
    with (gzip.open(path, "rb") if path.endswith((".gz", ".dz")) else open(path, "rb")) as f:
        return f.read().decode("utf-8", "replace")


class _Text(html.parser.HTMLParser):
    SKIP = {"script", "style", "head", "title"}
    BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr", "dt", "dd", "table",
             "section", "blockquote"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip, self.pre = [], 0, 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self.out.append("\n\n" if tag in ("p", "pre", "h1", "h2", "h3", "h4", "div", "section") else "\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data):
        if self.skip:
            return
        self.out.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_text(s):
    p = _Text()
    p.feed(s)
    return tidy("".join(p.out))


def tidy(s):
    """Normalise line ends, strip trailing blanks, at most one empty line in a row."""
    s = s.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    s = "\n".join(line.rstrip() for line in s.split("\n"))
    s = re.sub(r"\n{3,}", "\n\n", s)
    return s.strip("\n") + "\n"


def chunked(entries, size=DICT_CHUNK):
    """Group consecutive entries into documents of about `size` bytes."""
    doc, n, i = [], 0, 0
    for e in entries:
        doc.append(e)
        n += len(e)
        if n >= size:
            yield i, "".join(doc)
            doc, n, i = [], 0, i + 1
    if doc:
        yield i, "".join(doc)


def dict_entries(name):
    raw = read_gz_or_plain(f"/usr/share/dictd/{name}.dict.dz")
    # dictd files: entries separated by blank lines before a line in column 0; the 00-database-*
    # pseudo entries come first.  Cut at an empty line followed by a non-indented line.
    parts = re.split(r"\n\n(?=\S)", raw)
    out = []
    for p in parts:
        if p.startswith("00-database") or p.startswith("00database") or "database was created" in p[:200]:
            continue
        if name == "gcide":
            p = re.sub(r"\\[^\\\n]{0,80}\\", "", p)          # pronunciation \Ab`di*ca"tion\
            p = re.sub(r"\n\s*\[(1913 Webster|PJC|WordNet 1\.5|Century Dict\.)[^\]]*\]", "", p)
        p = re.sub(r"\n[ \t]+", "\n", p)                     # undo the hanging indent
        out.append(tidy(p) + "\n")
    return out


def src_dict(name, keep_every=1):
    """Dictionary documents; with keep_every=m only every m-th document (by index) is used, so
    that one large dictionary does not dominate the corpus (and the tokenizer) with its markup."""
    def gen():
        for i, d in chunked(dict_entries(name)):
            if i % keep_every == 0:
                yield i, d
    return gen


def src_fortunes():
    files = sorted(f for f in glob.glob("/usr/share/games/fortunes/*")
                   if os.path.isfile(f) and not f.endswith((".dat", ".u8")))
    for f in files:
        raw = open(f, "rb").read().decode("utf-8", "replace")
        cookies = [tidy(c) + "\n" for c in raw.split("\n%\n") if c.strip()]
        for i, d in chunked(cookies, 32 * 1024):
            yield f"{os.path.basename(f)}/{i}", d


def src_kjv():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import data as kjv  # the colm-kjv corpus code: one verse per line
    chapters = kjv.parse_chapters(kjv.read_raw())
    books = {}
    order = []
    for header, verses in chapters:
        book = header.rsplit(" ", 1)[0]
        if book not in books:
            books[book] = []
            order.append(book)
        books[book].append("".join(re.sub(r"\s+", " ", v) + "\n" for v in verses))
    for b in order:
        yield b, "\n".join(books[b])


def src_files(pattern, exclude=None, convert=None):
    def gen():
        for f in sorted(glob.glob(pattern, recursive=True)):
            if exclude and re.search(exclude, f):
                continue
            if not os.path.isfile(f):
                continue
            t = read_gz_or_plain(f)
            t = convert(t) if convert else tidy(t)
            if len(t) > 200:
                yield f, t
    return gen


GENERATORS = {
    "gcide": src_dict("gcide", keep_every=GCIDE_KEEP_EVERY),
    "devil": src_dict("devil"),
    "jargon": src_dict("jargon"),
    "foldoc": src_dict("foldoc"),
    "fortunes": src_fortunes,
    "kjv": src_kjv,
    "linux": src_files("/usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz", exclude=r"/translations/"),
    "python": src_files("/usr/share/doc/python3.11-doc/html/_sources/**/*.rst.txt"),
    "perl": src_files("/usr/share/perl/5.36/pod/*.pod"),
    "git": src_files("/usr/share/doc/git-doc/*.txt"),
    "postgresql": src_files("/usr/share/doc/postgresql-doc-15/html/*.html", convert=html_text),
    "handbook": src_files("/usr/share/doc/debian-handbook/html/en-US/*.html", convert=html_text),
    "policy": src_files("/usr/share/doc/debian-policy/*.txt.gz"),
    "gnu": src_files("/usr/share/doc/gnu-standards/*.text.gz"),
}


def is_val(source, doc_id):
    h = int(hashlib.sha1(f"{source}/{doc_id}".encode()).hexdigest(), 16)
    return h % 1000 < VAL_PER_MILLE


def build(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    ftr = open(os.path.join(out_dir, "train.txt"), "wb")
    fva = open(os.path.join(out_dir, "val.txt"), "wb")
    rows, stats = [], {}
    for pkg, lic, key in SOURCES:
        st = stats.setdefault(key, {"package": pkg, "licence": lic, "train_docs": 0, "val_docs": 0,
                                    "train_bytes": 0, "val_bytes": 0})
        for doc_id, text in GENERATORS[key]():
            b = text.encode("utf-8")
            split = "val" if is_val(key, doc_id) else "train"
            (fva if split == "val" else ftr).write(b + b"\x00")
            st[f"{split}_docs"] += 1
            st[f"{split}_bytes"] += len(b)
            rows.append(f"{key}\t{doc_id}\t{split}\t{len(b)}")
        print(f"{key:10s} {pkg:18s} train {st['train_bytes']/1e6:7.2f} MB ({st['train_docs']} docs)  "
              f"val {st['val_bytes']/1e6:5.2f} MB ({st['val_docs']} docs)", file=sys.stderr, flush=True)
    ftr.close()
    fva.close()
    with open(os.path.join(out_dir, "docs.tsv"), "w") as f:
        f.write("source\tdoc\tsplit\tbytes\n" + "\n".join(rows) + "\n")
    tot = {s: sum(v[f"{s}_bytes"] for v in stats.values()) for s in ("train", "val")}
    with open(os.path.join(out_dir, "stats.json"), "w") as f:
        json.dump({"sources": stats, "total_bytes": tot, "val_per_mille": VAL_PER_MILLE}, f, indent=1)
    return tot


def read_docs(path):
    """The documents of train.txt / val.txt (NUL-terminated UTF-8)."""
    raw = open(path, "rb").read()
    return [d.decode("utf-8") for d in raw.split(b"\x00") if d]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data-long"))
    ap.add_argument("--packages", action="store_true", help="print the Debian packages to install")
    a = ap.parse_args()
    if a.packages:
        print(" ".join(p for p, _, _ in SOURCES))
    else:
        print(build(a.out))
