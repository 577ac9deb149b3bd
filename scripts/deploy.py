"""deploy/<variant>/: the fastest build of a variant within an accuracy budget, ready to run without Snakemake.

Thin CLI over effzoo.steps.deploy; the rules run it as `python -m deploy` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.deploy import main

if __name__ == "__main__":
    sys.exit(run_main(main))
