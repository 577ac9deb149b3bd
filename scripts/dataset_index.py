"""Index a validation set (effzoo.dataset): index.tsv and classes.txt.

Thin CLI over effzoo.steps.dataset_index; the rules run it as `python -m dataset_index` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.dataset_index import main

if __name__ == "__main__":
    sys.exit(run_main(main))
