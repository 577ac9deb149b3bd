"""Write the datalist of a set of npz shards: one row per image, in shard order.

Thin CLI over effzoo.steps.make_datalist; the rules run it as `python -m make_datalist` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.make_datalist import main

if __name__ == "__main__":
    sys.exit(run_main(main))
