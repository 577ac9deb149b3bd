"""The ORT CPU layout pass for SE/SiLU graphs (effzoo/ort_layout.py): same outputs, guarded, skipped when idle."""
import numpy as np
import onnxruntime as ort
import pytest

import onnx
from conftest import expected_se_rewrites, se_gates
from effzoo import ort_layout
from effzoo.common import ZooError
from onnx import TensorProto, helper, numpy_helper

needs_blocked_layout = pytest.mark.skipif(ort_layout.nchwc_block_size() == 0,
                                          reason="ONNX Runtime uses no blocked (NCHWc) layout on this CPU")


def _conv(rng, name, cin, cout, k=1, group=1, stride=1):
    w = (rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)).astype(np.float32)
    b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    return [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")], dict(
        inputs=[f"{name}.w", f"{name}.b"], group=group, pads=[k // 2] * 4, strides=[stride, stride],
        kernel_shape=[k, k])


def se_silu_model(channels: int = 32, size: int = 10, with_se: bool = True, squeeze: int = 6) -> onnx.ModelProto:
    """stem conv -> SiLU -> depthwise conv -> SiLU -> SE gate (ReduceMean, SiLU, Sigmoid, Mul) -> 1x1 conv."""
    rng = np.random.default_rng(0)
    nodes, inits = [], [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]

    def conv(name, x, cin, cout, **kw):
        i, a = _conv(rng, name, cin, cout, **kw)
        inits.extend(i)
        nodes.append(helper.make_node("Conv", [x] + a.pop("inputs"), [name], name=name, **a))
        return name

    def silu(x):
        nodes.append(helper.make_node("Sigmoid", [x], [f"{x}.sig"]))
        nodes.append(helper.make_node("Mul", [x, f"{x}.sig"], [f"{x}.silu"]))
        return f"{x}.silu"

    x = silu(conv("stem", "input", 3, channels, k=3))
    x = silu(conv("dw", x, channels, channels, k=3, group=channels))
    if with_se:
        nodes.append(helper.make_node("ReduceMean", [x, "axes"], ["pooled"], keepdims=1))
        s = silu(conv("se_reduce", "pooled", channels, squeeze))
        s = conv("se_expand", s, squeeze, channels)
        nodes.append(helper.make_node("Sigmoid", [s], ["gate"]))
        nodes.append(helper.make_node("Mul", [x, "gate"], ["excited"]))
        x = "excited"
    conv("project", x, channels, 16)
    g = helper.make_graph(nodes, "se_silu", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["batch", 3, size, size])],
                          [helper.make_tensor_value_info("project", TensorProto.FLOAT, ["batch", 16, size, size])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


# (gated channels, spatial size, squeeze channels): SE gates whose rewrite differs between the two block sizes
SE_CASES = [(32, 10, 6), (48, 7, 6), (24, 10, 6), (32, 10, 10), (20, 10, 6)]
# the same gates at a forced block: AVX2's 8 and AVX-512's 16
FORCED_BLOCK_REWRITES = {8: [1, 1, 1, 0, 0], 16: [1, 1, 0, 1, 0]}


@pytest.mark.parametrize("block", sorted(FORCED_BLOCK_REWRITES))
def test_expected_se_rewrites_at_a_forced_block_size(block):
    """24 gated channels are a whole number of blocks of 8, not of 16; a 10-channel squeeze is read as plain NCHW
    below a block of 16, but ORT does not block a conv reading 10 >= 8 channels (not a multiple of 4)."""
    got = [expected_se_rewrites(se_gates(se_silu_model(c, size, squeeze=s)), block) for c, size, s in SE_CASES]
    assert got == FORCED_BLOCK_REWRITES[block]


def test_efficientnet_b0_se_rewrites_at_each_block_size():
    """b0's 16 SE gates: every one at block 16 (measured on AVX-512), all but the two of 240 channels squeezed to 10
    at block 8 (measured on AVX2)."""
    gates = [(32, 8), (96, 4), (144, 6), (144, 6), (240, 10), (240, 10), (480, 20), (480, 20), (480, 20),
             (672, 28), (672, 28), (672, 28), (1152, 48), (1152, 48), (1152, 48), (1152, 48)]
    assert expected_se_rewrites(gates, 16) == 16 and expected_se_rewrites(gates, 8) == 14
    assert expected_se_rewrites(gates, 0) == 0


@needs_blocked_layout
@pytest.mark.parametrize("channels,size,squeeze", SE_CASES)
def test_tuned_session_matches_standard(tmp_path, channels, size, squeeze):
    """The SE gate is rewritten where this CPU's block size blocks both its factors (expected_se_rewrites)."""
    path = tmp_path / "m.onnx"
    model = se_silu_model(channels, size, squeeze=squeeze)
    onnx.save(model, path)
    tuned, info = ort_layout.make_session(str(path), 1, tuning=True)
    standard, off = ort_layout.make_session(str(path), 1)
    assert off == {"layout_tuning": "off"}
    assert info["layout_tuning"] == "on", info
    assert info["block"] == ort_layout.nchwc_block_size()
    assert info["silu_blocked"] == 3 and info["spatial_mean_to_gap"] == 1
    assert info["se_mul_blocked"] == expected_se_rewrites(se_gates(model), info["block"])
    x = np.random.default_rng(1).standard_normal((3, 3, size, size)).astype(np.float32)
    ref, got = standard.run(None, {"input": x})[0], tuned.run(None, {"input": x})[0]
    assert np.abs(ref).max() > 0.1     # the test model has live activations
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@needs_blocked_layout
def test_rewritten_graph_has_no_layout_round_trips(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(se_silu_model(32), path)
    tuned, info = ort_layout.tuned_model(str(path))
    ops = [(n.domain, n.op_type) for n in tuned.graph.node]
    assert ("com.microsoft.nchwc", "ReorderInput") not in ops
    assert ops.count(("com.microsoft", "QuickGelu")) == 3 and ("", "Sigmoid") not in ops
    assert ("com.microsoft.nchwc", "GlobalAveragePool") in ops


@needs_blocked_layout
def test_probe_mismatch_falls_back_to_the_standard_session(tmp_path, monkeypatch, caplog):
    path = tmp_path / "m.onnx"
    onnx.save(se_silu_model(32), path)
    real = ort_layout._rewrite_blocked

    def broken(opt, sizes, block):
        counts = real(opt, sizes, block)
        for n in opt.graph.node:
            if n.op_type == "Mul":
                n.op_type = "Add"   # a wrong rewrite
        return counts
    monkeypatch.setattr(ort_layout, "_rewrite_blocked", broken)
    sess, info = ort_layout.make_session(str(path), 1, tuning=True)
    assert info["layout_tuning"].startswith("off: probe mismatch")
    assert "using the standard session" in caplog.text
    x = np.random.default_rng(1).standard_normal((2, 3, 10, 10)).astype(np.float32)
    standard, _ = ort_layout.make_session(str(path), 1, tuning=False)
    np.testing.assert_array_equal(sess.run(None, {"input": x})[0], standard.run(None, {"input": x})[0])


def test_graphs_without_se_or_silu_are_left_alone(tmp_path):
    m = se_silu_model(with_se=False)
    for n in m.graph.node:     # SiLU -> ReLU: a lite0-like graph
        if n.op_type == "Sigmoid":
            n.op_type = "Relu"
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    _, info = ort_layout.make_session(str(path), 1, tuning=True)
    assert info == {"layout_tuning": "off: no SiLU or SE gate in the graph"}


def test_spatial_mean_to_gap_keeps_other_reductions():
    m = se_silu_model()
    m.graph.node.append(helper.make_node("ReduceMean", ["project", "axes1"], ["chan_mean"], keepdims=1))
    m.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "axes1"))
    assert ort_layout.spatial_mean_to_gap(m) == 1
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("GlobalAveragePool") == 1 and ops.count("ReduceMean") == 1
    assert "axes" not in {i.name for i in m.graph.initializer}


def test_half_precision_graphs_are_left_alone(tmp_path):
    m = se_silu_model()
    w = next(i for i in m.graph.initializer if i.name == "stem.w")
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w).astype(np.float16), "stem.w"))
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    assert ort_layout.tuned_model(str(path)) == (None, "not a float32 graph")


def test_layout_pass_runs_only_on_the_onnx_runtime_version_it_was_checked_on(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    onnx.save(se_silu_model(32), path)
    monkeypatch.setattr(ort, "__version__", "1.99.0")
    with pytest.raises(ZooError, match="checked on onnxruntime 1.32.0, not the installed 1.99.0; set "
                                       "inference.layout_tuning: false"):
        ort_layout.make_session(str(path), 1, tuning=True)
    _, info = ort_layout.make_session(str(path), 1)   # the default (off) is unaffected
    assert info == {"layout_tuning": "off"}


@needs_blocked_layout
def test_quantized_graphs_are_left_alone(tmp_path):
    """A QDQ int8 graph runs its convs in int8 (no blocked float layout) and keeps its SiLU inside Q/DQ pairs: the
    layout pass finds nothing to do and the standard session runs, as for every int8 build."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((1, 3, 10, 10)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)
    onnx.save(se_silu_model(32), tmp_path / "f.onnx")
    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Batches(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    assert ort_layout.tuned_model(str(tmp_path / "f.onnx"))[0] is not None   # its float source is rewritten
    _, info = ort_layout.make_session(str(tmp_path / "q.onnx"), 1, tuning=True)
    assert info == {"layout_tuning": "off: no SiLU or SE gate on blocked tensors"}
