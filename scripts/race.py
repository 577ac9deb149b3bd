"""race/<variant>.json: a variant's candidate builds timed in one process, and the deploy decision made on them.

Thin CLI over effzoo.steps.race; the rules run it as `python -m race` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.race import main

if __name__ == "__main__":
    sys.exit(run_main(main))
