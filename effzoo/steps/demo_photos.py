"""Write the embedded demo dataset (effzoo.demo) in the ILSVRC2012 val layout.

CLI: python -m demo_photos OUTDIR   (writes OUTDIR/val/*.JPEG, val_label.txt, label.txt)
"""
from __future__ import annotations

import argparse

from effzoo.demo import write_demo_dataset


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    write_demo_dataset(ap.parse_args(argv).outdir)
