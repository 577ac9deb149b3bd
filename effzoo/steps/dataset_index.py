"""Index a validation set (effzoo.dataset): index.tsv and classes.txt.

CLI: python -m dataset_index ROOT --out index.tsv --classes classes.txt --num-classes 1000
"""
from __future__ import annotations

import argparse

from effzoo.common import atomic_path
from effzoo.dataset import build_index, write_index


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--out", required=True, help="index TSV to write")
    ap.add_argument("--classes", required=True, help="class names file to write (one a line)")
    ap.add_argument("--num-classes", type=int, required=True)
    a = ap.parse_args(argv)
    rows, names = build_index(a.root, a.num_classes)
    with atomic_path(a.classes) as tmp:
        tmp.write_text("".join(n + "\n" for n in names), encoding="utf-8")
    write_index(rows, a.out)
