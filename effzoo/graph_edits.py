"""Graph edits shared by calibration and the builds: the deployable model's input and output ends.

`fold_preprocessing` prepends timm's ToTensor/Normalize as graph ops on a uint8 NHWC input (NHWC->NCHW on
uint8, Cast, one multiply-add; within 1e-6 of timm's normalized tensor) and appends a Softmax (the vendor's
post-processing): outputs 'logits' and 'probs'. Nodes it adds are named pre_* and post_*.
"""
from __future__ import annotations

import numpy as np

import onnx
from effzoo.common import ZooError
from onnx import TensorProto, helper, numpy_helper

PRE_INPUT = "image_uint8_nhwc"
EDGE_PREFIXES = ("pre_", "post_")


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


def edge_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes fold_preprocessing added (kept in float by every build)."""
    return [n.name for n in model.graph.node if n.name.startswith(EDGE_PREFIXES)]
