"""QDQ graph edits of an int8 build: its weight layers, a layer's weight as the graph computes with it, promoted
layers (float or exact uint8 weights) and bias correction. Pure functions of the graphs; nothing runs a model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import onnx
from effzoo.common import ZooError
from effzoo.graph_edits import EDGE_PREFIXES
from effzoo.weight_rounding import weight_dqs
from onnx import helper, numpy_helper


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


def float_deltas(qdq: onnx.ModelProto, prepped: onnx.ModelProto, layers: list[Layer]) -> dict[str, np.ndarray]:
    """Per layer: its weight in the quantized graph minus its float weight."""
    return {la.name: dequantized_weight(qdq, la) - numpy_helper.to_array(initializer(prepped, la.weight)).astype(np.float64)
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


def has_weight_dq(model: onnx.ModelProto, node_name: str, producer: dict | None = None) -> bool:
    """Whether the layer reads its weight through a DequantizeLinear (int8 quantized it)."""
    try:
        weight_dqs(model, node_name, producer)
    except ZooError:
        return False
    return True


def seven_bit_layers(layers: list[Layer], policy: str) -> set[str]:
    """The layers whose weights a reduce_range policy keeps in ONNX Runtime's 7-bit range: all of them for 'all',
    the saturating ones for 'saturating'."""
    return {la.name for la in layers if policy == "all" or (policy == "saturating" and la.saturating)}


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(i for i in model.graph.initializer if i.name == name)
