"""int8 weight precision per layer: which layers saturate without VNNI, bias-safe exact weights, the accuracy
budget search (sensitivity, promoted graphs, schedule)."""
from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from conftest import resolved_config

import onnx
from effzoo import int8_probes, int8_search, int8_trials, promotion_costs, qdq_graph, weight_rounding
from effzoo.build_options import BuildOptions
from effzoo.common import ZooError
from effzoo.cpu_target import kernel_isa
from effzoo.graph_edits import PRE_INPUT
from effzoo.steps import build_int8
from onnx import TensorProto, helper, numpy_helper

# the int8 options as the workflow passes them (defaults from schemas/config.schema.yaml)
INT8 = resolved_config()["quant_modes"]["int8_max"]
INT8_OPTIONS = BuildOptions.parse(INT8, "int8_max")


def conv_model(w_a: np.ndarray, b_a: np.ndarray, w_b: np.ndarray, size: int = 8) -> onnx.ModelProto:
    """uint8 NHWC input -> float -> Conv A (3x3) -> Relu -> Conv B (1x1) -> GAP -> logits, like a built model."""
    x = helper.make_tensor_value_info(PRE_INPUT, TensorProto.UINT8, ["batch", size, size, 3])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", w_b.shape[0]])
    inits = [numpy_helper.from_array(w_a.astype(np.float32), "wa"), numpy_helper.from_array(b_a.astype(np.float32), "ba"),
             numpy_helper.from_array(w_b.astype(np.float32), "wb")]
    nodes = [helper.make_node("Transpose", [PRE_INPUT], ["t"], name="pre_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Cast", ["t"], ["xf"], name="pre_cast", to=TensorProto.FLOAT),
             helper.make_node("Conv", ["xf", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wb"], ["b"], name="conv_b"),
             helper.make_node("GlobalAveragePool", ["b"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["logits"], name="flat", axis=1)]
    m = helper.make_model(helper.make_graph(nodes, "convs", [x], [out], inits),
                          opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    return m


def observed_ranges(model: onnx.ModelProto, images: np.ndarray) -> dict[str, tuple[float, float]]:
    """min/max of every float tensor after the preprocessing nodes (what calibration would give)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = [o for n in m.graph.node if not n.name.startswith("pre_") for o in n.output]
    names.append("xf")
    for n in names:
        if n != "logits":
            m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(names, {PRE_INPUT: images})
    return {n: (float(min(v.min(), 0)), float(max(v.max(), 0))) for n, v in zip(names, outs)}


def images(n=4, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_saturating_layers_are_the_gemm_kernels_not_depthwise():
    inits = [numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w_full"),
             numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w_dw"),
             numpy_helper.from_array(np.ones((5, 4), np.float32), "w_gemm"),
             numpy_helper.from_array(np.ones((4, 6), np.float32), "w_mm")]
    nodes = [helper.make_node("Conv", ["x", "w_full"], ["c1"], name="full"),
             helper.make_node("Conv", ["c1", "w_dw"], ["c2"], name="dw", group=4),
             helper.make_node("Flatten", ["c2"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w_gemm"], ["g"], name="gemm", transB=1),
             helper.make_node("MatMul", ["f", "w_mm"], ["mm"], name="mm"),
             helper.make_node("Conv", ["x", "c1"], ["dyn"], name="dynamic_weight")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1, 1])],
                          [helper.make_tensor_value_info("g", TensorProto.FLOAT, None)], inits)
    layers = build_int8.saturating_layers(helper.make_model(g))
    assert layers == [("full", "w_full", 0), ("gemm", "w_gemm", 0), ("mm", "w_mm", 1)]


def test_reduce_range_policy_follows_the_target_cpu():
    assert build_int8.resolve_reduce_range("auto", "avx512") == "saturating"
    assert build_int8.resolve_reduce_range("auto", "avx2") == "saturating"
    assert build_int8.resolve_reduce_range("auto", "vnni") == "none"
    assert build_int8.resolve_reduce_range(True, "vnni") == "all" and build_int8.resolve_reduce_range(False, "avx2") == "none"
    assert build_int8.cpu_requirement("none")[0] == "vnni" and build_int8.cpu_requirement("saturating")[0] == "any"


def test_exact_uint8_weights_never_clip_the_int32_bias(tmp_path):
    """A dead channel (weights ~0, bias 1) would need a bias scale of ~1e-12: its range is widened instead."""
    rng = np.random.default_rng(0)
    w_a = rng.normal(0, 0.05, (4, 3, 3, 3))
    w_a[2] = 1e-12
    b_a = np.array([0.1, -0.2, 1.0, 0.3])
    model = conv_model(w_a, b_a, rng.normal(0, 0.5, (2, 4, 1, 1)))
    x = images()
    ranges = observed_ranges(model, x)
    layers = build_int8.saturating_layers(model)
    ov = build_int8.exact_weight_overrides(model, layers, ranges)
    assert ov["wa"][2]["rmax"] > 1e4 * 1e-12 and np.isclose(ov["wa"][0]["rmax"], np.abs(w_a[0]).max() * 255 / 254, rtol=1e-6)
    out = tmp_path / "q.onnx"
    build_int8.quantize_model(model, ranges, out, INT8_OPTIONS, ["pre_nchw", "pre_cast"], ov, False)
    q = onnx.load(str(out))
    qb = next(numpy_helper.to_array(i) for i in q.graph.initializer if i.name.startswith("ba") and i.data_type == TensorProto.INT32)
    assert np.abs(qb).max() < np.iinfo(np.int32).max
    wq = next(numpy_helper.to_array(i) for i in q.graph.initializer if i.name.startswith("wa") and i.data_type == TensorProto.UINT8)
    assert wq.dtype == np.uint8
    # the dead channel's output (relu(bias) = 1 everywhere, through conv_b) survives quantization
    sess_f = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sess_q = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ref = sess_f.run(["logits"], {PRE_INPUT: x})[0]
    got = sess_q.run(["logits"], {PRE_INPUT: x})[0]
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def quantized_pair(tmp_path, w_a, w_b, x, overrides=None):
    """(float model, its QDQ int8 graph with ranges observed on x)."""
    model = conv_model(w_a, np.zeros(w_a.shape[0]), w_b)
    ranges = observed_ranges(model, x)
    out = tmp_path / "q.onnx"
    build_int8.quantize_model(model, ranges, out, INT8_OPTIONS, ["pre_nchw", "pre_cast"], overrides or {}, False)
    return model, onnx.load(str(out))


def logits_of(model: onnx.ModelProto, x: np.ndarray, optimize: bool = True) -> np.ndarray:
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        ["logits"], {PRE_INPUT: x})[0]


def test_weight_layers_count_multiply_accumulates():
    rng = np.random.default_rng(0)
    model = conv_model(rng.normal(0, 0.1, (4, 3, 3, 3)), np.zeros(4), rng.normal(0, 0.5, (3, 4, 1, 1)))
    layers = {la.name: la for la in qdq_graph.weight_layers(model)}
    assert layers["conv_a"].macs == 8 * 8 * 4 * (3 * 3 * 3) and layers["conv_b"].macs == 8 * 8 * 3 * 4
    assert layers["conv_a"].saturating and int8_search.promotion_kind(layers["conv_a"], "saturating",
                                                                      "onnxruntime") == "exact_uint8"
    assert int8_search.promotion_kind(layers["conv_a"], "saturating", "openvino") == "float"
    assert int8_search.promotion_kind(layers["conv_a"], "none", "onnxruntime") == "float"


def test_a_float_promoted_layer_runs_in_float_in_the_optimized_session(tmp_path):
    """With a float weight *and* a float bias, ONNX Runtime's WeightBiasQuantization pass requantizes the weight
    per-tensor: the promoted graph must compute the same logits fused as unfused (float) and match float weights."""
    rng = np.random.default_rng(2)
    w_a, w_b = rng.normal(0, 0.3, (4, 3, 3, 3)), rng.normal(0, 0.5, (3, 4, 1, 1))
    w_a[0] *= 40  # one wide channel: per-tensor int8 weights would flatten the other three
    x = images(8)
    model, qdq = quantized_pair(tmp_path, w_a, w_b, x)
    layers = qdq_graph.weight_layers(model)
    promoted = qdq_graph.promoted_model(qdq, [(la, "float") for la in layers], model, None)
    assert not any(n.op_type == "DequantizeLinear" and n.output[0] in {"conv_a", "conv_b"} for n in promoted.graph.node)
    inits = {i.name: numpy_helper.to_array(i) for i in promoted.graph.initializer}
    node_a = next(n for n in promoted.graph.node if n.name == "conv_a")
    assert np.array_equal(inits[node_a.input[1]], w_a.astype(np.float32))
    fused, unfused = logits_of(promoted, x), logits_of(promoted, x, optimize=False)
    assert np.abs(fused - unfused).max() < 1e-4 * np.abs(unfused).max()


def test_exact_promotion_takes_the_exact_weights(tmp_path):
    rng = np.random.default_rng(3)
    w_a, w_b = rng.uniform(-1, 1, (4, 3, 3, 3)), rng.uniform(-1, 1, (3, 4, 1, 1))
    x = images(8)
    model = conv_model(w_a, np.zeros(4), w_b)
    layers = build_int8.saturating_layers(model)
    ranges = observed_ranges(model, x)
    _, reduced = quantized_pair(tmp_path, w_a, w_b, x, build_int8.reduced_weight_overrides(layers))
    _, exact = quantized_pair(tmp_path, w_a, w_b, x, build_int8.exact_weight_overrides(model, layers, ranges))
    la = next(la for la in qdq_graph.weight_layers(model) if la.name == "conv_b")
    promoted = qdq_graph.promoted_model(reduced, [(la, "exact_uint8")], model, exact)
    assert np.array_equal(qdq_graph.dequantized_weight(promoted, la), qdq_graph.dequantized_weight(exact, la))
    other = next(la for la in qdq_graph.weight_layers(model) if la.name == "conv_a")
    assert np.array_equal(qdq_graph.dequantized_weight(promoted, other),
                          qdq_graph.dequantized_weight(reduced, other))
    err_7 = np.abs(qdq_graph.dequantized_weight(reduced, la) - w_b).max()
    assert np.abs(qdq_graph.dequantized_weight(exact, la) - w_b).max() < 0.6 * err_7


def test_weight_noise_is_the_output_noise_to_signal_ratio_and_its_channel_mean(tmp_path):
    rng = np.random.default_rng(4)
    w_a, w_b = rng.normal(0, 0.3, (4, 3, 3, 3)), rng.normal(0, 0.5, (3, 4, 1, 1))
    model = conv_model(w_a, np.zeros(4), w_b)
    deltas = {"conv_a": np.zeros_like(w_a), "conv_b": 0.5 * w_b}   # no bias: noise = (0.5)^2 of the signal
    x = images(3)
    noise = int8_probes.weight_noise(model, deltas, x, threads=1)
    assert noise["conv_a"][0] == 0.0 and abs(noise["conv_b"][0] - 0.25) < 1e-5
    # the mean output change per channel: half of conv_b's mean output (no bias), averaged over the images
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, None))
    b = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(["b"], {PRE_INPUT: x})[0]
    assert np.allclose(noise["conv_b"][1], 0.5 * b.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    assert not noise["conv_a"][1].any()


def test_bias_correction_moves_the_int32_bias_by_the_mean_shift(tmp_path):
    rng = np.random.default_rng(5)
    w_a, w_b = rng.normal(0, 0.3, (4, 3, 3, 3)), rng.normal(0, 0.5, (3, 4, 1, 1))
    x = images(8)
    model, qdq = quantized_pair(tmp_path, w_a, w_b, x)
    _, bdq = weight_rounding.weight_dqs(qdq, "conv_a")
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    scale = inits[bdq.input[1]]
    shift = np.array([1.0, -2.0, 0.0, 3.0]) * scale
    fixed, summary = qdq_graph.bias_corrected(qdq, {"conv_a": shift})
    new = {i.name: numpy_helper.to_array(i) for i in fixed.graph.initializer}[bdq.input[0]]
    assert new.tolist() == (inits[bdq.input[0]] - [1, -2, 0, 3]).tolist()
    assert summary == {"layers": 1, "mean_abs_change_in_bias_steps": 1.5}
    # on the model: the corrected graph's mean logit error against float is smaller than the uncorrected one's
    layers = [la for la in qdq_graph.weight_layers(model) if qdq_graph.has_weight_dq(qdq, la.name)]
    noise = int8_probes.weight_noise(model, qdq_graph.float_deltas(qdq, model, layers), x, threads=1)
    corrected, _ = qdq_graph.bias_corrected(qdq, {n: v[1] for n, v in noise.items()})
    ref = logits_of(model, x)
    assert abs((logits_of(corrected, x) - ref).mean()) < abs((logits_of(qdq, x) - ref).mean())


def test_schedule_finds_the_smallest_passing_prefix_stepwise_then_by_bisection():
    for need, n in ((0, 10), (1, 10), (5, 10), (10, 10), (37, 60)):
        calls = []
        chosen, trials = int8_search.schedule_search(lambda p: calls.append(p) or {"passed": p >= need}, n)
        assert chosen == need and len(calls) == len(set(calls))
        assert len(calls) <= 2 * int(np.ceil(np.log2(n))) + 2
    calls = []
    assert int8_search.schedule_search(lambda p: calls.append(p) or {"passed": False}, 12)[0] == -1
    assert calls == [0, 1, 2, 4, 8, 12]


def test_a_trial_stops_once_the_budget_is_out_of_reach():
    reference = np.zeros(40, np.int64)
    seen = []

    def run(x):
        seen.append(len(x))
        out = np.zeros((len(x), 3))
        out[:, 1] = 1.0   # every image disagrees
        return out

    n = 3 * int8_trials.TRIAL_BATCH
    result = int8_trials.run_trial(run, np.zeros((n, 2, 2, 3), np.uint8), reference[:1].repeat(n), allowed=5)
    b = int8_trials.TRIAL_BATCH   # 16 > 5 allowed: the first batch already fails the trial
    assert result["passed"] is False and result["images_run"] == b and result["disagreements_at_least"] == b
    assert sum(seen) == 2 * b   # one warm-up batch (not timed), then one batch
    whole = int8_trials.run_trial(run, np.zeros((40, 2, 2, 3), np.uint8), reference, allowed=5, stop_early=False)
    assert whole["passed"] is False and whole["images_run"] == 40 and whole["disagreements"] == 40
    ok = int8_trials.run_trial(lambda x: np.eye(3)[np.zeros(len(x), int)], np.zeros((10, 2, 2, 3), np.uint8),
                               np.zeros(10, np.int64), allowed=0)
    assert ok == {**ok, "passed": True, "agreement": 1.0, "disagreements": 0, "images_run": 10}


def test_the_cap_leaves_out_layers_past_the_promoted_macs_budget():
    big, small = qdq_graph.Layer("big", "w1", 0, 80, True), qdq_graph.Layer("small", "w2", 0, 15, True)
    other = qdq_graph.Layer("other", "w3", 0, 10, True)
    ranked = [(big, "float", 3.0), (small, "float", 2.0), (other, "float", 1.0)]
    assert [e[0].name for e in int8_search.capped(ranked, 26)] == ["small", "other"]
    assert [e[0].name for e in int8_search.capped(ranked, 100)] == ["big", "small"]


def colored_images(n: int, seed: int) -> np.ndarray:
    """Images of one dominant colour each, with noise: the colour decides the class of `color_model`."""
    r = np.random.default_rng(seed)
    return np.clip(r.integers(0, 256, (n, 1, 1, 3)) + r.integers(-40, 40, (n, 8, 8, 3)), 0, 255).astype(np.uint8)


def color_model_int8(tmp_path):
    """(float model, QDQ graph, layers, float top-1 and int8 top-1 on 2000 images, top-1 with conv_b in float): a
    classifier of the dominant colour whose conv_b weights are quantized badly (clipped to +-0.3), so that the
    int8 graph disagrees with fp32 on about 10% of the images and promoting conv_b repairs most of them."""
    r = np.random.default_rng(3)
    w_a = r.normal(0, 0.002, (4, 3, 3, 3))
    for c in range(3):
        w_a[c, c, 1, 1] += 1 / 64
    w_b = (np.eye(3, 4) + r.normal(0, 0.02, (3, 4))).reshape(3, 4, 1, 1)
    clipped = {"wb": [{"axis": 0, "rmin": -0.3, "rmax": 0.3} for _ in range(3)]}
    model, qdq = quantized_pair(tmp_path, w_a, w_b, colored_images(8, 0), clipped)
    layers = qdq_graph.weight_layers(model)
    pool = colored_images(2000, 1)
    conv_b = next(la for la in layers if la.name == "conv_b")
    promoted = logits_of(qdq_graph.promoted_model(qdq, [(conv_b, "float")], model, None), pool).argmax(1)
    return model, qdq, layers, pool, logits_of(model, pool).argmax(1), logits_of(qdq, pool).argmax(1), promoted


def test_search_promotes_the_layer_that_repairs_agreement_and_certifies_only_what_the_split_allows(tmp_path):
    model, qdq, layers, pool, fp32, int8, promoted = color_model_int8(tmp_path)
    repaired = np.nonzero((int8 != fp32) & (promoted == fp32))[0]
    agree = np.nonzero((int8 == fp32) & (promoted == fp32))[0]
    assert len(repaired) >= 15 and len(agree) >= 185
    opts = BuildOptions.parse({**INT8, "split_min_agreement": 0.95, "max_promoted_macs": 0.5,
                               "bias_correction": False, "split_signal": "agreement", "min_speed_over_fp32": 0},
                              "int8_max")

    def search(rows):
        return int8_search.search(qdq, None, model, layers, "none", "onnxruntime", (pool[rows], fp32[rows]),
                                  pool[:8], opts, False, 1)[1].as_json()
    # 60 images, 5 of them repaired by conv_b in float: the int8 graph fails (5 > 3 allowed), one promotion passes
    small = search(np.concatenate([repaired[:5], agree[:55]]))
    assert [s["layers"] for s in small["steps"]] == [0, 1] and not small["steps"][0]["passed"]
    assert small["promoted"] == [["conv_b", "float"]] and small["final_agreement"] == 1.0
    # 60/60 agreeing cannot certify 95%: its exact lower bound is 0.025^(1/60) = 0.940; 72 images would
    assert small["status"] == "unproven" and small["agreement_lower_95"] == pytest.approx(0.025 ** (1 / 60), abs=1e-6)
    assert small["split_images_needed"] == 72
    # 200 images, 15 repaired: the same promotion, now certified (lower bound 0.025^(1/200) = 0.982)
    large = search(np.concatenate([repaired[:15], agree[:185]]))
    assert large["status"] == "certified" and large["promoted"] == [["conv_b", "float"]]
    assert large["agreement_lower_95"] == pytest.approx(0.025 ** (1 / 200), abs=1e-6)
    assert "split_images_needed" not in large
    # no graph agrees with shifted labels: the search stops at the cap (half the MACs admits conv_b only)
    rows = np.concatenate([repaired[:15], agree[:185]])
    capped = int8_search.search(qdq, None, model, layers, "none", "onnxruntime", (pool[rows], (fp32[rows] + 1) % 3),
                                pool[:8], opts, False, 1)[1].as_json()
    macs = {la.name: la.macs for la in layers}
    assert capped["status"] == "cap_reached" and capped["promoted"] == [["conv_b", "float"]]
    assert capped["promoted_macs_fraction"] == round(macs["conv_b"] / sum(macs.values()), 4)
    assert capped["final_agreement"] == 0.0 and capped["cap_macs"] == int(0.5 * sum(macs.values()))


def test_a_split_too_small_or_missing_is_not_checked(tmp_path):
    model, qdq, layers, pool, fp32, _, _ = color_model_int8(tmp_path)
    opts = BuildOptions.parse({**INT8, "max_promoted_macs": 0.5}, "int8_max")
    tiny = int8_search.search(qdq, None, model, layers, "none", "onnxruntime", (pool[:12], fp32[:12]), pool[:8],
                              opts, False, 1)[1].as_json()
    assert tiny["status"] == "not_checked" and tiny["promoted"] == [] and tiny["split_images"] == 12
    assert tiny["why"].startswith("the validation split has 12 images, fewer than the 50 a budget needs")
    off = int8_search.search(qdq, None, model, layers, "none", "onnxruntime", None, pool[:8], opts, False, 1)[1].as_json()
    # bias correction applies without a split too; conv_b has no bias to correct
    assert off["status"] == "not_checked" and off["promoted"] == [] and off["bias_correction"]["layers"] == 1
    assert off["why"] == "the calibration source has no validation split"


def test_the_expected_agreement_decides_on_every_image_and_the_priced_speed_floor_holds_promotions_back(tmp_path):
    model, qdq, layers, pool, fp32, int8, promoted = color_model_int8(tmp_path)
    rows = np.arange(200)
    base = {**INT8, "split_min_agreement": 0.95, "max_promoted_macs": 0.5, "bias_correction": False}

    def search(**over):
        opts = BuildOptions.parse({**base, **over}, "int8_max")
        return int8_search.search(qdq, None, model, layers, "none", "onnxruntime", (pool[rows], fp32[rows]),
                                  pool[:8], opts, False, 1)[1].as_json()
    rec = search(split_signal="expected_agreement", min_speed_over_fp32=0)
    first = rec["steps"][0]
    assert first["layers"] == 0 and first["images_run"] == 200   # no early exit: every image counts
    assert not first["passed"] and first["expected_agreement"] < 0.95 and first["kl"] > 0
    assert rec["promoted"] == [["conv_b", "float"]] and rec["signal"] == "expected_agreement"
    assert rec["final_expected_agreement"] >= 0.95 and rec["final_kl"] < first["kl"]
    assert rec["status"] != "speed_bound"
    # timed on the build's own kernels, recorded as measurements only
    assert rec["measured"]["split_speed_over_runtime_fp32"] > 0 and set(rec["measured"]["trials"]) == {"0", "1"}
    assert all("s" not in step and "measured" not in step for step in rec["steps"])
    # a floor the priced int8 speed cannot reach once conv_b is promoted: held back, by the price, not a timing
    costs = promotion_costs.for_isa(kernel_isa())
    priced = promotion_costs.int8_speed(costs, "onnxruntime", "none")
    share = next(la.macs for la in layers if la.name == "conv_b") / sum(la.macs for la in layers)
    slowdown = costs["slowdown_per_mac_share"]["onnxruntime"]["float_dense"] * share
    floor = round(priced / (1 + slowdown / 2), 4)   # above the promoted graph's priced speed, below int8's
    slow = search(split_signal="expected_agreement", min_speed_over_fp32=floor)
    assert slow["status"] == "speed_bound" and slow["promoted"] == []
    assert slow["why"] == (f"1 promoted layers would run at {priced / (1 + slowdown):.2f}x the fp32 model by the "
                           f"priced costs (floor min_speed_over_fp32 {floor}); kept 0")
    assert slow["speed_floor"] == {"min_speed_over_fp32": floor, "int8_speed_over_runtime_fp32": priced,
                                   "predicted_speed_over_runtime_fp32": priced}


def test_no_timing_decides_which_layers_a_search_promotes(tmp_path, monkeypatch):
    """The same search under the real clock and under clocks on which every timed call takes 64 s or 1/64 s (so
    int8 times the same as fp32, under the default 1.3x floor): the same promoted layers, record and model bytes;
    only the measurements differ."""
    model, qdq, layers, pool, fp32, _, _ = color_model_int8(tmp_path)
    opts = BuildOptions.parse({**INT8, "split_min_agreement": 0.95, "max_promoted_macs": 0.5,
                               "bias_correction": False}, "int8_max")
    rows = np.arange(120)

    def built():
        graph, rec = int8_search.search(qdq, None, model, layers, "none", "onnxruntime", (pool[rows], fp32[rows]),
                                        pool[:8], opts, False, 1)
        out = rec.as_json()
        return graph.SerializeToString(), out.pop("measured"), out
    real = built()
    assert real[2]["promoted"] == [["conv_b", "float"]]
    for step in (64.0, 1 / 64):   # powers of two: the clock adds up exactly
        clock = itertools.count(step=step)
        monkeypatch.setattr(int8_trials.time, "perf_counter", lambda: next(clock))
        skewed = built()
        assert skewed[0] == real[0] and skewed[2] == real[2]
        assert skewed[1]["fp32_s_per_image"] == round(step / int8_trials.TRIAL_BATCH, 5)   # the clock was in use
        assert skewed[1]["split_speed_over_runtime_fp32"] == 1.0


def test_the_expected_agreement_tracks_held_out_agreement_closer_than_the_split_count():
    """Synthetic logits with a known flip rate near 1%: over many 100-image splits the estimate from all pairs
    lies closer to the agreement on a large held-out set than the split's own count does."""
    rng = np.random.default_rng(0)

    def population(n):
        ref = rng.normal(0, 2.5, (n, 20))
        return ref, ref + rng.normal(0, 0.05, ref.shape)
    held_ref, held_out = population(100_000)
    truth = float(np.mean(held_out.argmax(1) == held_ref.argmax(1)))
    assert 0.97 < truth < 0.995
    count_err, expected_err = [], []
    for _ in range(200):
        ref, out = population(100)
        sig = int8_trials.split_signals(out, ref)
        count_err.append(sig["agreement"] - truth)
        expected_err.append(sig["expected_agreement"] - truth)
    # both unbiased here (noise independent of the margin); the estimate with 40% less error
    assert abs(np.mean(expected_err)) < 0.002 and abs(np.mean(count_err)) < 0.004
    assert np.mean(np.abs(expected_err)) < 0.75 * np.mean(np.abs(count_err))


def test_split_signals_hand_computed():
    ref = np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 2.0]])     # fp32 margins 3, 1, 2
    out = np.array([[2.0, 0.0], [0.0, 0.5], [0.0, 2.0]])     # margin losses 1, 1.5 (a flip), 0
    sig = int8_trials.split_signals(out, ref)
    assert sig["agreement"] == pytest.approx(2 / 3)
    # pairs i != j with loss_i >= margin_j: (0, 1), (1, 1)... i=0: l=1 vs m1=1 -> 1 pair; i=1: l=1.5 vs m0=3, m2=2
    # -> none; i=2: l=0 -> none: 1 of 6 pairs
    assert sig["expected_agreement"] == pytest.approx(1 - 1 / 6)
    assert sig["logit_mse"] == pytest.approx(np.mean((out - ref) ** 2))
    assert sig["kl"] > 0


def test_exact_split_bounds_and_the_split_size_that_certifies():
    from effzoo.budget import images_to_certify, lower_bound

    assert lower_bound(100, 100) == pytest.approx(0.025 ** (1 / 100), abs=1e-9)
    # scipy.stats.beta.ppf(0.025, 50, 51)
    assert lower_bound(0, 10) == 0.0 and lower_bound(50, 100) == pytest.approx(0.398321, abs=1e-6)
    assert images_to_certify(1.0, 0.99) == 368        # ln(0.025) / ln(0.99) = 367.04: 0 disagreements in 368 images
    assert lower_bound(367, 367) < 0.99 <= lower_bound(368, 368)
    assert images_to_certify(0.99, 0.99) is None and images_to_certify(0.98, 0.99) is None


def test_promotions_are_priced_by_their_measured_slowdown_per_runtime():
    costs = promotion_costs.for_isa(kernel_isa())
    per_share = costs["slowdown_per_mac_share"]
    assert {"float_depthwise", "float_dense", "exact_uint8_dense"} <= set(per_share["onnxruntime"])
    assert {"float_depthwise", "float_dense"} <= set(per_share["openvino"])
    dense, depthwise = qdq_graph.Layer("d", "wd", 0, 100, True), qdq_graph.Layer("dw", "ww", 0, 100, False)
    # the same MACs cost more as a float depthwise layer on ONNX Runtime (its float depthwise kernel in a QDQ
    # graph), and exact uint8 costs less than float
    ort = {la.name: int8_search.promotion_slowdown(la, "float", "onnxruntime", 1000, costs)
           for la in (dense, depthwise)}
    assert ort["dw"] > 5 * ort["d"] > 0
    assert int8_search.promotion_slowdown(dense, "exact_uint8", "onnxruntime", 1000, costs) < ort["d"]
    assert int8_search.promotion_slowdown(dense, "float", "openvino", 1000, costs) == pytest.approx(
        per_share["openvino"]["float_dense"] * 0.1)
    with pytest.raises(ZooError, match=f"no exact_uint8_depthwise cost measured for onnxruntime on "
                                       f"{costs['priced_with']} kernels"):
        int8_search.promotion_slowdown(depthwise, "exact_uint8", "onnxruntime", 1000, costs)


def test_a_build_prices_with_its_own_kernel_isa_or_names_the_nearest_it_borrows():
    def entry(dense):
        return {"measured": "2026-12-07", "cpu_flags": "f",
                "slowdown_per_mac_share": {"openvino": {"float_dense": dense}}}
    table = {"avx2": entry(1.0), "avx512_vnni": entry(2.0), "amx": entry(3.0)}
    own = promotion_costs.for_isa("avx512_vnni", table)
    assert own["priced_with"] == "avx512_vnni" and own["slowdown_per_mac_share"]["openvino"]["float_dense"] == 2.0
    # avx512 is one step from avx2 and two from avx512_vnni; avx_vnni one from avx512_vnni; below avx2, avx2
    assert promotion_costs.for_isa("avx512", table)["priced_with"] == "avx2"
    assert promotion_costs.for_isa("avx_vnni", table)["priced_with"] == "avx512_vnni"
    assert promotion_costs.for_isa("other", table)["priced_with"] == "avx2"
    # a tie goes to the lower ISA
    assert promotion_costs.for_isa("avx_vnni", {"avx512": entry(1.0), "amx": entry(3.0)})["priced_with"] == "avx512"
    # the package's table: this machine's ISA, or the nearest measured one, is what builds here use and record
    here = promotion_costs.for_isa(kernel_isa())
    assert here["kernel_isa"] == kernel_isa()
    assert here["priced_with"] == promotion_costs.nearest(kernel_isa(), promotion_costs.measured())
    assert (here["priced_with"] == kernel_isa()) == (kernel_isa() in promotion_costs.measured())


def test_without_a_passing_prefix_only_promotions_that_cut_the_kl_are_kept():
    flat = {0: {"kl": 0.0020}, 1: {"kl": 0.0021}, 2: {"kl": 0.0019}, 4: {"kl": 0.00195}, 8: {"kl": 0.0020}}
    chosen, why = int8_search.useful_prefix(flat)
    assert chosen == 0 and why.startswith("no prefix met the budget, and promotions cut the split KL by 5% at most")
    falling = {0: {"kl": 0.0044}, 1: {"kl": 0.0043}, 2: {"kl": 0.0045}, 4: {"kl": 0.0036}, 8: {"kl": 0.0034},
               16: {"kl": 0.0033}}
    # the best trial cuts 0.0011; 80% of it, 0.00088, is first reached at 8 layers (4 layers cut 0.0008)
    chosen, why = int8_search.useful_prefix(falling)
    assert chosen == 8 and "the best trial, 16 layers" in why


def test_the_final_speed_check_times_both_models_back_to_back_and_takes_the_median_ratio(monkeypatch):
    clock = [0.0]
    calls = []

    def runner(name, per_image):
        def run(x):
            calls.append(name)
            clock[0] += per_image * len(x)
            return np.zeros((len(x), 3))
        return run
    monkeypatch.setattr(int8_trials.time, "perf_counter", lambda: clock[0])
    images = np.zeros((int8_trials.SPEED_IMAGES + 40, 2, 2, 3), np.uint8)
    ratio = int8_trials.interleaved_speed(runner("fp32", 0.004), runner("int8", 0.001), images)
    assert ratio == pytest.approx(4.0)
    # effzoo.speed's harness: one warm-up call each, then rounds of SPEED_IMAGES images a model, in rotating order
    per_turn = int8_trials.SPEED_IMAGES // int8_trials.TRIAL_BATCH
    assert calls[:2] == ["fp32", "int8"] and len(calls) == 2 + 2 * int8_trials.SPEED_ROUNDS * per_turn
    assert calls[2::per_turn] == ["fp32", "int8", "int8", "fp32", "fp32", "int8"][:2 * int8_trials.SPEED_ROUNDS]


def test_trials_run_at_the_batch_the_race_ranks_builds_at():
    """TRIAL_BATCH is the largest of the benchmark's default batch sizes, the batch the race times builds at."""
    assert int8_trials.TRIAL_BATCH == max(resolved_config()["benchmark"]["batch_sizes"])
