"""Score predictions against labels and write metrics/<variant>.json.

Thin CLI over effzoo.steps.metrics; the rules run it as `python -m metrics` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.metrics import main

if __name__ == "__main__":
    sys.exit(run_main(main))
