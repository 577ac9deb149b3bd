"""Where an int8 build's remaining error comes from, on images held out from calibration: the default build (GPTQ
rounding, bias correction, nothing promoted, ONNX Runtime) with one group of activation tensors left in float at a
time, with every activation or every weight in float; and the same build after residual-stream channel
equalization (measured, not adopted). Every weight in float is the int8 search's float promotion of every layer.

Groups, by what produces the tensor: the residual stream (projection conv outputs and the Adds of the skip
connections), depthwise conv outputs and expansion conv outputs (both after ReLU6). A group in float removes its
QuantizeLinear/DequantizeLinear pairs and puts back the ReLU6 that ONNX Runtime's quantizer folds into them.

The skip path in float: the Adds of the skip connections read the stream in float, and only the convs that read it
see it quantized, so quantization error does not pile up along the stream. Two ways: the Adds' outputs only (ONNX
Runtime can keep every conv fused), or every stream tensor (the projection convs then write float: OpenVINO's int8
convs can, ONNX Runtime's fused ones cannot).

Residual-stream equalization scales each stream channel c by s_c = (R / r_c)^alpha (r_c: its largest magnitude on
the range images, R: the stream's) in the rows of the convs that produce the stream and by 1 / s_c in the columns of
the convs that read it; the float model computes the same function, and its statistics are measured again.

The folds of bench/int8_budget.py (run it first). Prints held-out KL(fp32 || int8) of the softmax, expected
agreement and count agreement (effzoo/int8_search.py split_signals).

usage: python bench/activation_error_sources.py [--workdir bench-out/int8-budget] [--fold 0]
           [--builds tf_efficientnet_lite1:percentile:vnni ...] [--alphas 0.5 1.0]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _workflow import REPO
from weight_rounding import bias_corrected_on_float_inputs, fold_build, held_out_signals

sys.path.insert(0, str(REPO))
import onnx  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402
from effzoo.int8_search import promoted_model, rounded_by_output_error  # noqa: E402
from effzoo.ort_session import bounded_session, session_options  # noqa: E402
from effzoo.ranges import TensorStats, stats_to_arrays  # noqa: E402
from effzoo.steps.build_int8 import calibration_images  # noqa: E402
from effzoo.steps.calibrate import augment, tensors_to_calibrate  # noqa: E402

GROUPS = ("stream", "depthwise", "expansion")


def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _maps(model: onnx.ModelProto) -> tuple[dict, dict]:
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producers, consumers


def tensor_group(tensor: str, producers: dict, consumers: dict) -> str | None:
    """GROUPS entry of a float model's activation tensor, given its producer and consumer maps (None: another
    kind)."""
    p = producers.get(tensor)
    if p is None:
        return None
    if p.op_type == "Add":
        return "stream"
    if p.op_type == "Clip" and producers.get(p.input[0]) is not None and producers[p.input[0]].op_type == "Conv":
        return "depthwise" if _group(producers[p.input[0]]) > 1 else "expansion"
    if p.op_type == "Conv" and _group(p) == 1 and not any(c.op_type in ("Clip", "Relu")
                                                           for c in consumers.get(tensor, [])):
        return "stream"
    return None


def with_float(qdq: onnx.ModelProto, prepped: onnx.ModelProto, groups: set[str]) -> onnx.ModelProto:
    """The QDQ graph with the activations of these groups in float (their Q/DQ removed, folded ReLU6 restored)."""
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    pre_producers, pre_consumers = _maps(prepped)
    producers, _ = _maps(m)
    inits = {i.name: i for i in prepped.graph.initializer}
    drop, rewire, extra = set(), {}, []
    for q in [n for n in m.graph.node if n.op_type == "QuantizeLinear"]:
        src = q.input[0]
        if tensor_group(src, pre_producers, pre_consumers) not in groups:
            continue
        clip = pre_producers[src] if pre_producers[src].op_type == "Clip" else None
        if clip is not None and producers[src].op_type == "Conv":   # the quantizer folded this ReLU6 into the Q
            producers[src].output[0] = src + "_unclipped"
            for bound in clip.input[1:]:
                m.graph.initializer.append(inits[bound])
            extra.append(helper.make_node("Clip", [src + "_unclipped", *clip.input[1:]], [src], name=src + "_relu6"))
        for d in m.graph.node:
            if d.op_type == "DequantizeLinear" and d.input[0] == q.output[0]:
                rewire[d.output[0]] = src
                drop.add(d.name)
        drop.add(q.name)
    nodes = [n for n in m.graph.node if n.name not in drop] + extra
    for n in nodes:
        for i, x in enumerate(n.input):
            n.input[i] = rewire.get(x, x)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def with_float_skip_path(qdq: onnx.ModelProto, prepped: onnx.ModelProto, made_by: tuple[str, ...]
                         ) -> onnx.ModelProto:
    """The QDQ graph with the skip connections' Adds reading the float stream tensors made by these op types
    ("Add", "Conv"); every other reader keeps the quantized tensor."""
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    pre_producers, pre_consumers = _maps(prepped)
    _, consumers = _maps(m)
    for q in [n for n in m.graph.node if n.op_type == "QuantizeLinear"]:
        src = q.input[0]
        if tensor_group(src, pre_producers, pre_consumers) != "stream" or \
                pre_producers[src].op_type not in made_by:
            continue
        for dq in consumers.get(q.output[0], []):
            for add in [c for c in consumers.get(dq.output[0], []) if c.op_type == "Add"]:
                for i, x in enumerate(add.input):
                    if x == dq.output[0]:
                        add.input[i] = src
    return m


def stream_groups(prepped: onnx.ModelProto) -> list[tuple[list[str], list, list]]:
    """(tensors, producing convs, reading convs) of each residual stream whose every producer is a group-1 conv
    without activation (or an Add of the stream) and whose every reader is a group-1 conv (or an Add of it)."""
    producers, consumers = _maps(prepped)
    inits = {i.name for i in prepped.graph.initializer}
    parent: dict[str, str] = {}

    def root(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x
    for n in prepped.graph.node:
        if n.op_type == "Add" and not set(n.input) & inits:
            for t in n.input:
                parent[root(t)] = root(n.output[0])
    members: dict[str, set] = {}
    for t in parent:
        members.setdefault(root(t), set()).add(t)
    out = []
    for tensors in members.values():
        makers = [producers[t] for t in tensors if producers[t].op_type != "Add"]
        readers = [c for t in tensors for c in consumers.get(t, [])
                   if not (c.op_type == "Add" and c.output[0] in tensors)]
        if makers and all(tensor_group(t, producers, consumers) == "stream" for t in tensors) and all(
                r.op_type == "Conv" and _group(r) == 1 and r.input[0] in tensors for r in readers):
            out.append((sorted(tensors), makers, readers))
    return out


def channel_absmax(prepped: onnx.ModelProto, tensors: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Largest magnitude of each channel of these tensors over the images."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(prepped)
    del m.graph.output[:]
    m.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    sess = ort.InferenceSession(m.SerializeToString(), session_options(2), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = {t: 0.0 for t in tensors}
    for i in range(0, len(images), 16):
        for t, v in zip(tensors, sess.run(tensors, {name: images[i:i + 16]})):
            out[t] = np.maximum(out[t], np.abs(v).max(axis=(0, 2, 3)))
    return out


def equalized(prepped: onnx.ModelProto, streams: list, absmax: dict, alpha: float) -> tuple[onnx.ModelProto, float]:
    """The float model with each stream's channels scaled by (R / r_c)^alpha; returns it and the largest scale."""
    m = onnx.ModelProto()
    m.CopyFrom(prepped)
    inits = {i.name: i for i in m.graph.initializer}

    def rescale(name, factor):
        inits[name].CopyFrom(numpy_helper.from_array(
            (numpy_helper.to_array(inits[name]) * factor).astype(np.float32), name))
    largest = 1.0
    for tensors, makers, readers in streams:
        r = np.max([absmax[t] for t in tensors], axis=0)
        s = (r.max() / np.maximum(r, r.max() * 1e-3)) ** alpha
        largest = max(largest, float(s.max()))
        for conv in makers:
            rescale(conv.input[1], s[:, None, None, None])
            if len(conv.input) > 2:
                rescale(conv.input[2], s)
        for conv in readers:
            rescale(conv.input[1], 1 / s[None, :, None, None])
    return m, largest


def statistics(prepped: onnx.ModelProto, calibration: dict, images: np.ndarray) -> dict:
    """The calibrate step's statistics of a float model over these range images."""
    names = tensors_to_calibrate(prepped)
    aug, _ = augment(prepped, names, calibration["samples_per_tensor"])
    sess = bounded_session(aug, 2)
    stats = {n: TensorStats(calibration["num_bins"]) for n in names}
    name = sess.get_inputs()[0].name
    for i in range(0, len(images), calibration["batch"]):
        outs = sess.run(None, {name: images[i:i + calibration["batch"]]})
        for k, n in enumerate(names):
            stats[n].update(outs[3 * k], outs[3 * k + 1], outs[3 * k + 2])
    return stats_to_arrays(stats)


def default_graph(f) -> onnx.ModelProto:
    rounded, _, _ = rounded_by_output_error(f.nearest, None, f.prepped, f.layers, [], f.policy, f.hessian_images, 2)
    return bias_corrected_on_float_inputs(f, rounded)


def fold_arguments(doc: str) -> argparse.ArgumentParser:
    """The arguments every bench on the folds' default builds takes: --workdir, --fold, --builds."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="bench-out/int8-budget")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--builds", nargs="+", default=["tf_efficientnet_lite1:percentile:vnni"],
                    help="variant:method:policy (policy vnni or avx512)")
    return ap


def print_held_out(f, graphs: dict[str, onnx.ModelProto], width: int) -> None:
    """One line per graph: its held-out KL, expected agreement and count agreement."""
    for name, s in held_out_signals(f, graphs).items():
        print(f"  {name:{width}} KL {s['kl']:.5f}  expected {100 * s['expected_agreement']:.2f}%  "
              f"count {100 * s['agreement']:.1f}% of {s['images']}", flush=True)


def main():
    ap = fold_arguments(__doc__)
    ap.add_argument("--alphas", nargs="*", type=float, default=[0.5, 1.0])
    a = ap.parse_args()
    fold = Path(a.workdir) / f"fold{a.fold}"
    for spec in a.builds:
        variant, method, target = spec.split(":")
        f = fold_build(fold, variant, method, target, 32)
        default = default_graph(f)
        every_weight = promoted_model(f.nearest, [(layer, "float") for layer in f.layers], f.prepped, None)
        graphs = {"default": default, "float weights (int8 activations)": every_weight}
        graphs.update({f"{g} in float": with_float(default, f.prepped, {g}) for g in GROUPS})
        graphs["every activation in float"] = with_float(default, f.prepped, set(GROUPS))
        graphs["skip path in float, Add outputs"] = with_float_skip_path(default, f.prepped, ("Add",))
        graphs["skip path in float, every stream tensor"] = with_float_skip_path(default, f.prepped, ("Add", "Conv"))
        calibration = json.loads((fold / "calib" / variant / "calibration.json").read_text())
        range_images = calibration_images(calibration["files"], str(fold / calibration["source_datalist"]))
        streams = stream_groups(f.prepped)
        absmax = channel_absmax(f.prepped, [t for s in streams for t in s[0]], range_images[::4])
        for alpha in a.alphas:
            t = time.monotonic()
            model, largest = equalized(f.prepped, streams, absmax, alpha)
            eq = fold_build(fold, variant, method, target, 32, model, statistics(model, calibration, range_images))
            graphs[f"stream equalized, alpha {alpha} (max scale {largest:.1f}, +{time.monotonic() - t:.0f} s)"] = \
                default_graph(eq)
        print(f"{variant} int8_{method} {target} policy, fold {a.fold}: {len(streams)} residual streams")
        print_held_out(f, graphs, 58)


if __name__ == "__main__":
    main()
