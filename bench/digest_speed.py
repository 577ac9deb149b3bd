"""Cost of integrity checks: sha256 vs crc32 vs blake2b over a 1000-image shard's bytes, and the per-row sha256
that shard readers check (effzoo/shard_io.py), next to the time ONNX Runtime needs to run those images.

usage: python bench/digest_speed.py [--size 224] [--images 1000]
"""
from __future__ import annotations

import argparse
import hashlib
import time
import zlib
from pathlib import Path

import numpy as np


def rate(fn, data: bytes, repeat: int = 3) -> float:
    """MB/s, best of `repeat`."""
    best = min(_timed(fn, data) for _ in range(repeat))
    return len(data) / 1e6 / best


def _timed(fn, data: bytes) -> float:
    t0 = time.perf_counter()
    fn(data)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=1000)
    a = ap.parse_args()
    flags = set(Path("/proc/cpuinfo").read_text().split())
    print("CPU flags:", " ".join(sorted(flags & {"sha_ni", "avx512f", "avx512_vnni", "amx_int8", "avx512_bf16"})))
    shard = np.random.default_rng(0).integers(0, 256, (a.images, a.size, a.size, 3), dtype=np.uint8)
    data = shard.tobytes()
    print(f"shard: {a.images} images at {a.size}: {len(data) / 1e6:.0f} MB")
    for name, fn in (("sha256", lambda d: hashlib.sha256(d).digest()), ("crc32", zlib.crc32),
                     ("blake2b", lambda d: hashlib.blake2b(d).digest()), ("md5", lambda d: hashlib.md5(d).digest())):
        r = rate(fn, data)
        print(f"{name:8s} {r:7.0f} MB/s  -> {len(data) / 1e6 / r:5.2f} s per shard")
    t0 = time.perf_counter()
    for im in shard:
        hashlib.sha256(im.tobytes()).hexdigest()
    rows_s = time.perf_counter() - t0
    print(f"per-row sha256 (what readers check): {rows_s:.2f} s per shard = {1000 * rows_s / a.images:.3f} ms per "
          f"image; ONNX Runtime at 100-500 images/s spends 2-10 ms per image")


if __name__ == "__main__":
    main()
