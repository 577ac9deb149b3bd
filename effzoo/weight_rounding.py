"""int8 weight rounding by output error (GPTQ): each layer's integer weights, at the scales the quantizer chose,
rounded so that the layer's output on calibration images moves least, instead of each weight to its nearest level.

For a layer y = W x with inputs x (im2col patches for a Conv), the output error of integer weights Q at per-row
scales s is tr((W - sQ) H (W - sQ)^T) with H = sum x x^T over the images. GPTQ (Frantar et al., 2022; OBQ for
convolutions) quantizes the input columns in order and moves every column not yet quantized to absorb the
rounding error of the ones that are, using the upper Cholesky factor U of H^-1 (damped by DAMP x mean diagonal):
err_i = (w_i - q_i s) / U_ii, W[:, j > i] -= err_i U_ij. Depthwise convolutions have one H per channel (k*k
inputs). Rows keep their scale and zero point, so the graph, its kernels and its speed are unchanged.
H comes from the float model's layer inputs over `rounding_images` calibration images, at most MAX_POSITIONS
output positions per image and layer (MAX_DEPTHWISE_POSITIONS for a depthwise one; seeded), in passes whose Hessians
and inputs fit MEMORY_BUDGET bytes, with at most PENDING_BYTES of patch columns waiting to be multiplied in.
"""
from __future__ import annotations

import numpy as np

import onnx
from effzoo.common import ZooError
from effzoo.graph_edits import PRE_INPUT
from effzoo.ort_session import open_session
from onnx import helper, numpy_helper

DAMP = 0.1              # relative damping of H (lite0, 64 images: held-out KL 0.00160 at 0.1, 0.00179 at 0.01)
MAX_POSITIONS = 1024    # output positions per image and layer that enter H
MAX_DEPTHWISE_POSITIONS = 256   # a depthwise channel's H is only k*k x k*k
MEMORY_BUDGET = 1 << 30  # bytes of Hessians and layer inputs held in one pass over the images
PENDING_BYTES = 256 << 20  # patch columns buffered (all layers of a pass) before they are multiplied into H
BLOCK = 128             # columns per lazy update (GPTQ's blocked form: the trailing update is one matrix product)


def weight_dqs(model: onnx.ModelProto, node_name: str,
               producer: dict | None = None) -> tuple[onnx.NodeProto, onnx.NodeProto | None]:
    """The DequantizeLinear nodes feeding a layer's weight and (when quantized) its bias; `producer`: the model's
    tensor -> producing node map, when the caller already has it."""
    producer = producer if producer is not None else {o: n for n in model.graph.node for o in n.output}
    node = next((n for n in model.graph.node if n.name == node_name), None)
    if node is None:
        raise ZooError(f"layer {node_name}: not in the quantized graph")
    dq = producer.get(node.input[1])
    if dq is None or dq.op_type != "DequantizeLinear":
        raise ZooError(f"layer {node_name}: weight is not fed by a DequantizeLinear")
    bias = producer.get(node.input[2]) if len(node.input) > 2 else None
    return dq, bias if bias is not None and bias.op_type == "DequantizeLinear" else None


def _conv_attrs(node: onnx.NodeProto) -> tuple[int, list[int], list[int], list[int]]:
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    return a.get("group", 1), a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0]), a.get("dilations", [1, 1])


def conv_patches(x: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, int], positions: np.ndarray | None
                 ) -> np.ndarray:
    """One image's (C, H, W) input -> (C, k*k, P) patches of each input channel at the chosen output positions
    (flat indices into the output grid; None: all), in the (channel, row, column) order of the weight."""
    _, strides, pads, dilations = _conv_attrs(node)
    if list(dilations) != [1, 1]:
        raise ZooError(f"layer {node.name}: dilated convolution; weight_rounding gptq supports dilation 1 only")
    xp = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh, ow = _output_grid(x.shape, kernel, strides, pads)
    rows, cols = (None, None) if positions is None else (positions // ow, positions % ow)
    taps = []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            tap = xp[:, i:i + strides[0] * (oh - 1) + 1:strides[0], j:j + strides[1] * (ow - 1) + 1:strides[1]]
            taps.append(tap.reshape(len(xp), -1) if positions is None else tap[:, rows, cols])
    return np.stack(taps, axis=1)


def _output_grid(shape: tuple, kernel: tuple[int, int], strides: list[int], pads: list[int]) -> tuple[int, int]:
    """(rows, columns) of a convolution's output for an input of `shape` (C, H, W)."""
    return ((shape[1] + pads[0] + pads[2] - kernel[0]) // strides[0] + 1,
            (shape[2] + pads[1] + pads[3] - kernel[1]) // strides[1] + 1)


def _chosen_positions(rng: np.random.Generator, total: int, most: int) -> np.ndarray | None:
    """`most` of `total` output positions, sorted (seeded); None: all of them."""
    return np.sort(rng.choice(total, most, replace=False)) if total > most else None


def supported(node: onnx.NodeProto, dims: tuple) -> bool:
    """Dense layers, and convolutions that are dense or depthwise (one input channel per group), undilated."""
    if node.op_type != "Conv":
        return True
    group, _, _, dilations = _conv_attrs(node)
    return list(dilations) == [1, 1] and (group == 1 or (group == dims[0] and dims[1] == 1))


def _hessian_bytes(node: onnx.NodeProto, dims: tuple, axis: int) -> int:
    if node.op_type == "Conv" and _conv_attrs(node)[0] > 1:
        return 8 * dims[0] * (dims[2] * dims[3]) ** 2
    n = int(np.prod(dims)) // dims[axis]
    return 8 * n * n


def layer_hessians(prepped: onnx.ModelProto, layers: list, images: np.ndarray, threads: int) -> tuple[dict, int]:
    """Per supported layer (int8_search.Layer): H = sum of x x^T over the images' layer inputs (dense: (n, n);
    depthwise: (C, k*k, k*k)); and the number of passes over the images."""
    nodes = {n.name: n for n in prepped.graph.node}
    inits = {i.name: i for i in prepped.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(prepped)
    elems = {v.name: int(np.prod([d.dim_value or 1 for d in v.type.tensor_type.shape.dim[1:]]))
             for v in inferred.graph.value_info}
    groups, cur, used = [], [], 0
    for la in layers:
        node = nodes[la.name]
        dims = tuple(inits[node.input[1]].dims)
        if not supported(node, dims):
            continue
        cost = _hessian_bytes(node, dims, la.axis) + 4 * elems.get(node.input[0], 0)
        if cur and used + cost > MEMORY_BUDGET:
            groups.append(cur)
            cur, used = [], 0
        cur.append(la)
        used += cost
    if cur:
        groups.append(cur)
    rng = np.random.default_rng(0)
    hess: dict[str, np.ndarray] = {}
    pending: dict[str, list[np.ndarray]] = {}

    def flush(name: str) -> None:
        """Add the buffered patch columns to H: one large product instead of one per image."""
        cols = np.concatenate(pending.pop(name), axis=-1)
        h = np.matmul(cols, np.swapaxes(cols, -1, -2)).astype(np.float64)
        hess[name] = hess[name] + h if name in hess else h

    for group in groups:
        m = onnx.ModelProto()
        m.CopyFrom(prepped)
        inputs = list(dict.fromkeys(nodes[la.name].input[0] for la in group))
        del m.graph.output[:]
        m.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in inputs)
        sess = open_session(m, threads, bounded_memory=True)
        held = 0
        for k in range(len(images)):
            outs = dict(zip(inputs, sess.run(inputs, {PRE_INPUT: images[k:k + 1]})))
            for la in group:
                cols = patch_columns(outs[nodes[la.name].input[0]][0], nodes[la.name],
                                     tuple(inits[nodes[la.name].input[1]].dims), rng)
                pending.setdefault(la.name, []).append(cols)
                held += cols.nbytes
                if held > PENDING_BYTES:   # bounded whatever the number of layers in the pass
                    for name in list(pending):
                        flush(name)
                    held = 0
        for name in list(pending):
            flush(name)
    return hess, len(groups)


def patch_columns(x: np.ndarray, node: onnx.NodeProto, dims: tuple, rng: np.random.Generator) -> np.ndarray:
    """One image's layer input as columns of H's products, float32: (n, P) for a dense layer, (C, k*k, P) for a
    depthwise convolution; at most MAX_POSITIONS output positions (seeded choice)."""
    if node.op_type != "Conv":
        return x.reshape(-1, x.shape[-1]).T
    group, strides, pads, _ = _conv_attrs(node)
    if dims[2:] == (1, 1) and group == 1 and list(strides) == [1, 1] and list(pads) == [0] * 4:
        flat = x.reshape(x.shape[0], -1)   # pointwise: the input itself is the patch matrix
        pos = _chosen_positions(rng, flat.shape[1], MAX_POSITIONS)
        return flat if pos is None else flat[:, pos]
    kernel = (dims[2], dims[3])
    oh, ow = _output_grid(x.shape, kernel, strides, pads)
    pos = _chosen_positions(rng, oh * ow, MAX_POSITIONS if group == 1 else MAX_DEPTHWISE_POSITIONS)
    p = conv_patches(x, node, kernel, pos)
    return p if group > 1 else p.reshape(-1, p.shape[2])


def inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper U with U^T U = (H + DAMP * mean diagonal)^-1, for (n, n) or a stack (C, n, n); an input never seen
    (zero diagonal) gets a unit diagonal, so its weights round to nearest and move nothing."""
    h = np.array(h, np.float64)
    idx = np.arange(h.shape[-1])
    d = h[..., idx, idx]
    mean = d.mean(axis=-1, keepdims=True)
    h[..., idx, idx] = d + DAMP * np.where(mean > 0, mean, 1.0) + (d == 0)
    return np.swapaxes(np.linalg.cholesky(np.linalg.inv(h)), -1, -2)


def gptq_rows(w: np.ndarray, u: np.ndarray, scale: np.ndarray, zero: np.ndarray, qmin: int, qmax: int
              ) -> np.ndarray:
    """Integer weights (rows, n) for float rows w at per-row scale and zero point, columns in order, each
    column's rounding error absorbed by the later columns (u: (n, n), or (rows, n, n) per row)."""
    w = np.array(w, np.float64)
    q = np.zeros(w.shape)
    n = w.shape[1]
    for b0 in range(0, n, BLOCK):
        b1 = min(b0 + BLOCK, n)
        errs = np.zeros((w.shape[0], b1 - b0))
        for i in range(b0, b1):
            q[:, i] = np.clip(np.round(w[:, i] / scale) + zero, qmin, qmax)
            diag = u[i, i] if u.ndim == 2 else u[:, i, i]
            err = (w[:, i] - (q[:, i] - zero) * scale) / diag
            w[:, i + 1:b1] -= err[:, None] * (u[i, i + 1:b1] if u.ndim == 2 else u[:, i, i + 1:b1])
            errs[:, i - b0] = err
        if b1 < n:
            w[:, b1:] -= errs @ u[b0:b1, b1:] if u.ndim == 2 else np.einsum("rk,rkj->rj", errs, u[:, b0:b1, b1:])
    return q


def output_error(w: np.ndarray, wq: np.ndarray, h: np.ndarray) -> float:
    """tr((W - Wq) H (W - Wq)^T): the layer's squared output error over the Hessian's images."""
    e = np.asarray(w, np.float64) - wq
    eh = np.matmul(e[:, None, :], h)[:, 0, :] if h.ndim == 3 else e @ h
    return float(np.sum(eh * e))


def gptq_rounded(qdq: onnx.ModelProto, prepped: onnx.ModelProto, layers: list, hess: dict, reduced: set[str]
                 ) -> tuple[onnx.ModelProto, dict]:
    """The QDQ graph with each layer's integer weights rounded by GPTQ at the graph's own scales and zero points
    (int8: [-127, 127], or [-64, 64] for the layers in `reduced`, ONNX Runtime's 7-bit range; uint8: [0, 255]),
    and a record: the layers' summed output error on the Hessian images, GPTQ's against nearest rounding's. A
    layer without a Hessian (not `supported`) keeps nearest rounding and is named in the record."""
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    inits = {i.name: i for i in m.graph.initializer}
    float_inits = {i.name: i for i in prepped.graph.initializer}
    float_nodes = {n.name: n for n in prepped.graph.node}
    producer = {o: n for n in m.graph.node for o in n.output}
    err_nearest = err_gptq = 0.0
    done, nearest_kept = 0, []
    for la in layers:
        if la.name not in hess:
            nearest_kept.append(la.name)
            continue
        dq, _ = weight_dqs(m, la.name, producer)
        q0 = numpy_helper.to_array(inits[dq.input[0]])
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64).reshape(-1)
        zero = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64).reshape(-1) if len(dq.input) > 2
                else np.zeros(1))
        if q0.dtype == np.int8:
            qmin, qmax = (-64, 64) if la.name in reduced else (-127, 127)
        elif q0.dtype == np.uint8:
            qmin, qmax = 0, 255
        else:
            raise ZooError(f"layer {la.name}: weights of type {q0.dtype}; weight_rounding gptq rounds int8/uint8")
        w = numpy_helper.to_array(float_inits[float_nodes[la.name].input[1]]).astype(np.float64)
        rows = np.moveaxis(w, la.axis, 0)
        shape = rows.shape
        rows = rows.reshape(shape[0], -1)
        h = hess[la.name]
        if scale.size == 1:
            scale = np.full(shape[0], scale[0])
        if zero.size == 1:
            zero = np.full(shape[0], zero[0])
        q = gptq_rows(rows, inverse_cholesky(h), scale, zero, qmin, qmax)
        nearest = np.moveaxis(q0.astype(np.float64), la.axis, 0).reshape(shape[0], -1)
        err_nearest += output_error(rows, (nearest - zero[:, None]) * scale[:, None], h)
        err_gptq += output_error(rows, (q - zero[:, None]) * scale[:, None], h)
        out = np.moveaxis(q.reshape(shape), 0, la.axis).astype(q0.dtype)
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array(out, dq.input[0]))
        done += 1
    return m, {"method": "gptq", "layers": done, "nearest_rounding_kept": nearest_kept, "damp": DAMP,
               "output_error_vs_nearest": round(err_gptq / err_nearest, 4) if err_nearest > 0 else None}
