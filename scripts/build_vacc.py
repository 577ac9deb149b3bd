"""Build a deployable ONNX Runtime model ("vacc" build) from an exported ONNX model.

Kinds: fp32, fp16 (float16 weights and compute, uint8 input and float32 outputs kept), int8 (QDQ, per-channel
int8 weights, uint8 activations, ranges from the bounded-memory calibration in calibrate.py with the mode's
method). Non-fp32 builds are timed against the fp32 build in the same process (batch 16, interleaved rounds)
and the manifest records whether they run faster on this CPU.

fp32: the model takes the uint8 NHWC tensors of the npz shards directly: timm's ToTensor/Normalize is
prepended as graph ops (NHWC->NCHW on uint8, Cast, one multiply-add; within 1e-6 of timm's normalized
tensor), and a Softmax is appended (the vendor's post-processing). The graph is
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
    mean = np.asarray(spec["mean"], np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(spec["std"], np.float64).reshape(1, 3, 1, 1)
    # (x/255 - mean)/std as one multiply-add, computed in float64 and rounded once: within 1e-6 of timm's
    # float32 ops (test), and the layout change runs on uint8 (a quarter of the bytes) before the Cast.
    inits = [numpy_helper.from_array((1.0 / (255.0 * std)).astype(np.float32), "pre_scale"),
             numpy_helper.from_array((-mean / std).astype(np.float32), "pre_bias")]
    nodes = [
        helper.make_node("Transpose", [PRE_INPUT], ["pre_nchw_u8"], perm=[0, 3, 1, 2], name="pre_nchw"),
        helper.make_node("Cast", ["pre_nchw_u8"], ["pre_f"], to=TensorProto.FLOAT, name="pre_cast"),
        helper.make_node("Mul", ["pre_f", "pre_scale"], ["pre_scaled"], name="pre_scale"),
        helper.make_node("Add", ["pre_scaled", "pre_bias"], [orig_in], name="pre_bias"),
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


def build_fp16(onnx_path: str, spec: dict, out_model: Path, options: dict) -> dict:
    """float16 model; the preprocessing and softmax stay float32 (exact normalization, stable softmax)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    folded = fold_preprocessing(onnx.load(onnx_path), spec)
    keep = [n.name for n in folded.graph.node if n.name.startswith(("pre_", "post_"))]
    half = convert_float_to_float16(folded, keep_io_types=True, node_block_list=keep)
    with atomic_path(out_model, ".onnx") as tmp:
        onnx.save(half, str(tmp))
    return {"kept_fp32_nodes": keep}


def layers_to_exclude(model: onnx.ModelProto, which: list[str]) -> list[str]:
    """Node names for the semantic exclusions 'first_conv' and 'classifier' (last Gemm/MatMul)."""
    names = []
    for w in which:
        if w == "first_conv":
            names += [n.name for n in model.graph.node if n.op_type == "Conv"][:1]
        elif w == "classifier":
            names += [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")][-1:]
        else:
            raise ZooError(f"exclude_layers: unknown layer {w!r}; expected first_conv or classifier")
    return names


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI/AMX int8 dot products (without them u8s8 kernels saturate int16 sums)."""
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def resolve_reduce_range(value) -> bool:
    """'auto' -> 7-bit weights exactly when the build CPU lacks VNNI (ONNX Runtime's own advice for x86)."""
    if value == "auto":
        return not cpu_has_vnni()
    return bool(value)


def build_int8(prepped: str, stats_npz: str, out_model: Path, out_ranges: Path, options: dict) -> dict:
    """QDQ int8 model from the calibrated float model and the method's per-tensor ranges."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    import calibrate

    method = options["method"]
    model = onnx.load(prepped)
    keep_full = calibrate.full_range_tensors(model) if options.get("keep_bounded_ranges", True) else set()
    with np.load(stats_npz) as arrs:
        ranges = calibrate.compute_ranges(arrs, method, options, keep_full)
        full = {n: (float(lo), float(hi)) for n, lo, hi in zip(arrs["names"].tolist(), arrs["min"], arrs["max"])}
    write_json(out_ranges, {"method": method, "options": options,
                            "ranges": {n: [lo, hi] for n, (lo, hi) in ranges.items()},
                            "observed": {n: list(v) for n, v in full.items()}, "kept_full_range": sorted(keep_full)})
    exclude = [n.name for n in model.graph.node if n.name.startswith(("pre_", "post_"))]
    exclude += layers_to_exclude(model, options.get("exclude_layers", []))
    reduce_range = resolve_reduce_range(options.get("reduce_range", "auto"))
    qtypes = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    data = TensorsData(CalibrationMethod.MinMax, {
        n: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        for n, (lo, hi) in ranges.items()})
    with tempfile.TemporaryDirectory() as td:
        cache = Path(td) / "ranges.json"
        save_tensors_data(data, cache)
        with atomic_path(out_model, ".onnx") as tmp:
            quantize_static(prepped, str(tmp), calibration_data_reader=None, calibration_cache_path=str(cache),
                            quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.MinMax,
                            per_channel=bool(options.get("per_channel", True)),
                            reduce_range=reduce_range,
                            activation_type=qtypes[options.get("activation_type", "uint8")],
                            weight_type=qtypes[options.get("weight_type", "int8")], nodes_to_exclude=exclude,
                            extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"]})
    clipped = sum(1 for n, (lo, hi) in ranges.items() if hi < full[n][1] * 0.999 or lo > full[n][0] * 0.999)
    return {"method": method, "tensors": len(ranges), "float_outputs_of": ["Gemm", "MatMul"], "tensors_clipped": clipped, "excluded_nodes": exclude,
            "format": "QDQ", "per_channel": bool(options.get("per_channel", True)),
            "activation_type": options.get("activation_type", "uint8"),
            "weight_type": options.get("weight_type", "int8"), "reduce_range": reduce_range,
            "cpu_has_vnni": cpu_has_vnni()}


def speed_vs_fp32(model: Path, fp32_model: str, spec: dict, batch: int = 16, threads: int = 2) -> dict:
    """Time this build against the fp32 build in one process (interleaved rounds, medians)."""
    import speed

    size = spec["input_size"][1]
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    res = speed.time_sessions({"this": speed.ort_runner(str(model), threads),
                               "fp32": speed.ort_runner(fp32_model, threads)}, x, rounds=5, calls=2)
    ratio = res["fp32"]["median_ms"] / res["this"]["median_ms"]
    return {"batch": batch, "threads": threads, "this_median_ms": round(res["this"]["median_ms"], 2),
            "fp32_median_ms": round(res["fp32"]["median_ms"], 2), "speedup_vs_fp32": round(ratio, 3),
            "faster_than_fp32": bool(ratio > 1.0), "loadavg": speed.load_average()}


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
    ap.add_argument("--prepped", help="int8: calibrated float model (calibrate.py --prepped)")
    ap.add_argument("--stats", help="int8: calibration statistics npz")
    ap.add_argument("--calibration", help="int8: calibration.json manifest")
    ap.add_argument("--fp32-model", help="fp32 build to time this build against")
    a = ap.parse_args(argv)
    import json

    spec, export_info = read_json(a.spec_json), read_json(a.export_info)
    options = json.loads(a.options)
    outdir = Path(a.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    model_path = outdir / "model.onnx"
    t0 = time.monotonic()
    kind = options.get("kind", a.quant)
    calibration = None
    if kind == "fp32":
        details = build_fp32(a.onnx, spec, model_path, options.get("graph_optimization", "basic"))
    elif kind == "fp16":
        details = build_fp16(a.onnx, spec, model_path, options)
    elif kind == "int8":
        if not (a.prepped and a.stats and a.calibration):
            raise ZooError(f"quant mode {a.quant!r}: int8 needs --prepped, --stats and --calibration")
        details = build_int8(a.prepped, a.stats, model_path, outdir / "calibration.json", options)
        calibration = {k: v for k, v in read_json(a.calibration).items() if k != "files"}
    else:
        raise ZooError(f"quant mode {a.quant!r}: unknown kind {kind!r}")
    build_s = time.monotonic() - t0
    import resource
    build_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    speed = speed_vs_fp32(model_path, a.fp32_model, spec) if a.fp32_model else None
    manifest = {
        "quant": a.quant, "kind": kind, "options": options, "details": details,
        "source_model": {"path": a.onnx, "sha256": sha256_file(a.onnx)},
        "model": {"path": str(model_path), "sha256": sha256_file(model_path),
                  "size_mb": round(os.path.getsize(model_path) / 1e6, 3)},
        "input": {"name": PRE_INPUT, "dtype": "uint8", "layout": "NHWC"}, "outputs": ["logits", "probs"],
        "preprocess": spec, "weights": export_info["weights"], "tag": export_info["tag"],
        "runtime": runtime_versions(), "build_s": round(build_s, 2), "build_peak_rss_mb": round(build_peak_mb, 1),
        "calibration": calibration, "speed": speed,
    }
    if calibration:
        manifest["calibration_s"] = calibration["calibration_s"]
        manifest["peak_rss_mb"] = max(calibration["peak_rss_mb"], manifest["build_peak_rss_mb"])
    write_json(outdir / "build.json", manifest)
    LOG.info("built %s (%s, %.1f MB)", model_path, a.quant, manifest["model"]["size_mb"])


if __name__ == "__main__":
    raise SystemExit(run_main(main))
