"""Accuracy budget for int8 builds: promote layers, the most accuracy per measured slowdown first, until the build's
expected agreement with fp32 on the validation split reaches the budget, never below the speed floor.

An int8 build starts from its CPU policy's weights (plain 8-bit for a vnni target; 7-bit in the saturating GEMM
layers otherwise) and is checked against `split_min_agreement` on the validation split of the calibration source
(calibrate.py: seeded, class-balanced, disjoint from the range images). Promotions:
  * to exact uint8 weights (ONNX Runtime's exact u8u8 kernel): a saturating GEMM layer of an ONNX Runtime build
    for a target without VNNI;
  * to float (weights left unquantized) otherwise: on a vnni target, for depthwise layers, and on OpenVINO, which
    has no exact uint8 kernel.
Before the search, the integer weights are rounded by output error (weight_rounding gptq, the default:
effzoo/weight_rounding.py), then bias correction (on by default): each layer's int32 bias absorbs the mean output
change its quantized weights cause (measured in the same pass; data-driven bias correction as in NNCF's fast bias
correction).
Gain: one pass of the float model over range images gives, per layer, the output noise its promotion removes,
||conv(x, W_now - W_promoted)||^2 / ||conv(x, W)||^2 (as TFLite's quantization debugger ranks layers for float
fallback). Cost: the measured slowdown per share of the MACs promoted, per runtime and kind, measured on the kernel
ISA the trials run on or the nearest one measured (effzoo/promotion_costs.py; build.json records which). Layers are
ranked by gain per cost.
Each trial runs the whole split and records the count agreement, the KL of the softmax and the logit MSE against
the fp32 model, and the expected agreement (split_signals); `split_signal` says which decides. The search promotes
1, 2, 4, ... layers of the ranking, then bisects down to the smallest passing prefix, capped at a fraction of the
quantized layers' MACs. When none passes it keeps the fewest promotions that remove most of the KL the trials could
remove (none when they remove too little to measure). Trials on the build's own kernels are timed against the fp32
model on the same runtime, at batch TRIAL_BATCH; promotions stop where the build would fall below
`min_speed_over_fp32` x fp32.
Each trial is one session of the build's runtime on the trial graph (ONNX Runtime fuses the QDQ pattern into its
int8 kernels when the session opens, so a session cannot take new weights); where the building CPU cannot run the
target's kernels exactly (a vnni target built without VNNI), trials run the QDQ graph unfused, in float: the same
integer arithmetic up to float rounding, and speed is not measured.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import onnx
from effzoo import promotion_costs, speed
from effzoo.budget import MIN_SPLIT_IMAGES, certify, lower_bound
from effzoo.build_options import BuildOptions
from effzoo.common import LOG, ZooError
from effzoo.cpu_target import kernel_isa
from effzoo.graph_edits import EDGE_PREFIXES, PRE_INPUT
from effzoo.openvino_ir import convert
from effzoo.ort_session import bounded_session
from effzoo.weight_rounding import gptq_rounded, layer_hessians, weight_dqs
from onnx import helper, numpy_helper

TRIAL_BATCH = 16   # the batch builds are timed and compared at (benchmark.batch_sizes, bench/runtimes_cpu.py)


@dataclass(frozen=True)
class Layer:
    """A layer with a constant weight that int8 quantizes: node name, weight name, channel axis, MACs per image,
    and whether it runs on the u8s8 GEMM kernels that saturate without VNNI (Conv with group 1, Gemm, MatMul)."""
    name: str
    weight: str
    axis: int
    macs: int
    saturating: bool


def _out_elems(shapes: dict, name: str) -> int:
    dims = shapes.get(name)
    if dims is None or any(d is None for d in dims[1:]):
        raise ZooError(f"tensor {name}: no static shape; run the model through quant_pre_process first")
    return int(np.prod(dims[1:])) if len(dims) > 1 else 1


def weight_layers(model: onnx.ModelProto, exclude: set[str] = frozenset()) -> list[Layer]:
    """Conv, Gemm and MatMul nodes with a constant weight, outside the pre/post-processing edges and `exclude`."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if (n.name.startswith(EDGE_PREFIXES) or n.name in exclude or len(n.input) < 2
                or n.input[1] not in inits or n.op_type not in ("Conv", "Gemm", "MatMul")):
            continue
        w = list(inits[n.input[1]].dims)
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "Conv":
            group = attrs["group"].i if "group" in attrs else 1
            out.append(Layer(n.name, n.input[1], 0, _out_elems(shapes, n.output[0]) * int(np.prod(w[1:])),
                             group == 1))
        else:
            trans_b = n.op_type == "Gemm" and "transB" in attrs and attrs["transB"].i
            k = w[1] if trans_b else w[0]
            out.append(Layer(n.name, n.input[1], 0 if trans_b else 1, _out_elems(shapes, n.output[0]) * k, True))
    return out


def promotion_slowdown(layer: Layer, kind: str, runtime: str, total_macs: int, costs: dict) -> float:
    """The predicted slowdown (fraction of the int8 graph's time) of promoting one layer; costs: an entry of
    effzoo.promotion_costs.for_isa."""
    key = f"{kind}_{'dense' if layer.saturating else 'depthwise'}"
    per_share = costs["slowdown_per_mac_share"].get(runtime, {})
    if key not in per_share:
        raise ZooError(f"{promotion_costs.COST_FILE}: no {key} cost measured for {runtime} on "
                       f"{costs['priced_with']} kernels")
    return per_share[key] * layer.macs / max(total_macs, 1)


def promotion_kind(layer: Layer, policy: str, runtime: str) -> str:
    """'exact_uint8' for a saturating layer of an ONNX Runtime build with 7-bit weights there, else 'float'."""
    return "exact_uint8" if policy == "saturating" and runtime == "onnxruntime" and layer.saturating else "float"


# --------------------------------------------------------------------------------------------------
# QDQ graphs: dequantized weights, promoted layers


def dequantized_weight(model: onnx.ModelProto, layer: Layer) -> np.ndarray:
    """A layer's weight as the quantized graph computes with it (DequantizeLinear applied), float64."""
    dq, _ = weight_dqs(model, layer.name)
    inits = {i.name: i for i in model.graph.initializer}
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 else np.zeros(1)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    return (q - zp.reshape(shape if zp.size > 1 else [1] * q.ndim)) * scale.reshape(shape)


def promoted_model(base: onnx.ModelProto, promotions: list[tuple[Layer, str]], prepped: onnx.ModelProto,
                   exact: onnx.ModelProto | None) -> onnx.ModelProto:
    """The quantized graph with these layers promoted: 'float' feeds the layer its float weight and bias from the
    calibrated float model (its input and output stay quantized where neighbours need them); 'exact_uint8' takes
    its weight and bias quantization from `exact`, the graph with every saturating layer's weights exact uint8."""
    m = onnx.ModelProto()
    m.CopyFrom(base)
    inits = {i.name: i for i in m.graph.initializer}
    float_inits = {i.name: i for i in prepped.graph.initializer}
    float_nodes = {n.name: n for n in prepped.graph.node}
    nodes = {n.name: n for n in m.graph.node}
    producer = {o: n for n in m.graph.node for o in n.output}
    dropped = set()
    for layer, kind in promotions:
        node = nodes[layer.name]
        wdq, bdq = weight_dqs(m, layer.name, producer)
        if kind == "exact_uint8":
            if exact is None:
                raise ZooError(f"layer {layer.name}: exact uint8 promotion needs the exact-weight graph")
            alt = {i.name: i for i in exact.graph.initializer}
            for name in list(wdq.input) + (list(bdq.input) if bdq is not None else []):
                if name in inits:
                    inits[name].CopyFrom(alt[name])
            continue
        # float weight; the bias stays an int32 DequantizeLinear, of the float bias (not bias-corrected): with a
        # float weight *and* a float bias, ONNX Runtime's WeightBiasQuantization pass would requantize the weight
        # per-tensor (measured: agreement fell)
        source = float_nodes[layer.name]
        if bdq is not None and len(source.input) > 2:
            scale = numpy_helper.to_array(inits[bdq.input[1]]).astype(np.float64)
            b = numpy_helper.to_array(float_inits[source.input[2]]).astype(np.float64)
            q = np.clip(np.round(b / scale), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
            t = numpy_helper.from_array(q, f"{bdq.input[0]}__float")
            m.graph.initializer.append(t)
            bdq.input[0] = t.name
        t = onnx.TensorProto()
        t.CopyFrom(float_inits[source.input[1]])
        t.name = f"{t.name}__float"
        m.graph.initializer.append(t)
        node.input[1] = t.name
        dropped.add(wdq.name)
        if bdq is None:
            zero = f"{layer.name}__zero_bias"
            channels = t.dims[0] if layer.axis == 0 else t.dims[1]
            m.graph.initializer.extend([numpy_helper.from_array(np.zeros(channels, np.int32), zero + "_q"),
                                        numpy_helper.from_array(np.array(1.0, np.float32), zero + "_scale")])
            m.graph.node.append(helper.make_node("DequantizeLinear", [zero + "_q", zero + "_scale"], [zero],
                                                 name=zero + "_DequantizeLinear"))
            del node.input[2:]
            node.input.append(zero)
    if dropped:
        keep = [n for n in m.graph.node if n.name not in dropped]
        del m.graph.node[:]
        m.graph.node.extend(keep)
        used = {i for n in m.graph.node for i in n.input}
        keep_inits = [i for i in m.graph.initializer if i.name in used]
        del m.graph.initializer[:]
        m.graph.initializer.extend(keep_inits)
    return m


# --------------------------------------------------------------------------------------------------
# one pass of the float model: weight noise per layer (sensitivity) and its mean (bias correction)


def weight_noise(prepped: onnx.ModelProto, deltas: dict[str, np.ndarray], images: np.ndarray,
                 threads: int) -> dict[str, tuple[float, np.ndarray]]:
    """Per layer, with e = op(x, delta) the output change a weight change of `delta` causes (x: the layer's float
    input): (||e||^2 / ||op(x, W)||^2 summed over `images`, the mean of e per output channel)."""
    if not deltas:
        return {}
    m = onnx.ModelProto()
    m.CopyFrom(prepped)
    g = m.graph
    del g.output[:]
    extra: dict[str, list] = {}
    nodes = {n.name: n for n in prepped.graph.node}
    for i, (name, delta) in enumerate(deltas.items()):
        node = nodes[name]
        g.initializer.extend([numpy_helper.from_array(delta.astype(np.float32), f"search__dw{i}"),
                              numpy_helper.from_array(np.array([0, 2, 3] if node.op_type == "Conv" else [0], np.int64),
                                                      f"search__axes{i}")])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "beta"}
        extra[node.output[0]] = [
            helper.make_node(node.op_type, [node.input[0], f"search__dw{i}"], [f"search__e{i}"], **attrs),
            helper.make_node("ReduceSumSquare", [f"search__e{i}"], [f"search__noise{i}"], keepdims=0),
            helper.make_node("ReduceSumSquare", [node.output[0]], [f"search__signal{i}"], keepdims=0),
            helper.make_node("ReduceMean", [f"search__e{i}", f"search__axes{i}"], [f"search__mean{i}"], keepdims=0)]
        for kind in ("noise", "signal", "mean"):
            g.output.append(helper.make_tensor_value_info(f"search__{kind}{i}", onnx.TensorProto.FLOAT, None))
    ordered = []
    for node in prepped.graph.node:  # each probe right after its layer, so activations are freed as usual
        ordered.append(node)
        ordered.extend(extra.get(node.output[0], []))
    del g.node[:]
    g.node.extend(ordered)
    sess = bounded_session(m, threads)
    sums = np.zeros((len(deltas), 2))
    means = [0.0] * len(deltas)
    for k in range(len(images)):
        outs = sess.run(None, {PRE_INPUT: images[k:k + 1]})
        for i in range(len(deltas)):
            sums[i] += (outs[3 * i], outs[3 * i + 1])
            means[i] = means[i] + outs[3 * i + 2].astype(np.float64)
    return {name: (float(n / s) if s > 0 else 0.0, mean / len(images))
            for name, (n, s), mean in zip(deltas, sums, means)}


def float_deltas(qdq: onnx.ModelProto, prepped: onnx.ModelProto, layers: list[Layer]) -> dict[str, np.ndarray]:
    """Per layer: its weight in the quantized graph minus its float weight."""
    return {la.name: dequantized_weight(qdq, la) - numpy_helper.to_array(_init(prepped, la.weight)).astype(np.float64)
            for la in layers}


def bias_corrected(qdq: onnx.ModelProto, shifts: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, dict]:
    """The quantized graph with each layer's int32 bias moved by minus the mean output change its quantized weights
    cause (bias correction: the quantization error no longer shifts the channel means); and a summary."""
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    inits = {i.name: i for i in m.graph.initializer}
    moved, steps = 0, []
    for name, shift in shifts.items():
        _, bdq = weight_dqs(m, name)
        if bdq is None:
            continue
        q = numpy_helper.to_array(inits[bdq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(inits[bdq.input[1]]).astype(np.float64)
        new = np.clip(np.round(q - shift / scale), np.iinfo(np.int32).min, np.iinfo(np.int32).max)
        inits[bdq.input[0]].CopyFrom(numpy_helper.from_array(new.astype(np.int32), bdq.input[0]))
        moved += 1
        steps.append(float(np.abs(new - q).mean()))
    return m, {"layers": moved, "mean_abs_change_in_bias_steps": round(float(np.mean(steps)) if steps else 0.0, 3)}


# --------------------------------------------------------------------------------------------------
# trials


def trial_runner(runtime: str, emulate: bool, threads: int):
    """A function model -> (batch -> logits) that opens the model on the build's runtime; `emulate`: ONNX Runtime
    with every graph optimization off, so the QDQ graph runs unfused in float (exact int8 arithmetic up to float
    rounding, on any CPU)."""
    if runtime == "openvino" and not emulate:
        import openvino as ov

        core = ov.Core()

        def open_ov(model: onnx.ModelProto):
            with tempfile.TemporaryDirectory() as td:
                path = Path(td) / "trial.onnx"
                onnx.save(model, str(path))
                # converted as the IR is (read_model of the ONNX file computed differently: measured 0.99 vs
                # 0.98 agreement on a lite0 split)
                compiled = core.compile_model(convert(str(path)), "CPU", {
                    "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
            out = compiled.output("logits")
            return lambda x: compiled(x)[out]
        return open_ov

    import onnxruntime as ort

    def open_ort(model: onnx.ModelProto):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        if emulate:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(["logits"], {PRE_INPUT: x})[0]
    return open_ort


def split_signals(logits: np.ndarray, reference: np.ndarray) -> dict:
    """Distances of an int8 build's split logits from the fp32 model's (`reference`, same images), per image and
    continuous, so that a decision does not hang on whether one image of ~100 flips:
      * kl: mean KL(softmax fp32 || softmax int8), in nats; logit_mse: mean squared logit error;
      * expected_agreement: the agreement the build is expected to have on images it has not seen. Image i keeps
        its top-1 class when its margin loss l_i (its fp32 top-1 margin minus its int8 margin for that class, >0
        when int8 moves towards another class) stays below its margin m_i. Pairing every image's loss with every
        image's fp32 margin, 1 - mean over i != j of [l_i >= m_j], estimates P(l < m) from n(n-1) pairs instead of
        n: a margin-loss distribution and a margin distribution, each measured on the whole split."""
    ref = reference.astype(np.float64)
    out = logits.astype(np.float64)
    n = len(ref)
    top = ref.argmax(axis=1)
    rows = np.arange(n)
    ref_others, out_others = ref.copy(), out.copy()
    ref_others[rows, top] = -np.inf
    out_others[rows, top] = -np.inf
    margin = ref[rows, top] - ref_others.max(axis=1)
    int8_margin = out[rows, top] - out_others.max(axis=1)
    loss = margin - int8_margin
    # pairs (i, j): count margins m_j <= l_i with a sort, then drop the i == j pairs
    m_sorted = np.sort(margin)
    below = np.searchsorted(m_sorted, loss, side="right").sum() - int((loss >= margin).sum())
    expected = 1.0 - below / (n * (n - 1)) if n > 1 else float(loss[0] < margin[0])

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    lp, lq = log_softmax(ref), log_softmax(out)
    kl = float(np.mean((np.exp(lp) * (lp - lq)).sum(axis=1)))
    return {"agreement": float(np.mean(out.argmax(axis=1) == top)), "expected_agreement": float(expected),
            "kl": kl, "logit_mse": float(np.mean((out - ref) ** 2))}


def timed(run, x: np.ndarray) -> tuple[np.ndarray, float]:
    """(logits, seconds per image) of one batch."""
    t = time.perf_counter()
    out = run(x)
    return out, (time.perf_counter() - t) / len(x)


def split_logits(run, images: np.ndarray) -> tuple[np.ndarray, float]:
    """(logits of the split, median seconds per image over its batches after one warm-up batch) of a model."""
    run(images[:TRIAL_BATCH])
    outs, per_image = zip(*(timed(run, images[i:i + TRIAL_BATCH]) for i in range(0, len(images), TRIAL_BATCH)))
    return np.concatenate(outs), float(np.median(per_image))


SPEED_ROUNDS = 3   # interleaved rounds of the final speed check
SPEED_IMAGES = 64  # split images a round times per model (b7 at 600, 200-image split: ~3 min instead of ~9)


def interleaved_speed(fp32_run, run, images: np.ndarray) -> float:
    """A graph's speed over the fp32 model's: SPEED_ROUNDS interleaved rounds of effzoo.speed.measure (the
    benchmark's and the race's harness), each running both on SPEED_IMAGES // TRIAL_BATCH batches of the split;
    the median of the rounds' paired ratios, robust to the machine's drift between trials."""
    batch = images[:TRIAL_BATCH]
    timed = speed.measure({"fp32": fp32_run, "trial": run}, batch, len(batch), max(1, SPEED_IMAGES // TRIAL_BATCH),
                          1, SPEED_ROUNDS)
    return speed.paired_ratio(timed["trial"], timed["fp32"])["median"]


def run_trial(run, images: np.ndarray, reference: np.ndarray, allowed: int, ref_logits: np.ndarray | None = None,
              signal: str = "agreement", budget: float = 0.0, stop_early: bool = True) -> dict:
    """A trial on the split: top-1 agreement with the reference top-1, the continuous signals against the fp32
    logits (split_signals), and seconds per image after one warm-up batch. signal "agreement" passes when the
    disagreements stay within `allowed` (and, with `stop_early`, stops once they exceed it: the trial cannot pass
    any more); "expected_agreement" runs the whole split and passes when that estimate reaches `budget`."""
    run(images[:TRIAL_BATCH])   # warm-up, not timed: the session's first call allocates
    t0 = time.monotonic()
    wrong = seen = 0
    outs, per_image = [], []
    for i in range(0, len(images), TRIAL_BATCH):
        logits, secs = timed(run, images[i:i + TRIAL_BATCH])
        top = logits.argmax(axis=1)
        outs.append(logits)
        per_image.append(secs)
        wrong += int((top != reference[i:i + TRIAL_BATCH]).sum())
        seen += len(top)
        if stop_early and signal == "agreement" and wrong > allowed:
            return {"passed": False, "disagreements_at_least": wrong, "images_run": seen,
                    "agreement_at_most": round(1 - wrong / len(images), 6), "s": round(time.monotonic() - t0, 2),
                    "s_per_image": round(float(np.median(per_image)), 8)}
    # speed: the median batch (robust to a hiccup of the machine), as split_logits times the fp32 model
    result = {"disagreements": wrong, "images_run": seen, "agreement": round(1 - wrong / len(images), 6),
              "s": round(time.monotonic() - t0, 2), "s_per_image": round(float(np.median(per_image)), 8)}
    if ref_logits is not None:
        sig = split_signals(np.concatenate(outs), ref_logits)
        result.update(expected_agreement=round(sig["expected_agreement"], 6), kl=round(sig["kl"], 6),
                      logit_mse=round(sig["logit_mse"], 6))
    if signal == "expected_agreement":
        if ref_logits is None:
            raise ZooError("split_signal expected_agreement needs the fp32 logits of the split")
        passed = result["expected_agreement"] >= budget
    else:
        passed = wrong <= allowed
    return {"passed": passed, **result}


USEFUL_SHARE = 0.8       # a prefix that removes this share of the KL the trials could remove is enough
MEASURABLE_KL_CUT = 0.1  # below this relative cut of the split KL, promotions bought nothing measurable


def useful_prefix(trials: dict[int, dict]) -> tuple[int, str]:
    """When no prefix meets the budget: the fewest promotions that remove most of the split KL the trials could
    remove (USEFUL_SHARE), or none when the best of them cuts it by less than MEASURABLE_KL_CUT; and why."""
    kl = {p: t["kl"] for p, t in trials.items() if "kl" in t}
    best = min(kl, key=lambda p: (kl[p], p))
    cut = kl[0] - kl[best]
    if kl[0] <= 0 or cut < MEASURABLE_KL_CUT * kl[0]:
        return 0, (f"no prefix met the budget, and promotions cut the split KL by {100 * cut / max(kl[0], 1e-12):.0f}% "
                   f"at most ({kl[0]:.5f} -> {kl[best]:.5f}): none kept, they would cost speed for no measurable "
                   f"gain")
    chosen = min(p for p in kl if kl[0] - kl[p] >= USEFUL_SHARE * cut)
    return chosen, (f"no prefix met the budget; {chosen} promoted layers remove "
                    f"{100 * (kl[0] - kl[chosen]) / kl[0]:.0f}% of the split KL ({kl[0]:.5f} -> {kl[chosen]:.5f}; "
                    f"the best trial, {best} layers, {kl[best]:.5f})")


def capped(ranking: list[tuple[Layer, str, float]], cap_macs: float) -> list[tuple[Layer, str, float]]:
    """The ranking with every layer that would take the promoted MACs past `cap_macs` left out."""
    out, used = [], 0
    for entry in ranking:
        if used + entry[0].macs <= cap_macs:
            out.append(entry)
            used += entry[0].macs
    return out


def schedule_search(trial, n: int) -> tuple[int, dict[int, dict]]:
    """Smallest prefix p of n ranked layers whose trial passes: p = 0, then 1, 2, 4, ... n, then bisection
    between the last failing and the first passing prefix. Returns (p, trials) with p = -1 when none passes."""
    trials: dict[int, dict] = {}

    def passes(p: int) -> bool:
        if p not in trials:
            trials[p] = trial(p)
        return trials[p]["passed"]

    if passes(0):
        return 0, trials
    lo, hi = 0, None
    p = 1
    while p <= n:
        if passes(p):
            hi = p
            break
        lo = p
        if p == n:
            break
        p = min(2 * p, n)
    if hi is None:
        return -1, trials
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi, trials


def seven_bit_layers(layers: list[Layer], policy: str) -> set[str]:
    """The layers whose weights a reduce_range policy keeps in ONNX Runtime's 7-bit range: all of them for 'all',
    the saturating ones for 'saturating'."""
    return {la.name for la in layers if policy == "all" or (policy == "saturating" and la.saturating)}


def rounded_by_output_error(base: onnx.ModelProto, exact: onnx.ModelProto | None, prepped: onnx.ModelProto,
                            quantized: list[Layer], to_exact: list[Layer], policy: str, images: np.ndarray,
                            threads: int) -> tuple[onnx.ModelProto, onnx.ModelProto | None, dict]:
    """The int8 graph (and the exact-uint8 one) with GPTQ weight rounding (effzoo.weight_rounding), and its
    record. 7-bit layers keep ONNX Runtime's 7-bit range: reduce_range 'all', or 'saturating' in those layers."""
    t0 = time.monotonic()
    hess, passes = layer_hessians(prepped, quantized, images, threads)
    hessian_s = time.monotonic() - t0
    base, record = gptq_rounded(base, prepped, quantized, hess, seven_bit_layers(quantized, policy))
    if exact is not None:
        exact, exact_record = gptq_rounded(exact, prepped, to_exact, hess, set())
        record["exact_uint8_output_error_vs_nearest"] = exact_record["output_error_vs_nearest"]
    record.update(images=len(images), passes=passes, hessian_s=round(hessian_s, 2),
                  s=round(time.monotonic() - t0, 2))
    return base, exact, record


def search(base: onnx.ModelProto, exact: onnx.ModelProto | None, prepped: onnx.ModelProto, layers: list[Layer],
           policy: str, runtime: str, split: tuple[np.ndarray, np.ndarray] | None, rank_images: np.ndarray,
           options: BuildOptions, emulate: bool, threads: int = 2, rounding_images: np.ndarray | None = None
           ) -> tuple[onnx.ModelProto, dict]:
    """The quantized graph that meets `split_min_agreement` on the split with the fewest promoted layers (or the most
    the cap allows, when none meets it), and the record of the search for build.json. With `weight_rounding: gptq`
    the integer weights are first rounded by output error on `rounding_images` (default: `rank_images`)."""
    t0 = time.monotonic()
    if len(rank_images) == 0:
        raise ZooError("calibration.json lists no range images: nothing to measure the weight noise on")
    budget = float(options.split_min_agreement)
    record: dict = {"split_min_agreement": budget, "max_promoted_macs": options.max_promoted_macs}
    producer = {o: n for n in base.graph.node for o in n.output}
    quantized = [la for la in layers if _has_weight_dq(base, la.name, producer)]
    kinds = {la.name: promotion_kind(la, policy, runtime) for la in quantized}
    to_exact = [la for la in quantized if kinds[la.name] == "exact_uint8"]
    if options.weight_rounding == "gptq":
        base, exact, record["weight_rounding"] = rounded_by_output_error(
            base, exact, prepped, quantized, to_exact, policy,
            rank_images if rounding_images is None else rounding_images, threads)
    else:
        record["weight_rounding"] = {"method": "nearest"}
    t_rank = time.monotonic()
    noise = weight_noise(prepped, float_deltas(base, prepped, quantized), rank_images, threads)
    exact_noise = weight_noise(prepped, float_deltas(exact, prepped, to_exact), rank_images, threads)
    rank_s = time.monotonic() - t_rank
    if options.bias_correction:
        base, record["bias_correction"] = bias_corrected(base, {n: v[1] for n, v in noise.items()})
        record["bias_correction"]["images"] = len(rank_images)
        if exact is not None:
            exact, _ = bias_corrected(exact, {n: v[1] for n, v in exact_noise.items()})
    split_size = 0 if split is None else len(split[0])
    if split_size < MIN_SPLIT_IMAGES or budget <= 0:
        why = ("split_min_agreement is 0" if budget <= 0 else "the calibration source has no validation split"
               if split_size == 0 else f"the validation split has {split_size} images, fewer than the "
               f"{MIN_SPLIT_IMAGES} a budget needs (calibration.validation_images, and a larger calibration source)")
        LOG.warning("int8 split budget not checked: %s", why)
        return base, {**record, "status": "not_checked", "why": why, "promoted": [], "split_images": split_size,
                      "search_s": round(time.monotonic() - t0, 2)}
    images, reference = split
    allowed = int(math.floor((1 - budget) * len(images) + 1e-9))
    # the fp32 model's logits of the split on the build's runtime (the continuous signals' reference), and its
    # speed there (what a promotion must not fall below)
    fp32_run = trial_runner(runtime, False, threads)(prepped)
    ref_logits, fp32_s_per_image = split_logits(fp32_run, images)
    # what a promotion removes: the layer's weight noise, less what is left with exact uint8 weights
    scores = {la.name: noise[la.name][0] - (exact_noise[la.name][0] if la.name in exact_noise else 0.0)
              for la in quantized}
    # accuracy gained per predicted slowdown: on ONNX Runtime a float depthwise layer costs over 10x what a float
    # dense layer of the same MACs does (bench/promotion_cost.py)
    total_macs = sum(la.macs for la in quantized)
    costs = promotion_costs.for_isa(kernel_isa())   # the ISA the trials run on, or the nearest one measured
    slowdown = {la.name: promotion_slowdown(la, kinds[la.name], runtime, total_macs, costs) for la in quantized}
    ranking = sorted(((la, kinds[la.name], scores[la.name]) for la in quantized),
                     key=lambda e: -e[2] / max(slowdown[e[0].name], 1e-9))
    order = capped(ranking, options.max_promoted_macs * total_macs)
    opener = trial_runner(runtime, emulate, threads)
    signal = options.split_signal

    graphs: dict[int, onnx.ModelProto] = {}

    def graph(p: int) -> onnx.ModelProto:
        """The graph with the first p layers of the ranking promoted (the last one asked for, kept)."""
        if p not in graphs:
            graphs.clear()
            graphs[p] = promoted_model(base, [(la, k) for la, k, _ in order[:p]], prepped, exact)
        return graphs[p]

    def trial(p: int, full: bool = False) -> dict:
        model = graph(p)
        t = time.monotonic()
        run = opener(model)
        open_s = time.monotonic() - t
        result = {"layers": p, **run_trial(run, images, reference, allowed, ref_logits, signal, budget,
                                           stop_early=not full), "open_s": round(open_s, 2)}
        if not emulate:   # the build's own kernels: its speed on the split, against the fp32 model's
            result["speed_over_fp32"] = round(fp32_s_per_image / result["s_per_image"], 3)
        LOG.info("budget trial: %d promoted layers: %s", p, result)
        return result

    chosen, trials = schedule_search(trial, len(order))
    passed = chosen >= 0
    cap_note = None
    if not passed:
        chosen = len(order)   # the most the cap allows, or fewer where more bought nothing measurable
        if signal == "expected_agreement":
            chosen, cap_note = useful_prefix(trials)
    status_note = None
    confirmed = None
    if not emulate:   # the speed floor: back off to the most promotions that keep it, confirmed interleaved
        floor = options.min_speed_over_fp32
        while True:
            confirmed = interleaved_speed(fp32_run, opener(graph(chosen)), images)
            if chosen in trials:
                trials[chosen]["speed_over_fp32_interleaved"] = round(confirmed, 3)
            if confirmed >= floor or chosen == 0:
                break
            fast = [p for p, t in trials.items() if p < chosen and t["speed_over_fp32"] >= floor]
            back = max(fast) if fast else 0
            status_note = (f"{chosen} promoted layers ran at {confirmed:.2f}x the fp32 model on the split "
                           f"(floor min_speed_over_fp32 {floor}); kept {back}")
            LOG.info("speed floor: %s", status_note)
            chosen = back
    final = trials.get(chosen)
    if final is None or "disagreements" not in final or "kl" not in final:   # scored on the whole split
        final = trials[chosen] = trial(chosen, full=True)
    model = graph(chosen)
    promoted = order[:chosen]
    agreeing = len(images) - final["disagreements"]
    met = final["passed"] if signal == "expected_agreement" else agreeing >= len(images) - allowed
    if cap_note:
        record["why"] = cap_note
    if status_note:
        record.update(status="speed_bound", why=status_note,
                      agreement_lower_95=round(lower_bound(agreeing, len(images)), 6))
    elif met:   # met as a point estimate: certified only as far as the split allows
        record.update(certify(agreeing, len(images), budget))
    else:
        record.update(status="cap_reached", agreement_lower_95=round(lower_bound(agreeing, len(images)), 6))
    speed = None if confirmed is None else round(confirmed, 3)
    if speed is not None and speed < 1.0:
        record["slower_than_fp32"] = (
            f"{speed:.2f}x the fp32 model on the split with {chosen} promoted layers" + (
                "; the unpromoted int8 graph is slower than fp32 on this CPU" if chosen == 0 else ""))
    elif speed is not None and speed < options.min_speed_over_fp32:
        record["below_speed_floor"] = (f"{speed:.2f}x the fp32 model on the split with {chosen} promoted layers "
                                       f"(min_speed_over_fp32 {options.min_speed_over_fp32})")
        LOG.warning("int8 build below its speed floor: %s", record["below_speed_floor"])
    record.update({
        "split_images": len(images), "disagreements_allowed": allowed, "signal": signal,
        "trials_run_as": ("ONNX Runtime, QDQ graph unfused in float (this CPU cannot run the target's int8 "
                          "kernels exactly; speed not measured)" if emulate else f"{runtime}, the build's own kernels"),
        "ranking": {"images": len(rank_images), "metric": "output noise-to-signal ratio the promotion removes "
                    "(float model, one pass per weight set), per predicted slowdown (measured promotion costs, "
                    f"{promotion_costs.COST_FILE.name})",
                    "layers": [[la.name, k, round(s, 8), la.macs, round(slowdown[la.name], 5)]
                               for la, k, s in ranking]},
        "promotion_costs": {k: costs[k] for k in ("kernel_isa", "priced_with", "measured", "cpu_flags")},
        "predicted_slowdown": round(sum(slowdown[la.name] for la, _, _ in promoted), 4),
        "cap_macs": int(options.max_promoted_macs * total_macs), "quantized_layer_macs": total_macs,
        "steps": [trials[p] for p in sorted(trials)],
        "promoted": [[la.name, k] for la, k, _ in promoted],
        "promoted_macs_fraction": round(sum(la.macs for la, _, _ in promoted) / max(total_macs, 1), 4),
        "final_agreement": final["agreement"], "final_expected_agreement": final["expected_agreement"],
        "final_kl": final["kl"], "final_logit_mse": final["logit_mse"], "speed_over_fp32_on_split": speed,
        "fp32_s_per_image": round(fp32_s_per_image, 5), "rank_s": round(rank_s, 2),
        "search_s": round(time.monotonic() - t0, 2)})
    if status_note:
        LOG.warning("int8 promotions held back by the speed floor: %s", status_note)
    elif not met:
        LOG.warning("int8 split budget %.3f not met: %d promoted layers (the cap, %s of the MACs) agree on %.4f",
                    budget, chosen, options.max_promoted_macs, final["agreement"])
    elif record["status"] == "unproven":
        LOG.warning("int8 split budget %.3f met on %d split images (agreement %.4f) but not certified: the 95%% "
                    "lower bound is %.4f; %s split images would certify it", budget, len(images), final["agreement"],
                    record["agreement_lower_95"], record["split_images_needed"])
    return model, record


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(i for i in model.graph.initializer if i.name == name)


def _has_weight_dq(model: onnx.ModelProto, node_name: str, producer: dict | None = None) -> bool:
    try:
        weight_dqs(model, node_name, producer)
    except ZooError:
        return False
    return True
