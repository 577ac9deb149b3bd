"""Parameter and FLOP counts read from an ONNX graph.

Convention: GMACs counts the multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul nodes at batch 1
(each bias add counted with its MAC, as fvcore/timm do); GFLOPs = 2 x GMACs. Element-wise ops (activations,
BN if unfused, SE scaling, pooling) are not counted; they are a few percent of EfficientNet's total.
"""
from __future__ import annotations

import numpy as np

import onnx
from onnx import shape_inference


def _fix_batch(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    del m.graph.value_info[:]
    return shape_inference.infer_shapes(m, data_prop=True)


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def count_params(model: onnx.ModelProto) -> int:
    """Number of float parameters stored in the graph's initializers (scalars/shape constants excluded)."""
    n = 0
    for init in model.graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            size = int(np.prod(init.dims)) if init.dims else 1
            if size > 1:
                n += size
    return n


def count_macs(model: onnx.ModelProto) -> int:
    """MACs of Conv/Gemm/MatMul at batch 1 (see module docstring)."""
    m = _fix_batch(model)
    shapes = _shapes(m)
    macs = 0
    for node in m.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w = shapes.get(node.input[1])
            out = shapes.get(node.output[0])
            if not w or not out or min(out) < 0:
                raise ValueError(f"model_info: unknown shape at {node.name} ({node.op_type})")
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if not a or not out or min(out) < 0:
                raise ValueError(f"model_info: unknown shape at {node.name} ({node.op_type})")
            k = a[-2] if node.op_type == "Gemm" and any(
                at.name == "transA" and at.i for at in node.attribute) else a[-1]
            macs += int(np.prod(out)) * int(k)
    return macs


ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Sigmoid", "Relu", "Clip", "HardSigmoid", "HardSwish", "Exp",
               "GlobalAveragePool", "ReduceMean", "Softmax", "BatchNormalization", "Tanh"}


def count_elementwise(model: onnx.ModelProto) -> int:
    """Output elements of element-wise/pooling ops at batch 1 (one op per output element)."""
    m = _fix_batch(model)
    shapes = _shapes(m)
    n = 0
    for node in m.graph.node:
        if node.op_type in ELEMENTWISE:
            out = shapes.get(node.output[0])
            if out and min(out) > 0:
                n += int(np.prod(out))
    return n


def model_info(path: str) -> dict:
    """ONNX-stored params (M, after BN folding), GMACs and GFLOPs of an ONNX model file, with the convention stated."""
    model = onnx.load(path)
    macs = count_macs(model)
    return {
        "onnx_params_m": round(count_params(model) / 1e6, 3),
        "gmacs": round(macs / 1e9, 4),
        "gflops": round(2 * macs / 1e9, 4),
        "gflops_with_elementwise": round((2 * macs + count_elementwise(model)) / 1e9, 4),
        "flops_convention": "GFLOPs = 2 x multiply-accumulates of Conv/Gemm/MatMul at batch 1 "
                            "(element-wise ops not counted)",
    }
