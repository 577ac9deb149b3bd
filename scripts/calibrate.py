"""Bounded-memory int8 calibration: class-balanced calibration sets and streaming statistics.

Thin CLI over effzoo.steps.calibrate; the rules run it as `python -m calibrate` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.calibrate import main

if __name__ == "__main__":
    sys.exit(run_main(main))
