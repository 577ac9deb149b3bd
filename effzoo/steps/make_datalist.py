"""Write the datalist of a set of npz shards: one row per image, in shard order.

datalist.tsv columns: shard file, row in shard, image file (relative to the dataset root), label.
skipped.tsv lists the images left out at preprocessing (on_bad_image: skip) with the reason.

CLI: python -m make_datalist --shards npz/.../shard-*.npz --out datalist.tsv --skipped skipped.tsv
"""
from __future__ import annotations

import argparse
from pathlib import Path

from effzoo.common import LOG, atomic_path
from effzoo.shard_io import read_small


def make_datalist(shards: list[str], out: str, skipped_out: str) -> dict:
    rows, skipped = [], []
    for s in shards:
        files, labels, skip = read_small(s, "files", "labels", "skipped")
        rows.extend(f"{Path(s).name}\t{i}\t{f}\t{int(lab)}\n" for i, (f, lab) in enumerate(zip(files, labels)))
        skipped.extend(f"{x}\n" for x in skip)
    with atomic_path(skipped_out) as tmp:
        tmp.write_text("".join(skipped), encoding="utf-8")
    with atomic_path(out) as tmp:
        tmp.write_text("shard\trow\tfile\tlabel\n" + "".join(rows), encoding="utf-8")
    LOG.info("%s: %d images in %d shards, %d skipped", out, len(rows), len(shards), len(skipped))
    return {"images": len(rows), "skipped": len(skipped)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--skipped", required=True)
    a = ap.parse_args(argv)
    make_datalist(a.shards, a.out, a.skipped)
