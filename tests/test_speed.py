"""Timing helpers: CPU steal accounting, the pause between interleaved engines, errors in throughput mode."""
import time

import numpy as np
import pytest

import onnx
from effzoo import runtime, speed
from effzoo.common import Progress, ZooError
from onnx import TensorProto, helper


def test_steal_percent():
    assert speed.steal_percent((1000, 10), (1200, 40)) == 15.0
    assert speed.steal_percent(None, (1200, 40)) is None
    assert speed.steal_percent((1200, 40), (1200, 40)) is None
    ticks = speed.cpu_ticks()
    assert ticks is None or (ticks[0] > 0 and 0 <= ticks[1] <= ticks[0])


def test_measure_pauses_between_engine_turns():
    calls = []
    runners = {n: (lambda x, n=n: calls.append((n, time.perf_counter()))) for n in ("a", "b")}
    out = speed.measure(runners, np.zeros(1), 1, iterations=1, warmup=0, rounds=2,
                        progress=Progress(4, "t", 1e9), settle_s=0.05)
    gaps = [t1 - t0 for (_, t0), (_, t1) in zip(calls, calls[1:])]
    assert [n for n, _ in calls] == ["a", "b", "b", "a"] and min(gaps) >= 0.05
    assert set(out) == {"a", "b"} and out["a"]["calls"] == 2


def test_a_failing_session_in_throughput_mode_is_an_error_not_a_fast_call(tmp_path):
    """ONNX Runtime's throughput mode runs sessions in threads: an error in one reaches the caller (the benchmark
    never times a failed call)."""
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"]),
                           helper.make_node("Softmax", ["logits"], ["probs"], axis=1)], "tiny",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4]),
                           helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    run, info = runtime.open_throughput(str(path), threads=2, instances=2)
    assert info["sessions"] == 2
    run(np.zeros((3, 4), np.float32))   # a good batch runs
    with pytest.raises(ZooError, match=r"tiny.onnx: 2 of 2 ONNX Runtime sessions failed in throughput mode: "):
        run(np.zeros((3, 4), np.uint8))   # the wrong element type: every session raises
