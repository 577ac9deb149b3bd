"""int8 weight rounding by output error (effzoo/weight_rounding.py): patches, Hessians, GPTQ, the QDQ graph."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from test_int8_layers import INT8, conv_model, observed_ranges

import onnx
from effzoo import int8_search, qdq_graph, weight_rounding
from effzoo.build_options import BuildOptions
from effzoo.graph_edits import PRE_INPUT
from effzoo.steps import build_int8
from onnx import TensorProto, helper, numpy_helper


def layer_model(w: np.ndarray, group: int, stride: int, pad: int, size: int = 9) -> onnx.ModelProto:
    """float input (1, C, size, size) -> one Conv -> output 'y'."""
    c_in = w.shape[1] * group
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=group, strides=[stride, stride],
                              pads=[pad] * 4)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w.astype(np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    return m


@pytest.mark.parametrize("group,stride,pad", [(1, 1, 1), (1, 2, 0), (4, 1, 1), (4, 2, 2)])
def test_patches_times_weights_reproduce_the_convolution(group, stride, pad):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 4 // group, 3, 3))
    x = rng.normal(size=(4, 9, 9))
    m = layer_model(w, group, stride, pad)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x[None].astype(np.float32)})[0][0]
    p = weight_rounding.conv_patches(x, m.graph.node[0], (3, 3), None)          # C, 9, P
    if group == 1:
        y = w.reshape(4, -1) @ p.reshape(-1, p.shape[2])
    else:
        y = np.einsum("ck,ckp->cp", w.reshape(4, 9), p)
    assert np.allclose(y.reshape(ref.shape), ref, atol=1e-4)
    some = np.array([0, 3, ref.shape[1] * ref.shape[2] - 1])
    chosen = weight_rounding.conv_patches(x, m.graph.node[0], (3, 3), some)
    assert np.array_equal(chosen, p[:, :, some])


def test_with_uncorrelated_inputs_gptq_is_nearest_rounding_and_with_correlated_ones_it_cuts_the_output_error():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (32, 48))
    scale = np.abs(w).max(axis=1) / 127
    zero = np.zeros(32)
    nearest = np.clip(np.round(w / scale[:, None]), -127, 127)
    u_white = weight_rounding.inverse_cholesky(np.eye(48))
    assert np.array_equal(weight_rounding.gptq_rows(w, u_white, scale, zero, -127, 127), nearest)
    # inputs with strongly correlated channels (as neighbouring feature maps are)
    x = rng.normal(size=(2000, 8)) @ rng.normal(size=(8, 48)) + 0.1 * rng.normal(size=(2000, 48))
    h = x.T @ x
    q = weight_rounding.gptq_rows(w, weight_rounding.inverse_cholesky(h), scale, zero, -127, 127)
    err_gptq = weight_rounding.output_error(w, q * scale[:, None], h)
    err_nearest = weight_rounding.output_error(w, nearest * scale[:, None], h)
    assert err_gptq < 0.5 * err_nearest
    assert np.array_equal(q, np.round(q)) and np.abs(q).max() <= 127
    # a 7-bit layer stays in ONNX Runtime's reduced range, a uint8 layer in [0, 255] around its zero point
    q7 = weight_rounding.gptq_rows(w, weight_rounding.inverse_cholesky(h), scale * 2, zero, -64, 64)
    assert np.abs(q7).max() <= 64 and np.abs(q7).max() >= 60
    qu = weight_rounding.gptq_rows(w, weight_rounding.inverse_cholesky(h), scale, zero + 128, 0, 255)
    assert qu.min() >= 0 and qu.max() <= 255 and np.abs((qu - 128) - q).max() <= 1


def test_hessians_are_the_layer_inputs_second_moments_whatever_the_number_of_passes(monkeypatch):
    rng = np.random.default_rng(2)
    w_a, w_b = rng.normal(0, 0.1, (4, 3, 3, 3)), rng.normal(0, 0.5, (3, 4, 1, 1))
    model = conv_model(w_a, np.zeros(4), w_b)
    layers = qdq_graph.weight_layers(model, {"pre_nchw", "pre_cast"})
    x = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    hess, passes = weight_rounding.layer_hessians(model, layers, x, 1)
    assert passes == 1 and hess["conv_a"].shape == (27, 27) and hess["conv_b"].shape == (4, 4)
    # conv_b (1x1) sees relu(conv_a(x)): its H is the sum over images and positions of r r^T
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    r = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(["r"], {PRE_INPUT: x})[0]
    flat = r.transpose(1, 0, 2, 3).reshape(4, -1).astype(np.float64)
    assert np.allclose(hess["conv_b"], flat @ flat.T, rtol=1e-5)
    monkeypatch.setattr(weight_rounding, "MEMORY_BUDGET", 1)   # one layer a pass
    monkeypatch.setattr(weight_rounding, "PENDING_BYTES", 1)   # each image's columns multiplied in at once
    split, passes = weight_rounding.layer_hessians(model, layers, x, 1)
    assert passes == 2 and all(np.allclose(split[k], hess[k]) for k in hess)


def test_gptq_rounded_graph_keeps_its_scales_and_ranges_and_moves_the_outputs_less(tmp_path):
    rng = np.random.default_rng(3)
    w_a = rng.normal(0, 0.1, (6, 3, 3, 3))
    w_b = rng.normal(0, 0.5, (3, 6, 1, 1))
    model = conv_model(w_a, np.zeros(6), w_b)
    x = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    out = tmp_path / "q.onnx"
    opts = BuildOptions.parse(INT8, "int8_max")
    build_int8.quantize_model(model, observed_ranges(model, x), out, opts, ["pre_nchw", "pre_cast"],
                               build_int8.reduced_weight_overrides(build_int8.saturating_layers(model)), False)
    qdq = onnx.load(str(out))
    layers = qdq_graph.weight_layers(model, {"pre_nchw", "pre_cast"})
    hess, _ = weight_rounding.layer_hessians(model, layers, x[:32], 1)
    rounded, record = weight_rounding.gptq_rounded(qdq, model, layers, hess, {"conv_a", "conv_b"})
    assert record["layers"] == 2 and record["nearest_rounding_kept"] == [] and record["output_error_vs_nearest"] < 1
    before = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in rounded.graph.initializer}
    for la in layers:
        dq, _ = weight_rounding.weight_dqs(rounded, la.name)
        q = after[dq.input[0]]
        assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= 64   # 7-bit: no int16 saturation
        assert np.array_equal(after[dq.input[1]], before[dq.input[1]])      # same scales
        assert not np.array_equal(q, before[dq.input[0]])                   # rounding moved
    # on images it has not seen, each layer's output moves less than with nearest rounding
    held, _ = weight_rounding.layer_hessians(model, layers, rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), 1)
    for la in layers:
        w = np.moveaxis(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == la.weight)),
                        la.axis, 0)
        err = [weight_rounding.output_error(w.reshape(len(w), -1), qdq_graph.dequantized_weight(g, la).reshape(
            len(w), -1), held[la.name]) for g in (qdq, rounded)]
        assert err[1] < 0.9 * err[0], la.name


def quantized_conv_model(tmp_path, seed: int, channels: int, images: int):
    """(float model, uint8 images, its int8_max QDQ graph, its quantized layers) of conv_model with random weights."""
    rng = np.random.default_rng(seed)
    model = conv_model(rng.normal(0, 0.1, (channels, 3, 3, 3)), np.zeros(channels),
                       rng.normal(0, 0.5, (3, channels, 1, 1)))
    x = rng.integers(0, 256, (images, 8, 8, 3), dtype=np.uint8)
    out = tmp_path / "q.onnx"
    build_int8.quantize_model(model, observed_ranges(model, x), out, BuildOptions.parse(INT8, "int8_max"),
                               ["pre_nchw", "pre_cast"], {}, False)
    return model, x, onnx.load(str(out)), qdq_graph.weight_layers(model, {"pre_nchw", "pre_cast"})


def test_the_search_records_the_rounding_and_nearest_leaves_the_weights(tmp_path):
    model, x, qdq, layers = quantized_conv_model(tmp_path, 4, 4, 16)
    for rounding in ("gptq", "nearest"):
        opts = BuildOptions.parse({**INT8, "weight_rounding": rounding, "bias_correction": False}, "int8_max")
        final, record = int8_search.search(qdq, None, model, layers, "none", "onnxruntime", None, x[:8], opts, False,
                                           1, rounding_images=x)
        rec = record.as_json()
        weights = {i.name: numpy_helper.to_array(i) for i in final.graph.initializer if i.data_type == TensorProto.INT8}
        same = all(np.array_equal(v, numpy_helper.to_array(i)) for i in qdq.graph.initializer
                   for k, v in weights.items() if i.name == k)
        if rounding == "gptq":
            assert rec["weight_rounding"]["method"] == "gptq" and rec["weight_rounding"]["images"] == 16
            assert rec["weight_rounding"]["layers"] == 2 and not same
        else:
            assert rec["weight_rounding"] == {"method": "nearest"} and same
