"""OpenVINO builds: the deployable ONNX graph (the same one the ONNX Runtime build runs) as OpenVINO IR.

The IR is written with fp32 weights (OpenVINO's default would compress them to fp16) as model.xml + model.bin,
each written atomically; build.json, written last, records both files' sha256. OpenVINO names the nodes it
creates from a process-wide counter (Convert_216, Range_15); they are renamed by their position in the graph, so that
the same ONNX file always gives the same IR bytes.
"""
from __future__ import annotations

import re
from pathlib import Path

from effzoo.common import atomic_path

IR_FILES = ("model.xml", "model.bin")


def convert(onnx_path: str):
    """The OpenVINO model of an ONNX file, as the IR holds it (generated node names made positional)."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    for i, op in enumerate(model.get_ordered_ops()):
        if re.fullmatch(r"[A-Za-z]+_\d+", op.get_friendly_name()):  # generated: TypeName_<counter>
            op.set_friendly_name(f"{op.get_friendly_name().split('_')[0]}_n{i}")
    return model


def save_ir(onnx_path: str, outdir: Path) -> None:
    """Convert an ONNX file to OpenVINO IR in outdir (model.xml + model.bin, fp32 weights)."""
    import openvino as ov

    model = convert(onnx_path)
    with atomic_path(outdir / "model.xml", ".xml") as xml:
        ov.save_model(model, str(xml), compress_to_fp16=False)
        with atomic_path(outdir / "model.bin", ".bin") as bin_path:
            xml.with_suffix(".bin").replace(bin_path)
