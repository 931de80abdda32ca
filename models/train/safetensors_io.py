"""Minimal safetensors writer/reader (no `safetensors` package needed).

Format: 8-byte little-endian u64 header length N, then N bytes of JSON header
{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
padded with spaces to a multiple of 8, then the raw little-endian tensor bytes
(offsets relative to the start of the data section).
"""
import json
import struct

import numpy as np

DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4")}


def save(path, tensors, metadata=None):
    """tensors: ordered dict name -> float32 numpy array (or torch tensor)."""
    header = {}
    blobs = []
    off = 0
    for name, t in tensors.items():
        a = np.ascontiguousarray(np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t,
                                            dtype=np.float32)).astype("<f4")
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def load(path):
    """Returns (dict name -> numpy array, metadata dict). Validates offsets."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    data = buf[8 + n:]
    out = {}
    spans = []
    for name, h in header.items():
        dt = DTYPES[h["dtype"]]
        b, e = h["data_offsets"]
        count = int(np.prod(h["shape"])) if h["shape"] else 1
        assert e - b == count * dt.itemsize, name
        out[name] = np.frombuffer(data[b:e], dtype=dt).reshape(h["shape"]).copy()
        spans.append((b, e))
    spans.sort()
    pos = 0
    for b, e in spans:
        assert b == pos, "gap or overlap in data section"
        pos = e
    assert pos == len(data), "trailing bytes after last tensor"
    return out, meta
