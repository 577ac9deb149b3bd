"""Build a deployable float model ("vacc" build): fp32 or fp16 for ONNX Runtime, fp32 or bf16 for OpenVINO.

fp32: the model takes the uint8 NHWC tensors of the npz shards directly (graph_edits.fold_preprocessing:
timm's ToTensor/Normalize as graph ops, Softmax appended) and is optimized offline by ONNX Runtime at the
mode's `graph_optimization` level (basic is provider-independent, portable). fp16: float16 weights and
compute; the preprocessing and the softmax stay float32 (exact normalization, stable softmax). With
`runtime: openvino` the same fp32 graph is written as OpenVINO IR (model.xml + model.bin, fp32 weights). bf16: the
same IR, run at bf16 inference precision (build.json details.inference_precision; OpenVINO converts the weights
when it compiles), so it requires a CPU that computes bf16 (avx512_bf16 or amx_bf16: effzoo/cpu_target.py).
fp32 and fp16 builds have no CPU-specific numerics: they run on any x86-64 CPU with AVX2.

CLI: python -m build_float --onnx X.onnx --export-info X.json --spec-json S.json --quant fp32 \
        --options '{"kind": "fp32", "graph_optimization": "basic"}' --outdir vacc/X-fp32
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import onnx
from effzoo.build_manifest import build_parser, checked_source, cpu_record, write_build
from effzoo.build_options import BuildOptions
from effzoo.common import ZooError, atomic_path, read_json
from effzoo.cpu_target import ANY
from effzoo.graph_edits import edge_nodes, fold_preprocessing
from effzoo.openvino_ir import save_ir
from effzoo.ort_session import open_session


def ort_optimize(src: str, dst: str, level: str) -> None:
    """Offline graph optimization by ONNX Runtime (BASIC = provider-independent, portable)."""
    open_session(src, level=level, optimized_path=dst)


def build_fp32(onnx_path: str, spec: dict, out_model: Path, opt_level: str) -> dict:
    """Write the fp32 deployable model; return build details."""
    folded = fold_preprocessing(onnx.load(onnx_path), spec)
    with atomic_path(out_model, ".onnx") as tmp:
        raw = tmp.with_suffix(".raw.onnx")
        try:
            onnx.save(folded, str(raw))
            ort_optimize(str(raw), str(tmp), opt_level)
        finally:
            if raw.exists():
                raw.unlink()
    return {"graph_optimization": opt_level}


def build_fp16(onnx_path: str, spec: dict, out_model: Path) -> dict:
    """float16 model; the preprocessing and softmax stay float32 (exact normalization, stable softmax)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    folded = fold_preprocessing(onnx.load(onnx_path), spec)
    keep = edge_nodes(folded)
    half = convert_float_to_float16(folded, keep_io_types=True, node_block_list=keep)
    with atomic_path(out_model, ".onnx") as tmp:
        onnx.save(half, str(tmp))
    return {"kept_fp32_nodes": keep}


def main(argv=None):
    a = build_parser(__doc__).parse_args(argv)
    t0 = time.monotonic()
    options = BuildOptions.parse(a.options, a.quant)
    kind = options.kind
    if kind not in ("fp32", "fp16", "bf16"):
        raise ZooError(f"quant mode {a.quant!r}: kind {kind!r} is not a float build (fp32, fp16, bf16); int8 builds "
                       f"run `python -m build_int8`")
    export_info = checked_source(a.onnx, a.export_info)
    spec = read_json(a.spec_json, "spec")
    outdir = Path(a.outdir)
    if kind == "fp16":
        details = build_fp16(a.onnx, spec, outdir / "model.onnx")
    elif options.runtime == "onnxruntime":
        details = build_fp32(a.onnx, spec, outdir / "model.onnx", options.graph_optimization)
    else:
        with tempfile.TemporaryDirectory() as td:
            details = build_fp32(a.onnx, spec, Path(td) / "model.onnx", options.graph_optimization)
            save_ir(str(Path(td) / "model.onnx"), outdir)
        details["inference_precision"] = "bf16" if kind == "bf16" else "f32"
    why = ("bf16 build: OpenVINO computes it natively only with avx512_bf16 or amx_bf16" if kind == "bf16"
           else "float build: no CPU-specific numerics")
    write_build("build_float", a, kind, options, details, export_info, spec, t0, cpu_record(options, ANY, why))
