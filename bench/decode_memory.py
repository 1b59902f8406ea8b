"""Peak RSS of decoding one very large, very compressible PNG (the issue-16 case).

A 10,900 x 10,900 16-bit greyscale PNG is ~250 kB on disk and 237 MB once decoded; before the
bounded decode, ``load_image`` needed ~3.6 GB of RSS for it (64-bit copies for the 16 -> 8 bit
conversion). The same for a half-transparent 8-bit RGBA PNG (alpha compositing). Each row of the
table is a fresh ``python`` process that imports ``edgederm.data.images``, decodes once, and
reports ``VmHWM`` (the kernel's peak RSS), so rows do not share a heap.

    python bench/decode_memory.py                 # 10,900 px, the issue's case
    python bench/decode_memory.py --side 4000     # quicker
    PYTHONPATH=/some/other/checkout python bench/decode_memory.py --decode-size 512   # another version

Rows: the default pixel limit (refused from the header), the limit raised (exact decode: every
pixel), and spec-driven (``decode_size`` of a 224-px spec: the decoder may box-reduce while both
sides stay >= 512).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

# VmHWM (peak RSS of this process image), not ru_maxrss: Linux carries ru_maxrss across exec,
# so a child of a big parent would report the parent's peak.
CHILD = r"""
import json, re, sys, time
from edgederm.data import images
from edgederm.errors import ImageError
def hwm():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read())[1])
base = hwm()
path, limit, dsize = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kw = {"max_pixels": limit} if limit else {}
if dsize:
    kw["draft_size"] = dsize  # the name old and new load_image both take, to compare versions
t0 = time.perf_counter()
try:
    img = images.load_image(path, **kw)
    result = f"{img.size[0]}x{img.size[1]} {img.mode}"
except ImageError as e:
    result = "refused: " + str(e).split(" (", 1)[0].split(" = ", 1)[1]
ms = (time.perf_counter() - t0) * 1e3
peak = hwm()
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "ms": ms, "result": result}))
"""


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_png(path: Path, side: int, kind: str) -> None:
    """A ``side`` x ``side`` PNG written row by row (never held in memory): 16-bit greyscale
    gradients, or 8-bit RGBA with a half-transparent band. Rows repeat in blocks of 64 and use
    PNG's "Up" filter, so the file stays a few hundred kB."""
    gray16 = kind == "gray16"
    color_type, depth, bpp = (0, 16, 2) if gray16 else (6, 8, 4)
    comp = zlib.compressobj(9)
    idat = []
    x = list(range(side))
    prev_block = None
    for y in range(side):
        block = y // 64
        if block != prev_block:
            if gray16:
                vals = [(v * 6 + block * 257) & 0xFFFF for v in x]
                row = struct.pack(f">{side}H", *vals)
            else:
                alpha = 128 if (block // 8) % 2 else 255
                row = bytes(b for v in x for b in ((v + block) & 255, (v * 3) & 255, block & 255, alpha))
            first = b"\x00" + row  # filter None for the first row of a block
            prev_block = block
            idat.append(comp.compress(first))
        else:
            idat.append(comp.compress(b"\x02" + bytes(side * bpp)))  # "Up": identical to the row above
    idat.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(idat)) + _chunk(b"IEND", b""))


def measure(path: Path, limit: int, dsize: int) -> dict:
    # cwd: python -c puts the working directory first on sys.path; PYTHONPATH must pick edgederm.
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(limit), str(dsize)],
                         capture_output=True, text=True, env=os.environ.copy(), cwd=path.parent)
    if out.returncode != 0:
        return {"peak_mb": float("nan"), "base_mb": float("nan"), "ms": float("nan"), "result": out.stderr.strip().splitlines()[-1][:80]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=10_900)
    ap.add_argument("--kinds", default="gray16,rgba8")
    ap.add_argument("--decode-size", type=int, default=None,
                    help="default: decode_size of a 224-px spec (give 512 for versions without it)")
    args = ap.parse_args()
    d224 = args.decode_size
    if d224 is None:
        from edgederm.preprocess import decode_size, spec_for_size

        d224 = decode_size(spec_for_size(224)) or 0
    raised = args.side * args.side + 1
    print(f"| PNG ({args.side}x{args.side}) | file | case | result | peak RSS (MB) | of which imports | time (ms) |")
    print("|---|---|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="decode-memory-") as tmp:
        for kind in args.kinds.split(","):
            path = Path(tmp) / f"{kind}.png"
            t0 = time.perf_counter()
            write_png(path, args.side, kind)
            print(f"<!-- wrote {path.name}: {path.stat().st_size / 1e3:.0f} kB in {time.perf_counter() - t0:.1f} s -->", file=sys.stderr)
            for case, limit, dsize in (("default limit", 0, 0), ("limit raised, exact", raised, 0),
                                       (f"limit raised, 224 spec (decode_size {d224})", raised, d224)):
                r = measure(path, limit, dsize)
                print(f"| {kind} | {path.stat().st_size / 1e3:.0f} kB | {case} | {r['result']} | {r['peak_mb']:.0f} | "
                      f"{r['base_mb']:.0f} | {r['ms']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
