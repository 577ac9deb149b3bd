"""Compensating int8 activation error through the weights and biases, against the default build, on images held out
from calibration: the folds of bench/int8_budget.py (run it first), one variant, one CPU policy, ONNX Runtime,
percentile ranges, nothing promoted.

  * default: GPTQ rounding on the float model's layer inputs, then bias correction on float inputs (the build's);
  * empirical bias correction, on top of it: each layer's bias absorbs the mean output shift of the quantized
    graph against fp32 on the probe images (activations quantized too), all layers at once, or layer after layer
    (`--chunk` layers per pass, each pass measured after the previous correction);
  * weights fitted to quantized inputs: W' = W (C + r D)(H~ + r D)^-1, the least-squares fit of the float layer's
    output from the quantized graph's layer inputs (H~ = sum x~ x~^T, C = sum x x~^T at the same positions, D =
    the damping of weight_rounding: DAMP x mean diagonal, r = `--ridge`), then GPTQ on H~ and bias correction. Only
    layers with at least `--min-columns` x n Hessian columns are fitted; the others keep GPTQ on float inputs.

Prints the held-out mean KL(fp32 || int8) of the softmax, the expected agreement and the count agreement, and what
each compensation cost.

usage: python bench/activation_compensation.py [--workdir bench-out/int8-budget] [--variant tf_efficientnet_lite1]
                                               [--target vnni] [--fold 0] [--chunk 1] [--ridge 10] [--min-columns 8]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _workflow import REPO
from weight_rounding import Fold, bias_corrected_on_float_inputs, fold_build, held_out_signals

sys.path.insert(0, str(REPO))
import onnx  # noqa: E402
from effzoo import weight_rounding  # noqa: E402
from effzoo.cpu_target import cpu_flags, cpu_kind  # noqa: E402
from effzoo.graph_edits import PRE_INPUT  # noqa: E402
from effzoo.int8_search import bias_corrected, seven_bit_layers  # noqa: E402
from effzoo.ort_session import bounded_session, session_options  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402


def _session(model: onnx.ModelProto, unfused: bool):
    """An ONNX Runtime session; `unfused`: a QDQ graph's intermediate tensors as the integer kernels compute them,
    in float."""
    import onnxruntime as ort
    return ort.InferenceSession(model.SerializeToString(), session_options(2, "none" if unfused else "all"),
                                providers=["CPUExecutionProvider"])


def output_means(model: onnx.ModelProto, layer_names: list[str], images: np.ndarray, unfused: bool) -> list:
    """Per layer, the mean of its output over the images, per output channel."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    nodes = {n.name: n for n in m.graph.node}
    m.graph.initializer.extend([numpy_helper.from_array(np.array([0, 2, 3], np.int64), "comp__conv_axes"),
                                numpy_helper.from_array(np.array([0], np.int64), "comp__dense_axes")])
    for i, name in enumerate(layer_names):
        axes = "comp__conv_axes" if nodes[name].op_type == "Conv" else "comp__dense_axes"
        m.graph.node.append(helper.make_node("ReduceMean", [nodes[name].output[0], axes], [f"comp__mean{i}"],
                                             keepdims=0))
        m.graph.output.append(helper.make_tensor_value_info(f"comp__mean{i}", onnx.TensorProto.FLOAT, None))
    sess = _session(m, unfused)
    sums = [np.zeros(1)] * len(layer_names)
    for k in range(0, len(images), 8):
        batch = images[k:k + 8]
        sums = [s + o.astype(np.float64) * len(batch) for s, o in zip(sums, sess.run(None, {PRE_INPUT: batch}))]
    return [s / len(images) for s in sums]


def empirically_corrected(f: Fold, graph: onnx.ModelProto, float_means: dict, chunk: int | None
                          ) -> onnx.ModelProto:
    """The graph with each layer's bias moved by its mean output shift against fp32 (`float_means`, per layer;
    activations quantized), all layers from one pass (`chunk` None) or `chunk` layers per pass, in graph order."""
    names = [la.name for la in f.layers]
    step = len(names) if chunk is None else chunk
    for c in range(0, len(names), step):
        part = names[c:c + step]
        shifted = output_means(graph, part, f.probe, unfused=True)
        graph, _ = bias_corrected(graph, {n: q - float_means[n] for n, q in zip(part, shifted)})
    return graph


def _with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    return m


def cross_moments(f: Fold, quantized: onnx.ModelProto) -> tuple[dict, dict, dict]:
    """Per supported layer: H~ = sum x~ x~^T of the quantized graph's layer inputs, C = sum x x~^T with the float
    model's at the same positions (weight_rounding's choice of positions), and the number of columns."""
    fnodes = {n.name: n for n in f.prepped.graph.node}
    qnodes = {n.name: n for n in quantized.graph.node}
    inits = {i.name: i for i in f.prepped.graph.initializer}
    dims = {la.name: tuple(inits[fnodes[la.name].input[1]].dims) for la in f.layers}
    used = [la.name for la in f.layers if weight_rounding.supported(fnodes[la.name], dims[la.name])]
    ftensors = list(dict.fromkeys(fnodes[n].input[0] for n in used))
    qtensors = list(dict.fromkeys(qnodes[n].input[0] for n in used))
    fsess = bounded_session(_with_outputs(f.prepped, ftensors), 2)
    qsess = _session(_with_outputs(quantized, qtensors), unfused=True)
    frng, qrng = np.random.default_rng(0), np.random.default_rng(0)   # in step: the same positions
    hq: dict = {}
    cross: dict = {}
    columns: dict = {}
    for k in range(len(f.hessian_images)):
        x = f.hessian_images[k:k + 1]
        fout = dict(zip(ftensors, fsess.run(ftensors, {PRE_INPUT: x})))
        qout = dict(zip(qtensors, qsess.run(qtensors, {PRE_INPUT: x})))
        for n in used:
            xf = weight_rounding.patch_columns(fout[fnodes[n].input[0]][0], fnodes[n], dims[n], frng)
            xq = weight_rounding.patch_columns(qout[qnodes[n].input[0]][0], fnodes[n], dims[n], qrng)
            xf, xq = xf.astype(np.float64), xq.astype(np.float64)
            hq[n] = hq.get(n, 0) + np.matmul(xq, np.swapaxes(xq, -1, -2))
            cross[n] = cross.get(n, 0) + np.matmul(xf, np.swapaxes(xq, -1, -2))
            columns[n] = columns.get(n, 0) + xq.shape[-1]
    return hq, cross, columns


def fitted_to_quantized_inputs(f: Fold, float_hess: dict, ridge: float, min_columns: float
                               ) -> tuple[onnx.ModelProto, int]:
    """GPTQ on the quantized graph's layer inputs, of the weights fitted to reproduce the float layer's output from
    them (the other layers: GPTQ on `float_hess`, the float model's Hessians); and the number of layers fitted."""
    inputs_from = bias_corrected_on_float_inputs(f, f.nearest)
    hq, cross, columns = cross_moments(f, inputs_from)
    finits = {i.name: i for i in f.prepped.graph.initializer}
    fnodes = {n.name: n for n in f.prepped.graph.node}
    targets = {}
    for la in f.layers:
        if la.name not in hq:
            continue
        h, c = hq[la.name], cross[la.name]
        if columns[la.name] < min_columns * h.shape[-1]:
            continue
        w = numpy_helper.to_array(finits[fnodes[la.name].input[1]]).astype(np.float64)
        rows = np.moveaxis(w, la.axis, 0).reshape(w.shape[la.axis], -1)
        idx = np.arange(h.shape[-1])
        d = weight_rounding.DAMP * h[..., idx, idx].mean(axis=-1, keepdims=True)
        damp = ridge * np.where(d > 0, d, 1.0)
        hd, cd = h.copy(), c.copy()
        hd[..., idx, idx] += damp + (h[..., idx, idx] == 0)
        cd[..., idx, idx] += damp
        if h.ndim == 3:   # depthwise: one (n, n) system per channel
            targets[la.name] = np.linalg.solve(hd, np.einsum("cn,cnm->cm", rows, cd)[..., None])[..., 0]
        else:
            targets[la.name] = np.linalg.solve(hd, (rows @ cd).T).T
    hess = {n: (hq[n] if n in targets else float_hess[n]) for n in float_hess}
    graph, _ = weight_rounding.gptq_rounded(f.nearest, f.prepped, f.layers, hess,
                                            seven_bit_layers(f.layers, f.policy), targets)
    return bias_corrected_on_float_inputs(f, graph), len(targets)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(REPO / "bench-out" / "int8-budget"))
    ap.add_argument("--variant", default="tf_efficientnet_lite1")
    ap.add_argument("--target", default="vnni", choices=("vnni", "avx512"))
    ap.add_argument("--fold", type=int, default=0, choices=(0, 1))
    ap.add_argument("--chunk", type=int, default=1, help="layers corrected per pass, sequential empirical correction")
    ap.add_argument("--ridge", type=float, default=10.0)
    ap.add_argument("--min-columns", type=float, default=8.0)
    a = ap.parse_args()
    flags = sorted(fl for fl in cpu_flags() if fl.startswith(("avx512_vnni", "amx")) or fl in ("avx_vnni", "avx512f"))
    print(f"CPU: {cpu_kind()} kind, flags {' '.join(flags)}")
    f = fold_build(Path(a.workdir).resolve() / f"fold{a.fold}", a.variant, "percentile", a.target, 32)
    float_hess, _ = weight_rounding.layer_hessians(f.prepped, f.layers, f.hessian_images, 2)
    rounded, _ = weight_rounding.gptq_rounded(f.nearest, f.prepped, f.layers, float_hess,
                                              seven_bit_layers(f.layers, f.policy))
    default = bias_corrected_on_float_inputs(f, rounded)
    graphs, cost = {"default (GPTQ, bias correction on float inputs)": default}, {}
    float_means = dict(zip([la.name for la in f.layers],
                           output_means(f.prepped, [la.name for la in f.layers], f.probe, unfused=False)))
    for label, chunk in (("empirical bias correction, all layers at once", None),
                         (f"empirical bias correction, {a.chunk} layer(s) per pass", a.chunk)):
        t = time.monotonic()
        graphs[label] = empirically_corrected(f, default, float_means, chunk)
        cost[label] = time.monotonic() - t
    t = time.monotonic()
    fitted, n = fitted_to_quantized_inputs(f, float_hess, a.ridge, a.min_columns)
    label = (f"weights fitted to quantized inputs (ridge {a.ridge:g}, >= {a.min_columns:g} n columns: {n} of "
             f"{len(f.layers)} layers)")
    graphs[label], cost[label] = fitted, time.monotonic() - t
    signals = held_out_signals(f, graphs)
    print(f"{a.variant}, {a.target} policy, fold {a.fold}: {len(f.probe)} probe images, {len(f.hessian_images)} "
          f"Hessian images, {next(iter(signals.values()))['images']} held-out images; KL / expected / count")
    for label, s in signals.items():
        extra = f"  (+{cost[label]:.0f} s)" if label in cost else ""
        print(f"  {label}: {s['kl']:.5f} / {100 * s['expected_agreement']:.2f}% / {100 * s['agreement']:.1f}%{extra}")


if __name__ == "__main__":
    main()
