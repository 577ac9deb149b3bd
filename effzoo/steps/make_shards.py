"""Preprocess one shard of a dataset index into an npz file of uint8 images.

Each shard holds rows [i*S, (i+1)*S) of the index: ``images`` (N, H, W, 3) uint8 RGB, exactly what timm's
eval transform produces before ToTensor/Normalize; ``labels`` (N,) int64; ``files`` (N,) str; and the sha256
of every image row, which readers check (shard_io.py). ``--storage png`` keeps each row as a lossless PNG
instead (about half the disk at 456 and up; encoded in the workers and checked to decode exactly). With
``--on-bad-image skip`` undecodable images are left out and listed in the shard's ``skipped`` array;
by default they stop the run with an error naming the file.

CLI: python -m make_shards --root R --index I.tsv --shard 0 --shard-size 256 --size 224 --resize 256 \
        --interpolation bicubic --on-bad-image error --workers 2 --storage raw --out shard-00000.npz [--fast]
"""
from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from effzoo import preprocess
from effzoo.common import LOG, Progress, ZooError
from effzoo.dataset import read_index
from effzoo.shard_io import STORAGES, png_bytes, write_shard


def _one(args):
    """(uint8 image, its PNG file or None, None) of one image, or (None, None, error) when it is skipped."""
    path, spec, skip, storage = args
    try:
        if spec.get("fast", False):
            img = preprocess.fast_transform_uint8(path, spec)[0]
        else:
            img = preprocess.transform_uint8(preprocess.load_image(path), spec)
    except ZooError as e:
        if not skip:
            raise
        return None, None, str(e)
    return img, (png_bytes(img) if storage == "png" else None), None


def make_shard(root, rows, spec: dict, out, workers: int, on_bad_image: str, storage: str = "raw") -> dict:
    """Preprocess `rows` (file, label) into `out` atomically, rows stored as `storage`; return counts."""
    skip = on_bad_image == "skip"
    jobs = [(Path(root) / f, spec, skip, storage) for f, _ in rows]
    progress = Progress(len(rows), f"preprocess {Path(out).name}")
    size = spec["input_size"][1]
    arr = np.empty((len(rows), size, size, 3), np.uint8)  # filled in place: one copy of the shard in memory
    labels, files, skipped, encoded = [], [], [], []
    results = (ProcessPoolExecutor(workers).map(_one, jobs, chunksize=8) if workers > 1 else map(_one, jobs))
    for (f, lab), (img, png, err) in zip(rows, results):
        if err is not None:
            LOG.warning("skipping bad image: %s", err)
            skipped.append(f"{f}\t{err}")
        else:
            arr[len(files)] = img
            encoded.append(png)
            labels.append(lab)
            files.append(f)
        progress.update()
    write_shard(out, arr[:len(files)], labels, files, skipped, storage, encoded if storage == "png" else None)
    return {"images": len(files), "skipped": len(skipped)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--shard", type=int, required=True)
    ap.add_argument("--shard-size", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--resize", type=int, required=True)
    ap.add_argument("--interpolation", required=True)
    ap.add_argument("--fast", action="store_true", help="torchvision JPEG decode + torch resize (not bit-exact)")
    ap.add_argument("--on-bad-image", choices=["error", "skip"], required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--storage", choices=STORAGES, default="raw", help="image rows as raw uint8 or as PNG files")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    rows = read_index(a.index)[a.shard * a.shard_size:(a.shard + 1) * a.shard_size]
    if not rows:
        raise ZooError(f"{a.index}: shard {a.shard} is empty (shard size {a.shard_size}, "
                       f"{len(read_index(a.index))} rows)")
    spec = {"input_size": [3, a.size, a.size], "resize_size": a.resize, "interpolation": a.interpolation,
            "fast": a.fast}
    counts = make_shard(a.root, rows, spec, a.out, a.workers, a.on_bad_image, a.storage)
    LOG.info("%s: %d images, %d skipped, stored %s", a.out, counts["images"], counts["skipped"], a.storage)
