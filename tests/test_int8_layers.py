"""int8 weight precision per layer: which layers saturate without VNNI, bias-safe exact weights, sensitivity."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import build_int8
from conftest import resolved_config
from graph_edits import PRE_INPUT


# the int8 options as the workflow passes them (defaults from schemas/config.schema.yaml)
INT8 = resolved_config()["quant_modes"]["int8_max"]


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
    assert build_int8.cpu_requirement("none")[0] == "vnni" and build_int8.cpu_requirement("saturating")[0] == "avx2"


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
    build_int8._quantize_model(model, ranges, out, INT8, ["pre_nchw", "pre_cast"], ov, False)
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


def test_sensitivity_is_zero_for_a_layer_exact_at_7_bits_and_positive_for_one_that_is_not(tmp_path):
    rng = np.random.default_rng(1)
    # conv_a: per-channel weights spread over 255 levels (7 bits lose half of them); conv_b: weights in {-1, 0, 1}
    w_a = rng.uniform(-1, 1, (4, 3, 3, 3))
    w_b = rng.integers(-1, 2, (3, 4, 1, 1)).astype(np.float64)
    w_b[:, 0] = 1.0
    model = conv_model(w_a, np.zeros(4), w_b)
    x = images(8)
    ranges = observed_ranges(model, x)
    prepped = tmp_path / "prepped.onnx"
    onnx.save(model, prepped)
    layers = build_int8.saturating_layers(model)
    exact, reduced = tmp_path / "exact.onnx", tmp_path / "reduced.onnx"
    ex = ["pre_nchw", "pre_cast"]
    build_int8._quantize_model(model, ranges, exact, INT8, ex, build_int8.exact_weight_overrides(model, layers, ranges), False)
    build_int8._quantize_model(model, ranges, reduced, INT8, ex, build_int8.reduced_weight_overrides(layers), False)
    sens = build_int8.layer_sensitivity(str(prepped), exact, reduced, layers, x)
    assert set(sens) == {"conv_a", "conv_b"}
    assert abs(sens["conv_b"]) < 1e-9 < sens["conv_a"]


def test_exact_layers_by_name_must_exist(tmp_path, monkeypatch):
    import pytest

    from zoo_common import ZooError

    rng = np.random.default_rng(0)
    model = conv_model(rng.normal(0, 0.1, (4, 3, 3, 3)), np.zeros(4), rng.normal(0, 0.5, (2, 4, 1, 1)))
    ranges = observed_ranges(model, images())
    prepped = tmp_path / "p.onnx"
    onnx.save(model, prepped)
    names = list(ranges)
    np.savez(tmp_path / "stats.npz", names=np.array(names), min=np.array([ranges[n][0] for n in names]),
             max=np.array([ranges[n][1] for n in names]))
    opts = {**INT8, "exact_layers": ["conv_a", "nope"]}
    with pytest.raises(ZooError, match=r"exact_layers: \['nope'\] are not quantized GEMM layers of this model"):
        build_int8.build_int8(str(prepped), str(tmp_path / "stats.npz"), tmp_path / "m.onnx", tmp_path / "r.json", opts,
                              {"files": []}, str(tmp_path / "unused-datalist.tsv"), "avx512")
