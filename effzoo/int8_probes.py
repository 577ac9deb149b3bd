"""Probes of the float model that an int8 search reads: per layer, the output noise a weight change causes
(its sensitivity, and the mean shift bias correction removes), and the GPTQ rounding of the integer weights by
output error on the same kind of pass. Each is one pass of ONNX Runtime over range images; results depend only on
the models and the images.
"""
from __future__ import annotations

import time

import numpy as np

import onnx
from effzoo.graph_edits import PRE_INPUT
from effzoo.ort_session import open_session
from effzoo.qdq_graph import Layer, seven_bit_layers
from effzoo.weight_rounding import gptq_rounded, layer_hessians
from onnx import helper, numpy_helper


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
    sess = open_session(m, threads, bounded_memory=True)
    sums = np.zeros((len(deltas), 2))
    means = [0.0] * len(deltas)
    for k in range(len(images)):
        outs = sess.run(None, {PRE_INPUT: images[k:k + 1]})
        for i in range(len(deltas)):
            sums[i] += (outs[3 * i], outs[3 * i + 1])
            means[i] = means[i] + outs[3 * i + 2].astype(np.float64)
    return {name: (float(n / s) if s > 0 else 0.0, mean / len(images))
            for name, (n, s), mean in zip(deltas, sums, means)}


def rounded_by_output_error(base: onnx.ModelProto, exact: onnx.ModelProto | None, prepped: onnx.ModelProto,
                            quantized: list[Layer], to_exact: list[Layer], policy: str, images: np.ndarray,
                            threads: int) -> tuple[onnx.ModelProto, onnx.ModelProto | None, dict, dict]:
    """The int8 graph (and the exact-uint8 one) with GPTQ weight rounding (effzoo.weight_rounding), its record,
    and the seconds it took (hessian_s, rounding_s: measurements, kept apart from the record). 7-bit layers keep
    ONNX Runtime's 7-bit range: reduce_range 'all', or 'saturating' in those layers."""
    t0 = time.monotonic()
    hess, passes = layer_hessians(prepped, quantized, images, threads)
    t1 = time.monotonic()
    base, record = gptq_rounded(base, prepped, quantized, hess, seven_bit_layers(quantized, policy))
    if exact is not None:
        exact, exact_record = gptq_rounded(exact, prepped, to_exact, hess, set())
        record["exact_uint8_output_error_vs_nearest"] = exact_record["output_error_vs_nearest"]
    record.update(images=len(images), passes=passes)
    return base, exact, record, {"hessian_s": round(t1 - t0, 2), "rounding_s": round(time.monotonic() - t1, 2)}
