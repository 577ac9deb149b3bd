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


def saturating_layers(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """(node, weight, channel axis) of the layers that run on ORT's u8s8 GEMM kernels: Conv with group 1, Gemm,
    MatMul with a constant weight. Without VNNI these kernels add pairs of u8 x s8 products in int16 and saturate
    (255 * 127 * 2 > 32767); depthwise Conv has its own kernel that sums in int32."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.name.startswith(("pre_", "post_")) or len(n.input) < 2 or n.input[1] not in inits:
            continue
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "Conv" and (attrs["group"].i if "group" in attrs else 1) == 1:
            out.append((n.name, n.input[1], 0))
        elif n.op_type == "Gemm":
            out.append((n.name, n.input[1], 0 if "transB" in attrs and attrs["transB"].i else 1))
        elif n.op_type == "MatMul":
            out.append((n.name, n.input[1], 1))
    return out


def exact_weight_overrides(model: onnx.ModelProto, layers: list[tuple[str, str, int]],
                           ranges: dict[str, tuple[float, float]]) -> dict:
    """uint8 per-channel weights (ORT's exact u8u8 kernel, full 8 bits) for `layers`, with every channel's
    range widened where needed so that its int32 bias (scale = input scale x weight scale) cannot overflow:
    ONNX Runtime adjusts that only for int8 weights, and a clipped bias corrupts dead channels."""
    from onnxruntime.quantization import QuantType

    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    out = {}
    for node_name, weight, axis in layers:
        node = nodes[node_name]
        w = np.moveaxis(numpy_helper.to_array(inits[weight]).astype(np.float64), axis, 0)
        # symmetric uint8 maps [-r, r] onto [0, 255] around 128 (scale 2r/255): r = absmax*255/254 puts the
        # largest weight exactly on level 128 +- 127 instead of half a step off
        absmax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) * 255 / 254
        if len(node.input) > 2 and node.input[2] in inits and node.input[0] in ranges:
            lo, hi = ranges[node.input[0]]
            in_scale = (max(hi, 0.0) - min(lo, 0.0)) / 255.0
            bias = np.abs(numpy_helper.to_array(inits[node.input[2]]).astype(np.float64))
            if in_scale > 0:
                # symmetric uint8: scale = 2 * absmax / 255; need scale * in_scale >= |bias| / int32 max
                absmax = np.maximum(absmax, 1.01 * bias / (in_scale * np.iinfo(np.int32).max) * 255 / 2)
        out[weight] = [{"quant_type": QuantType.QUInt8, "axis": axis, "rmin": -float(a), "rmax": float(a)}
                       for a in absmax]
    return out


def reduced_weight_overrides(layers: list[tuple[str, str, int]]) -> dict:
    """7-bit int8 weights for `layers` (no int16 saturation on CPUs without VNNI)."""
    return {weight: [{"reduce_range": True, "axis": axis}] for _, weight, axis in layers}


def resolve_reduce_range(value) -> str:
    """'auto' -> 'saturating' (7-bit weights only in the u8s8 GEMM layers) when the build CPU lacks VNNI, else
    'none'; true -> 'all' (ONNX Runtime's global 7-bit weights); false -> 'none'."""
    if value == "auto":
        return "none" if cpu_has_vnni() else "saturating"
    return "all" if value else "none"


def _quantize_model(prepped, ranges: dict, out_model: Path, options: dict, exclude: list[str],
                    overrides: dict, reduce_all: bool) -> None:
    """ONNX Runtime quantize_static (QDQ) from fixed per-tensor ranges (no calibration pass here)."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    qtypes = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    data = TensorsData(CalibrationMethod.MinMax, {
        n: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        for n, (lo, hi) in ranges.items()})
    extra = {"OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"]}
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    with tempfile.TemporaryDirectory() as td:
        cache = Path(td) / "ranges.json"
        save_tensors_data(data, cache)
        with atomic_path(out_model, ".onnx") as tmp:
            quantize_static(prepped, str(tmp), calibration_data_reader=None, calibration_cache_path=str(cache),
                            quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.MinMax,
                            per_channel=bool(options.get("per_channel", True)), reduce_range=reduce_all,
                            activation_type=qtypes[options.get("activation_type", "uint8")],
                            weight_type=qtypes[options.get("weight_type", "int8")], nodes_to_exclude=exclude,
                            extra_options=extra)


def _weight_dq_inputs(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto]) -> list[str]:
    """Initializer names (quantized value, scale, zero point) of the DequantizeLinear nodes feeding a layer's
    weight and, when quantized, its bias (the int32 bias is scaled by the weight scale: they go together)."""
    node_name = node.name
    dq = producer.get(node.input[1])
    if dq is None or dq.op_type != "DequantizeLinear":
        raise ZooError(f"layer {node_name}: weight is not fed by a DequantizeLinear")
    names = list(dq.input)
    if len(node.input) > 2 and node.input[2] in producer and producer[node.input[2]].op_type == "DequantizeLinear":
        names += list(producer[node.input[2]].input)
    return names


def layer_sensitivity(prepped: str, exact_model: Path, reduced_model: Path, layers: list[tuple[str, str, int]],
                      images: np.ndarray, threads: int = 2) -> dict[str, float]:
    """How much each layer's 7-bit weights cost: mean squared logit error against the float model, with every
    listed layer at exact 8 bits except this one at 7 bits, minus the all-exact error. Measured on `images`."""
    import onnxruntime as ort

    def logits(model_bytes) -> np.ndarray:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        # one image per call: memory stays that of batch-1 inference (b7 at 600 with a batch of 8 would not)
        return np.concatenate([sess.run(["logits"], {PRE_INPUT: images[i:i + 1]})[0] for i in range(len(images))])

    ref = logits(prepped)
    exact, reduced = onnx.load(str(exact_model)), onnx.load(str(reduced_model))
    base = float(((logits(exact.SerializeToString()) - ref) ** 2).mean())
    inits = {i.name: i for i in exact.graph.initializer}
    alt = {i.name: i for i in reduced.graph.initializer}
    producer = {o: n for n in exact.graph.node for o in n.output}
    nodes = {n.name: n for n in exact.graph.node}
    out = {}
    for k, (node_name, _, _) in enumerate(layers):
        names = _weight_dq_inputs(nodes[node_name], producer)
        saved = {n: onnx.TensorProto() for n in names if n in inits}
        for n in saved:
            saved[n].CopyFrom(inits[n])
            inits[n].CopyFrom(alt[n])
        out[node_name] = float(((logits(exact.SerializeToString()) - ref) ** 2).mean()) - base
        for n, t in saved.items():
            inits[n].CopyFrom(t)
        LOG.info("sensitivity %d/%d %s: %+.3g", k + 1, len(layers), node_name, out[node_name])
    return out


def sensitivity_images(calibration_json: str, datalist: str, count: int) -> np.ndarray:
    """The first `count` images of the calibration set (its recorded order), read from the shards."""
    import calibrate

    files = read_json(calibration_json)["files"][:count]
    rows = {r[2]: i for i, r in enumerate(calibrate.read_datalist(datalist))}
    missing = [f for f in files if f not in rows]
    if missing:
        raise ZooError(f"{datalist}: calibration images {missing[:3]} are not in this datalist")
    return np.concatenate([b for b, _ in calibrate.iter_batches(datalist, [rows[f] for f in files], 16)])


def rank_layers(prepped: str, model: onnx.ModelProto, ranges: dict, options: dict, exclude: list[str],
                layers: list[tuple[str, str, int]], calibration_json: str | None,
                calib_datalist: str | None) -> tuple[list[tuple[str, float]], int]:
    """Layers by measured sensitivity, most sensitive first, and the number of images it was measured on."""
    import tempfile

    if not (calibration_json and calib_datalist):
        raise ZooError("exact_layers: a count needs the calibration manifest and datalist "
                       "(--calibration, --calib-datalist) to measure layer sensitivity")
    images = sensitivity_images(calibration_json, calib_datalist, int(options.get("sensitivity_images", 16)))
    with tempfile.TemporaryDirectory() as td:
        exact, reduced = Path(td) / "exact.onnx", Path(td) / "reduced.onnx"
        _quantize_model(prepped, ranges, exact, options, exclude, exact_weight_overrides(model, layers, ranges),
                        False)
        _quantize_model(prepped, ranges, reduced, options, exclude, reduced_weight_overrides(layers), False)
        sens = layer_sensitivity(prepped, exact, reduced, layers, images)
    return sorted(sens.items(), key=lambda kv: kv[1], reverse=True), len(images)


def build_int8(prepped: str, stats_npz: str, out_model: Path, out_ranges: Path, options: dict,
               calibration_json: str | None = None, calib_datalist: str | None = None) -> dict:
    """QDQ int8 model from the calibrated float model and the method's per-tensor ranges.

    On CPUs without VNNI (reduce_range auto) the u8s8 GEMM layers get 7-bit weights, except the
    `exact_layers` most sensitive ones (measured, see layer_sensitivity), which get exact uint8 weights."""
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
    layers = [x for x in saturating_layers(model) if x[0] not in exclude]
    policy = resolve_reduce_range(options.get("reduce_range", "auto"))
    details: dict = {"reduce_range": policy, "cpu_has_vnni": cpu_has_vnni()}
    overrides: dict = {}
    if policy == "saturating":
        want = options.get("exact_layers", 0)
        if isinstance(want, int):
            exact = []
            if want > 0:
                ranking, n_img = rank_layers(prepped, model, ranges, options, exclude, layers, calibration_json,
                                             calib_datalist)
                exact = [name for name, _ in ranking[:want]]
                details["sensitivity"] = {"images": n_img, "metric": "increase of mean squared logit error "
                                          "vs the float model when this layer alone has 7-bit weights",
                                          "ranking": [[k, round(v, 6)] for k, v in ranking]}
        else:
            unknown = sorted(set(want) - {x[0] for x in layers})
            if unknown:
                raise ZooError(f"exact_layers: {unknown} are not quantized GEMM layers of this model; "
                               f"valid: {[x[0] for x in layers][:8]}...")
            exact = list(want)
        overrides = {**reduced_weight_overrides([x for x in layers if x[0] not in exact]),
                     **exact_weight_overrides(model, [x for x in layers if x[0] in exact], ranges)}
        details["exact_uint8_weight_layers"] = exact
        details["reduced_7bit_weight_layers"] = len(layers) - len(exact)
    _quantize_model(prepped, ranges, out_model, options, exclude, overrides, policy == "all")
    clipped = sum(1 for n, (lo, hi) in ranges.items() if hi < full[n][1] * 0.999 or lo > full[n][0] * 0.999)
    return {"method": method, "tensors": len(ranges), "float_outputs_of": ["Gemm", "MatMul"],
            "tensors_clipped": clipped, "excluded_nodes": exclude, "format": "QDQ",
            "per_channel": bool(options.get("per_channel", True)),
            "activation_type": options.get("activation_type", "uint8"),
            "weight_type": options.get("weight_type", "int8"), **details}


def speed_vs_fp32(model: Path, fp32_model: str, spec: dict, batch: int = 16, threads: int = 2) -> dict:
    """Time this build against the fp32 build in one process (interleaved rounds, medians)."""
    import speed

    size = spec["input_size"][1]
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    res = speed.measure({"this": speed.ort_runner(str(model), threads, 1)[0],
                         "fp32": speed.ort_runner(fp32_model, threads, 1)[0]}, x, batch, 2, 2, 5)
    this_ms, fp32_ms = res["this"]["latency_p50_ms"], res["fp32"]["latency_p50_ms"]
    ratio = fp32_ms / this_ms
    return {"batch": batch, "threads": threads, "this_median_ms": round(this_ms, 2),
            "fp32_median_ms": round(fp32_ms, 2), "speedup_vs_fp32": round(ratio, 3),
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
    ap.add_argument("--calib-datalist", help="int8: datalist of the calibration images (layer sensitivity)")
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
        details = build_int8(a.prepped, a.stats, model_path, outdir / "calibration.json", options,
                             a.calibration, a.calib_datalist)
        calibration = {k: v for k, v in read_json(a.calibration).items() if k != "files"}
    else:
        raise ZooError(f"quant mode {a.quant!r}: unknown kind {kind!r}")
    build_s = time.monotonic() - t0
    import resource
    build_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    speed = speed_vs_fp32(model_path, a.fp32_model, spec) if a.fp32_model else None
    if speed and not speed["faster_than_fp32"]:
        speed["advice"] = (f"{a.quant} runs {speed['speedup_vs_fp32']:.2f}x the fp32 build's speed on this CPU "
                           f"(ONNX Runtime {runtime_versions()['onnxruntime']}): deploy fp32 here")
        LOG.warning("%s", speed["advice"])
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
