"""Build a deployable ONNX Runtime model ("vacc" build) from an exported ONNX model.

fp32: the model takes the uint8 NHWC tensors of the npz shards directly: timm's ToTensor/Normalize is
prepended as graph ops (Cast, /255, -mean, /std, NHWC->NCHW; the same float ops timm runs, so the
normalized tensor matches timm's), and a Softmax is appended (the vendor's post-processing). The graph is
optimized offline by ONNX Runtime at the portable BASIC level; a build.json manifest records source hash,
preprocessing, runtime, versions and options.

CLI: python scripts/build_vacc.py --onnx X.onnx --export-info X.json --spec-json S.json --quant fp32 --outdir D
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zoo_common import LOG, ZooError, atomic_path, read_json, run_main, sha256_file, write_json

PRE_INPUT = "image_uint8_nhwc"


def fold_preprocessing(model: onnx.ModelProto, spec: dict) -> onnx.ModelProto:
    """Prepend uint8 NHWC -> normalized float NCHW and append Softmax; outputs 'logits' and 'probs'."""
    g = model.graph
    if len(g.input) != 1:
        raise ZooError(f"expected one graph input, found {[i.name for i in g.input]}")
    orig_in = g.input[0].name
    size = spec["input_size"][1]
    mean = np.asarray(spec["mean"], np.float32).reshape(1, 1, 1, 3)
    std = np.asarray(spec["std"], np.float32).reshape(1, 1, 1, 3)
    inits = [numpy_helper.from_array(np.asarray(255.0, np.float32), "pre_255"),
             numpy_helper.from_array(mean, "pre_mean"), numpy_helper.from_array(std, "pre_std")]
    nodes = [
        helper.make_node("Cast", [PRE_INPUT], ["pre_f"], to=TensorProto.FLOAT, name="pre_cast"),
        helper.make_node("Div", ["pre_f", "pre_255"], ["pre_unit"], name="pre_div255"),
        helper.make_node("Sub", ["pre_unit", "pre_mean"], ["pre_centered"], name="pre_sub_mean"),
        helper.make_node("Div", ["pre_centered", "pre_std"], ["pre_norm_nhwc"], name="pre_div_std"),
        helper.make_node("Transpose", ["pre_norm_nhwc"], [orig_in], perm=[0, 3, 1, 2], name="pre_nchw"),
    ]
    logits = g.output[0].name
    post = helper.make_node("Softmax", [logits], ["probs"], axis=-1, name="post_softmax")
    new_in = helper.make_tensor_value_info(PRE_INPUT, TensorProto.UINT8, ["batch", size, size, 3])
    n_cls = g.output[0].type.tensor_type.shape.dim[-1]
    out_probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_cls.dim_value or None])
    graph = helper.make_graph(nodes + list(g.node) + [post], g.name, [new_in],
                              [g.output[0], out_probs], inits + list(g.initializer),
                              value_info=list(g.value_info))
    out = helper.make_model(graph, opset_imports=model.opset_import, producer_name="effzoo")
    out.ir_version = model.ir_version
    onnx.checker.check_model(out)
    return out


def ort_optimize(src: str, dst: str, level: str = "basic") -> None:
    """Offline graph optimization by ONNX Runtime (BASIC = provider-independent, portable)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    so.optimized_model_filepath = dst
    ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


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


def runtime_versions() -> dict:
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "providers_available": ort.get_available_providers()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--export-info", required=True)
    ap.add_argument("--spec-json", required=True)
    ap.add_argument("--quant", required=True, help="quant mode name (fp32)")
    ap.add_argument("--options", default="{}", help="JSON options of the quant mode")
    ap.add_argument("--outdir", required=True)
    a = ap.parse_args(argv)
    import json

    spec, export_info = read_json(a.spec_json), read_json(a.export_info)
    options = json.loads(a.options)
    outdir = Path(a.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    model_path = outdir / "model.onnx"
    t0 = time.monotonic()
    kind = options.get("kind", a.quant)
    if kind == "fp32":
        details = build_fp32(a.onnx, spec, model_path, options.get("graph_optimization", "basic"))
    else:
        raise ZooError(f"quant mode {a.quant!r}: unknown kind {kind!r}")
    manifest = {
        "quant": a.quant, "kind": kind, "options": options, "details": details,
        "source_model": {"path": a.onnx, "sha256": sha256_file(a.onnx)},
        "model": {"path": str(model_path), "sha256": sha256_file(model_path),
                  "size_mb": round(os.path.getsize(model_path) / 1e6, 3)},
        "input": {"name": PRE_INPUT, "dtype": "uint8", "layout": "NHWC"}, "outputs": ["logits", "probs"],
        "preprocess": spec, "weights": export_info["weights"], "tag": export_info["tag"],
        "runtime": runtime_versions(), "build_s": round(time.monotonic() - t0, 2),
    }
    write_json(outdir / "build.json", manifest)
    LOG.info("built %s (%s, %.1f MB)", model_path, a.quant, manifest["model"]["size_mb"])


if __name__ == "__main__":
    raise SystemExit(run_main(main))
