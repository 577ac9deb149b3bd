"""Build a deployable int8 model ("vacc" build) from the calibrated float model, for ONNX Runtime or OpenVINO.

QDQ, per-channel int8 weights, uint8 activations, ranges from the bounded-memory calibration statistics
(calibrate.py) with the mode's method. The calibrated model and statistics are checked against the sha256
that calibration.json recorded before use. With `runtime: openvino` the same QDQ graph is written as
OpenVINO IR, which runs its quantized convolutions in int8.

int8 weights and the CPU the build is made for (`cpu_target`; auto = the building machine's kind): without
VNNI/AMX, the u8s8 GEMM kernels (Conv with group 1, Gemm, MatMul) add pairs of u8 x s8 products in int16 and
saturate. For such a target `reduce_range: auto` gives those layers 7-bit weights (depthwise convs have their
own int32 kernel and keep 8 bits), and the build runs exactly on any CPU. For a vnni target every weight is
plain 8-bit, and the build requires VNNI where it runs (build.json 'cpu'; predict and benchmark check it).

Bias correction (default on): each layer's int32 bias absorbs the mean output change its quantized weights cause,
measured in one pass of the float model. Accuracy budget (effzoo.int8_search): the build must reach
`split_min_agreement` with the fp32 model on the calibration source's validation split (by `split_signal`); layers
are promoted, the most accuracy per priced slowdown first (to exact uint8 weights on ORT's exact u8u8 kernel for
a target without VNNI, else to float), until it does, up to `max_promoted_macs` and never below
`min_speed_over_fp32` x fp32 by the priced costs. The model's bytes depend on the inputs only: nothing timed
decides them.

CLI: python -m build_int8 --onnx X.onnx --export-info X.json --spec-json S.json --quant int8_max \
        --options '{...every option...}' --outdir vacc/X-int8_max --prepped P.onnx --stats S.npz \
        --calibration calibration.json --calib-datalist datalist.tsv
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

import onnx
from effzoo.build_manifest import build_parser, checked_source, cpu_record, write_build
from effzoo.build_options import BuildOptions
from effzoo.common import ZooError, atomic_path, read_json, verify_file, write_json
from effzoo.cpu_target import ANY, covers, cpu_kind
from effzoo.graph_edits import edge_nodes
from effzoo.int8_search import search
from effzoo.openvino_ir import save_ir
from effzoo.qdq_graph import weight_layers
from effzoo.ranges import compute_ranges, full_range_tensors
from effzoo.shard_io import iter_datalist_rows, read_datalist
from onnx import numpy_helper


def quantized_op_types(which: str) -> list[str] | None:
    """Op types quantize_static quantizes: 'all' (None: every op ONNX Runtime can, so its QLinear kernels run the
    SE gate and SiLU in int8), or 'no_gates': all but Sigmoid and Mul, so the SE gate and SiLU stay float."""
    if which == "all":
        return None
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - {"Sigmoid", "Mul"})


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


def saturating_layers(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """(node, weight, channel axis) of the layers that run on ORT's u8s8 GEMM kernels: Conv with group 1, Gemm,
    MatMul with a constant weight. Without VNNI these kernels add pairs of u8 x s8 products in int16 and saturate
    (255 * 127 * 2 > 32767); depthwise Conv has its own kernel that sums in int32."""
    return [(la.name, la.weight, la.axis) for la in weight_layers(model) if la.saturating]


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


def resolve_reduce_range(value, target: str) -> str:
    """'auto' -> 'saturating' (7-bit weights only in the u8s8 GEMM layers) when the target CPU lacks VNNI, else
    'none'; true -> 'all' (ONNX Runtime's global 7-bit weights); false -> 'none'."""
    if value == "auto":
        return "none" if target == "vnni" else "saturating"
    return "all" if value else "none"


def cpu_requirement(policy: str) -> tuple[str, str]:
    """What a build with this weight policy requires of the CPU that runs it, and why."""
    if policy == "none":
        return "vnni", ("plain 8-bit u8s8 GEMM layers, which saturate their int16 sums on a CPU without VNNI "
                        "(measured: 89-90% top-1 agreement with fp32 instead of 98-99%)")
    return ANY, "no u8s8 GEMM layer can saturate (7-bit or exact uint8 weights): exact on any CPU"


def quantize_model(prepped, ranges: dict, out_model: Path, options: BuildOptions, exclude: list[str],
                    overrides: dict, reduce_all: bool) -> None:
    """ONNX Runtime quantize_static (QDQ) from fixed per-tensor ranges (no calibration pass here)."""
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
                            per_channel=options.per_channel, reduce_range=reduce_all,
                            activation_type=qtypes[options.activation_type],
                            weight_type=qtypes[options.weight_type], nodes_to_exclude=exclude,
                            op_types_to_quantize=quantized_op_types(options.quantized_ops), extra_options=extra)


def calibration_images(files: list[str], datalist: str) -> np.ndarray:
    """These calibration-source images (uint8 NHWC), read from the shards in the given order."""
    rows = {r[2]: i for i, r in enumerate(read_datalist(datalist))}
    missing = [f for f in files if f not in rows]
    if missing:
        raise ZooError(f"{datalist}: calibration images {missing[:3]} are not in this datalist")
    if not files:
        return np.zeros((0,), np.uint8)
    return np.concatenate([b for b, _ in iter_datalist_rows(datalist, [rows[f] for f in files], 16)])


def spread(files: list[str], count: int) -> list[str]:
    """`count` files evenly spaced over the list (the calibration files are in datalist order, class by class)."""
    if count >= len(files):
        return list(files)
    return [files[i * len(files) // count] for i in range(count)]


def validation_split(calibration: dict, datalist: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The validation split's images and the fp32 model's top-1 on them (calibration.json), or None. Images come
    in the order of the fp32 top-1 margin, smallest first: the ones int8 flips first, so that a trial that
    cannot meet the budget stops early."""
    split = calibration.get("validation")
    if not split or not split["files"]:
        return None
    order = np.argsort(np.asarray(split["fp32_margin"]), kind="stable")
    files = [split["files"][i] for i in order]
    return calibration_images(files, datalist), np.asarray(split["fp32_top1"], np.int64)[order]


def build_int8(prepped: str, stats_npz: str, out_model: Path, out_ranges: Path, options: BuildOptions,
               calibration: dict, calib_datalist: str) -> dict:
    """QDQ int8 model from the calibrated float model and the method's per-tensor ranges, with the fewest
    promoted layers that meet the accuracy budget on the validation split (int8_search)."""
    method = options.method
    model = onnx.load(prepped)
    keep_full = full_range_tensors(model) if options.keep_bounded_ranges else set()
    with np.load(stats_npz) as arrs:
        ranges = compute_ranges(arrs, method, percentile=options.percentile, levels=options.levels,
                                candidates=options.candidates, keep_full=keep_full)
        full = {n: (float(lo), float(hi)) for n, lo, hi in zip(arrs["names"].tolist(), arrs["min"], arrs["max"])}
    write_json(out_ranges, {"method": method, "options": options.as_given(),
                            "ranges": {n: [lo, hi] for n, (lo, hi) in ranges.items()},
                            "observed": {n: list(v) for n, v in full.items()}, "kept_full_range": sorted(keep_full)})
    exclude = edge_nodes(model) + layers_to_exclude(model, options.exclude_layers)
    layers = weight_layers(model, set(exclude))
    saturating = [(la.name, la.weight, la.axis) for la in layers if la.saturating]
    policy = resolve_reduce_range(options.reduce_range, options.target)
    runtime = options.runtime
    with tempfile.TemporaryDirectory() as td:
        base_path, exact_path = Path(td) / "base.onnx", Path(td) / "exact.onnx"
        quantize_model(prepped, ranges, base_path, options, exclude,
                        reduced_weight_overrides(saturating) if policy == "saturating" else {}, policy == "all")
        exact = None
        if policy == "saturating" and runtime == "onnxruntime":
            quantize_model(prepped, ranges, exact_path, options, exclude,
                            exact_weight_overrides(model, saturating, ranges), False)
            exact = onnx.load(str(exact_path))
        emulate = not covers(cpu_kind(), cpu_requirement(policy)[0])  # the building CPU
        probe_images = calibration_images(spread(calibration["files"], options.sensitivity_images),
                                          calib_datalist)
        rounding_images = (calibration_images(spread(calibration["files"], options.rounding_images), calib_datalist)
                           if options.weight_rounding == "gptq" else None)
        final, record = search(onnx.load(str(base_path)), exact, model, layers, policy, runtime,
                               validation_split(calibration, calib_datalist), probe_images, options, emulate,
                               rounding_images=rounding_images)
    budget = record.as_json()
    with atomic_path(out_model, ".onnx") as tmp:
        onnx.save(final, str(tmp))
    exact_layers = [name for name, kind in budget["promoted"] if kind == "exact_uint8"]
    details: dict = {"reduce_range": policy, "cpu_target": options.target, "accuracy_budget": budget}
    if policy == "saturating":
        details["exact_uint8_weight_layers"] = exact_layers
        details["reduced_7bit_weight_layers"] = len(saturating) - len(exact_layers) - sum(
            1 for name, kind in budget["promoted"] if kind == "float" and name in {x[0] for x in saturating})
    details["float_layers"] = [name for name, kind in budget["promoted"] if kind == "float"]
    clipped = sum(1 for n, (lo, hi) in ranges.items() if hi < full[n][1] * 0.999 or lo > full[n][0] * 0.999)
    return {"method": method, "tensors": len(ranges), "float_outputs_of": ["Gemm", "MatMul"],
            "tensors_clipped": clipped, "excluded_nodes": exclude, "format": "QDQ",
            "per_channel": options.per_channel, "activation_type": options.activation_type,
            "weight_type": options.weight_type, **details}


def main(argv=None):
    ap = build_parser(__doc__)
    ap.add_argument("--prepped", required=True, help="calibrated float model (calibrate.py --prepped)")
    ap.add_argument("--stats", required=True, help="calibration statistics npz")
    ap.add_argument("--calibration", required=True, help="calibration.json manifest (records their sha256)")
    ap.add_argument("--calib-datalist", required=True, help="datalist of the calibration images (sensitivity)")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    options = BuildOptions.parse(a.options, a.quant)
    if options.kind != "int8":
        raise ZooError(f"quant mode {a.quant!r}: kind {options.kind!r} is not int8; float builds run "
                       f"`python -m build_float`")
    export_info = checked_source(a.onnx, a.export_info)
    spec = read_json(a.spec_json, "spec")
    calibration = read_json(a.calibration, "calibration")
    verify_file(a.prepped, calibration["prepped"]["sha256"], a.calibration)
    verify_file(a.stats, calibration["stats"]["sha256"], a.calibration)
    outdir = Path(a.outdir)
    with tempfile.TemporaryDirectory() as td:
        qdq = outdir / "model.onnx" if options.runtime == "onnxruntime" else Path(td) / "model.onnx"
        details = build_int8(a.prepped, a.stats, qdq, outdir / "calibration.json", options, calibration,
                             a.calib_datalist)
        if options.runtime == "openvino":
            save_ir(str(qdq), outdir)
    write_build("build_int8", a, "int8", options, details, export_info, spec, t0,
                cpu_record(options, *cpu_requirement(details["reduce_range"])),
                {"calibration": {k: v for k, v in calibration.items() if k != "files"}})
