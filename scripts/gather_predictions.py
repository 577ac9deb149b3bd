"""Gather the parts of a build's predictions into one predictions.csv, logits.npy and predict.json.

Thin CLI over effzoo.steps.gather_predictions; the rules run it as `python -m gather_predictions` with scripts/ on
PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.gather_predictions import main

if __name__ == "__main__":
    sys.exit(run_main(main))
