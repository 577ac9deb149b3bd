"""bench/quantized_finetune.py: its PyTorch module computes what a QDQ graph computes, writes back exactly what
it holds, and tuning lowers the loss it tunes."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
from conftest import REPO
from test_cpu_target import build

from effzoo import shard_io

sys.path.insert(0, str(REPO / "bench"))
from quantized_finetune import QDQModule, tuned  # noqa: E402


def _logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # the graph's own ops, unfused
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {sess.get_inputs()[0].name: x})[0]


def test_the_module_is_the_qdq_graph_and_tuning_writes_back(tmp_path):
    _, args = build(tmp_path, "vnni")
    model = onnx.load(args[args.index("--model") + 1])
    x = shard_io.read_small(args[args.index("--shards") + 1], "images")[0]
    with torch.no_grad():
        mine = QDQModule(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(mine, _logits(model, x), atol=1e-4)
    # nothing tuned: every initializer is written back as it was, weights included
    for tune_weights in (False, True):
        written = QDQModule(model, tune_weights).to_onnx()
        back = {i.name: onnx.numpy_helper.to_array(i) for i in written.graph.initializer}
        for i in model.graph.initializer:
            np.testing.assert_array_equal(back[i.name], onnx.numpy_helper.to_array(i), err_msg=i.name)

    # a target the classifier's bias can reach: the tiny model's logits (about 20, 57, 35) brought near each other
    reference = _logits(model, x) - np.array([0, 37, 15], dtype=np.float32)

    def loss(m):
        p = torch.log_softmax(torch.from_numpy(_logits(m, x)), -1)
        return float(torch.nn.functional.kl_div(p, torch.log_softmax(torch.from_numpy(reference), -1),
                                                log_target=True, reduction="batchmean"))
    assert loss(model) > 0.1
    after = tuned(model, x, reference, steps=40, lr=0.5, weight_lr=0.0, batch=len(x))
    assert loss(after) < 0.7 * loss(model)
    changed = [i.name for i, j in zip(model.graph.initializer, after.graph.initializer)
               if not np.array_equal(onnx.numpy_helper.to_array(i), onnx.numpy_helper.to_array(j))]
    dq = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    biases = {dq.get(n.input[2], n.input[2]) for n in model.graph.node if n.op_type in ("Conv", "Gemm")
              and len(n.input) > 2}
    assert changed and set(changed) <= biases   # only biases were tuned
