"""Preprocess one shard of a dataset index into an npz file of uint8 images.

Thin CLI over effzoo.steps.make_shards; the rules run it as `python -m make_shards` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.make_shards import main

if __name__ == "__main__":
    sys.exit(run_main(main))
