#!/usr/bin/env python3
"""Make a GGUF of the same shape as a real one, with random weights.

For a machine a real model file cannot reach (the device machine takes 64 MiB
per call): `header` writes the real file's header (metadata, tokenizer, tensor
table) and a tensor list, a few MB; `fill` (numpy only) appends random tensor
data of the same types. The result loads, tokenizes and runs exactly like the
real model and at the same speed; only its answers are noise. Used for GPU
speed and CPU-vs-GPU logit checks, never for a reported answer.

    python3 benches/gguf_random_weights.py header MODEL.gguf OUT.header
    python3 benches/gguf_random_weights.py fill OUT.header OUT.gguf [SEED]
"""
import json
import struct
import sys

# ggml type id -> (name, block elements, block bytes, offsets of f16 scale fields)
TYPES = {
    0: ("F32", 1, 4, None),
    1: ("F16", 1, 2, None),
    2: ("Q4_0", 32, 18, [0]),
    3: ("Q4_1", 32, 20, [0, 2]),
    6: ("Q5_0", 32, 22, [0]),
    7: ("Q5_1", 32, 24, [0, 2]),
    8: ("Q8_0", 32, 34, [0]),
    12: ("Q4_K", 256, 144, [0, 2]),
    13: ("Q5_K", 256, 176, [0, 2]),
    14: ("Q6_K", 256, 210, [208]),
}
# A scale that gives weights of standard deviation ~0.02 for each format's
# integer range (Q6_K's 8-bit sub-block scales multiply it too).
SCALE = {"Q4_0": 0.004, "Q4_1": 0.003, "Q5_0": 0.002, "Q5_1": 0.0015,
         "Q8_0": 0.0003, "Q4_K": 0.0001, "Q5_K": 0.00005, "Q6_K": 0.00002}


def read_header(path):
    with open(path, "rb") as f:
        buf = f.read(64 << 20)
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = buf[pos:pos + n]
        pos += n
        return s.decode("utf-8", "replace")

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(scalar[t])

    if buf[:4] != b"GGUF":
        sys.exit(f"{path}: not a GGUF file")
    pos = 4
    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    alignment = 32
    for _ in range(n_kv):
        key = string()
        v = value(take("I"))
        if key == "general.alignment":
            alignment = v
    tensors = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        ty, off = take("I"), take("Q")
        if ty not in TYPES:
            sys.exit(f"{path}: tensor {name} has ggml type {ty}, which this script does not fill")
        n = 1
        for d in dims:
            n *= d
        _, be, bb, _ = TYPES[ty]
        tensors.append({"name": name, "dims": dims, "type": ty, "offset": off, "bytes": n // be * bb})
    start = (pos + alignment - 1) // alignment * alignment
    return buf[:start], tensors, version


def header(src, out):
    head, tensors, version = read_header(src)
    meta = json.dumps({"version": version, "tensors": tensors}).encode()
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(meta)) + meta + head)
    print(f"{out}: {len(tensors)} tensors, header {len(head)} bytes")


def fill(hdr, out, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    with open(hdr, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n))
        head = f.read()
    with open(out, "wb") as f:
        f.write(head)
        base = len(head)
        for t in sorted(meta["tensors"], key=lambda t: t["offset"]):
            pad = base + t["offset"] - f.tell()
            assert pad >= 0, t["name"]
            f.write(b"\0" * pad)
            name, be, bb, scales = TYPES[t["type"]]
            if name in ("F32", "F16"):
                dt = np.float32 if name == "F32" else np.float16
                count = t["bytes"] // (4 if name == "F32" else 2)
                # 1-D tensors are norms (1.0); matrices are N(0, 0.02).
                v = np.ones(count) if len(t["dims"]) == 1 else rng.normal(0, 0.02, count)
                f.write(v.astype(dt).tobytes())
                continue
            blocks = rng.integers(0, 256, size=(t["bytes"] // bb, bb), dtype=np.uint8)
            for i, o in enumerate(scales):
                # d > 0 for every block; a min (Q4_1, Q5_1, k-quant dmin) smaller.
                s = np.float16(SCALE[name] * (1.0 if i == 0 else 0.5))
                blocks[:, o:o + 2] = np.frombuffer(s.tobytes(), dtype=np.uint8)
            f.write(blocks.tobytes())
    print(f"{out}: {len(meta['tensors'])} random tensors")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "header":
        header(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "fill":
        fill(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    else:
        sys.exit(__doc__)
