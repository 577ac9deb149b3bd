"""Throughput and latency of a build, with timm's PyTorch eager model as the baseline, in one process.

Thin CLI over effzoo.steps.benchmark; the rules run it as `python -m benchmark` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.benchmark import main

if __name__ == "__main__":
    sys.exit(run_main(main))
