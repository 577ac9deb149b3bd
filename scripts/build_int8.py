"""Build a deployable int8 model ("vacc" build) from the calibrated float model, for ONNX Runtime or OpenVINO.

Thin CLI over effzoo.steps.build_int8; the rules run it as `python -m build_int8` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.build_int8 import main

if __name__ == "__main__":
    sys.exit(run_main(main))
