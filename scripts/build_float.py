"""Build a deployable float model ("vacc" build): fp32 or fp16, for ONNX Runtime or (fp32) OpenVINO.

Thin CLI over effzoo.steps.build_float; the rules run it as `python -m build_float` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.build_float import main

if __name__ == "__main__":
    sys.exit(run_main(main))
