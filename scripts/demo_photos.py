"""Write the embedded demo dataset (effzoo.demo) in the ILSVRC2012 val layout.

Thin CLI over effzoo.steps.demo_photos; the rules run it as `python -m demo_photos` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.demo_photos import main

if __name__ == "__main__":
    sys.exit(run_main(main))
