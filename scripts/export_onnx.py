"""Export a timm EfficientNet to ONNX (dynamic batch) and check it against PyTorch on real photos.

Thin CLI over effzoo.steps.export_onnx; the rules run it as `python -m export_onnx` with scripts/ on PYTHONPATH.
"""
import sys

from effzoo.common import run_main
from effzoo.steps.export_onnx import main

if __name__ == "__main__":
    sys.exit(run_main(main))
