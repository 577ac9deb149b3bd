"""Run a vacc build over npz shards on its own runtime: top-k class ids and softmax probabilities per image.

Thin CLI over effzoo.steps.predict; the rules run it as `python -m predict` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.predict import main

if __name__ == "__main__":
    sys.exit(run_main(main))
