"""Build a deployable int8 model ("vacc" build) from the calibrated float model, for ONNX Runtime or OpenVINO.

QDQ, per-channel int8 weights, uint8 activations, ranges from the bounded-memory calibration statistics
(calibrate.py) with the mode's method. The calibrated model and statistics are checked against the sha256
that calibration.json recorded before use. With `runtime: openvino` the same QDQ graph is written as
OpenVINO IR, which runs its quantized convolutions in int8.

int8 weights and the CPU the build is made for (`cpu_target`; auto = the building machine's kind): without
VNNI/AMX, the u8s8 GEMM kernels (Conv with group 1, Gemm, MatMul) add pairs of u8 x s8 products in int16 and
saturate. For such a target `reduce_range: auto` gives those layers 7-bit weights (depthwise convs have their
own int32 kernel and keep 8 bits), except the `exact_layers` most sensitive ones (measured on
`sensitivity_images` calibration images), which keep exact uint8 weights that run on ORT's exact u8u8 kernel;
the build then runs exactly on any CPU. For a vnni target every weight is plain 8-bit, and the build requires
VNNI where it runs (build.json 'cpu'; predict and benchmark check it).

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
from onnx import numpy_helper

from build_manifest import COMMON_OPTIONS, build_parser, checked_source, cpu_record, parse_options, write_build
from calibrate import compute_ranges, full_range_tensors
from cpu_target import resolve
from graph_edits import EDGE_PREFIXES, PRE_INPUT, edge_nodes
from openvino_ir import save_ir
from shard_io import iter_datalist_rows, read_datalist
from zoo_common import LOG, ZooError, atomic_path, read_json, run_main, verify_file, write_json

OPTIONS = COMMON_OPTIONS + ("quantized_ops", "method", "per_channel", "reduce_range", "exact_layers",
                            "sensitivity_images", "activation_type", "weight_type", "exclude_layers",
                            "keep_bounded_ranges")
METHOD_OPTIONS = {"max": (), "percentile": ("percentile",), "kl_divergence": ("levels", "candidates")}


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
    inits = {i.name for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.name.startswith(EDGE_PREFIXES) or len(n.input) < 2 or n.input[1] not in inits:
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
    return "avx2", "no u8s8 GEMM layer can saturate (7-bit or exact uint8 weights): exact on any CPU"


def _quantize_model(prepped, ranges: dict, out_model: Path, options: dict, exclude: list[str],
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
                            per_channel=options["per_channel"], reduce_range=reduce_all,
                            activation_type=qtypes[options["activation_type"]],
                            weight_type=qtypes[options["weight_type"]], nodes_to_exclude=exclude,
                            op_types_to_quantize=quantized_op_types(options["quantized_ops"]), extra_options=extra)


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


def sensitivity_images(calibration: dict, datalist: str, count: int) -> np.ndarray:
    """The first `count` images of the calibration set (its recorded order), read from the shards."""
    files = calibration["files"][:count]
    rows = {r[2]: i for i, r in enumerate(read_datalist(datalist))}
    missing = [f for f in files if f not in rows]
    if missing:
        raise ZooError(f"{datalist}: calibration images {missing[:3]} are not in this datalist")
    return np.concatenate([b for b, _ in iter_datalist_rows(datalist, [rows[f] for f in files], 16)])


def rank_layers(prepped: str, model: onnx.ModelProto, ranges: dict, options: dict, exclude: list[str],
                layers: list[tuple[str, str, int]], calibration: dict,
                calib_datalist: str) -> tuple[list[tuple[str, float]], int]:
    """Layers by measured sensitivity, most sensitive first, and the number of images it was measured on."""
    images = sensitivity_images(calibration, calib_datalist, options["sensitivity_images"])
    with tempfile.TemporaryDirectory() as td:
        exact, reduced = Path(td) / "exact.onnx", Path(td) / "reduced.onnx"
        _quantize_model(prepped, ranges, exact, options, exclude, exact_weight_overrides(model, layers, ranges),
                        False)
        _quantize_model(prepped, ranges, reduced, options, exclude, reduced_weight_overrides(layers), False)
        sens = layer_sensitivity(prepped, exact, reduced, layers, images)
    return sorted(sens.items(), key=lambda kv: kv[1], reverse=True), len(images)


def build_int8(prepped: str, stats_npz: str, out_model: Path, out_ranges: Path, options: dict,
               calibration: dict, calib_datalist: str, target: str) -> dict:
    """QDQ int8 model from the calibrated float model and the method's per-tensor ranges.

    On CPUs without VNNI (reduce_range auto) the u8s8 GEMM layers get 7-bit weights, except the
    `exact_layers` most sensitive ones (measured, see layer_sensitivity), which get exact uint8 weights."""
    method = options["method"]
    model = onnx.load(prepped)
    keep_full = full_range_tensors(model) if options["keep_bounded_ranges"] else set()
    with np.load(stats_npz) as arrs:
        ranges = compute_ranges(arrs, method, options, keep_full)
        full = {n: (float(lo), float(hi)) for n, lo, hi in zip(arrs["names"].tolist(), arrs["min"], arrs["max"])}
    write_json(out_ranges, {"method": method, "options": options,
                            "ranges": {n: [lo, hi] for n, (lo, hi) in ranges.items()},
                            "observed": {n: list(v) for n, v in full.items()}, "kept_full_range": sorted(keep_full)})
    exclude = edge_nodes(model) + layers_to_exclude(model, options["exclude_layers"])
    layers = [x for x in saturating_layers(model) if x[0] not in exclude]
    policy = resolve_reduce_range(options["reduce_range"], target)
    details: dict = {"reduce_range": policy, "cpu_target": target}
    overrides: dict = {}
    if policy == "saturating":
        want = options["exact_layers"]
        if isinstance(want, int):
            exact = []
            if want > 0:
                ranking, n_img = rank_layers(prepped, model, ranges, options, exclude, layers, calibration,
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
            "per_channel": options["per_channel"], "activation_type": options["activation_type"],
            "weight_type": options["weight_type"], **details}


def main(argv=None):
    ap = build_parser(__doc__)
    ap.add_argument("--prepped", required=True, help="calibrated float model (calibrate.py --prepped)")
    ap.add_argument("--stats", required=True, help="calibration statistics npz")
    ap.add_argument("--calibration", required=True, help="calibration.json manifest (records their sha256)")
    ap.add_argument("--calib-datalist", required=True, help="datalist of the calibration images (sensitivity)")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    options = parse_options(a.options, a.quant, OPTIONS)
    if options["kind"] != "int8":
        raise ZooError(f"quant mode {a.quant!r}: kind {options['kind']!r} is not int8; float builds run "
                       f"`python -m build_float`")
    if options["method"] not in METHOD_OPTIONS:
        raise ZooError(f"quant mode {a.quant!r}: method {options['method']!r}: expected one of "
                       f"{', '.join(METHOD_OPTIONS)}")
    options = parse_options(a.options, a.quant, OPTIONS + METHOD_OPTIONS[options["method"]])
    export_info = checked_source(a.onnx, a.export_info)
    spec = read_json(a.spec_json)
    calibration = read_json(a.calibration)
    verify_file(a.prepped, calibration["prepped"]["sha256"], a.calibration)
    verify_file(a.stats, calibration["stats"]["sha256"], a.calibration)
    outdir = Path(a.outdir)
    target = resolve(options["cpu_target"])
    with tempfile.TemporaryDirectory() as td:
        qdq = outdir / "model.onnx" if options["runtime"] == "onnxruntime" else Path(td) / "model.onnx"
        details = build_int8(a.prepped, a.stats, qdq, outdir / "calibration.json", options, calibration,
                             a.calib_datalist, target)
        if options["runtime"] == "openvino":
            save_ir(str(qdq), outdir)
    write_build("build_int8", a, "int8", options, details, export_info, spec, t0,
                cpu_record(options, *cpu_requirement(details["reduce_range"])),
                {"calibration": {k: v for k, v in calibration.items() if k != "files"}})


if __name__ == "__main__":
    raise SystemExit(run_main(main))
