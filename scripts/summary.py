"""The model table: reports/summary.md, summary.html, summary.csv and an accuracy-vs-throughput plot.

Thin CLI over effzoo.steps.summary; the rules run it as `python -m summary` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.summary import main

if __name__ == "__main__":
    sys.exit(run_main(main))
