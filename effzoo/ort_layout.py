"""ONNX Runtime CPU sessions for the builds, with a layout pass for squeeze-excite (SE) + SiLU networks.

ORT's CPU provider runs float convolutions in a blocked channel layout (NCHWc, 16 channels a block with
AVX-512, 8 with AVX2). Its layout transformer does not know two ops that EfficientNet B0..B8 use in every
block, so around each it converts the whole activation tensor back to NCHW and forward again:
- SiLU, which ORT fuses into its QuickGelu op before the layout pass runs;
- the SE gate, a Mul of x [N,C,H,W] by s [N,C,1,1] (its source says that Mul broadcasting does not
  vectorise on the blocked layout).

`tuned_model()` rewrites ORT's own optimized graph for this machine: SiLU becomes QuickGelu applied to the
blocked tensor (elementwise, so layout does not matter), and the SE Mul runs on the blocked tensor through
Reshape: x as [N, C/b, HW/k, b*k], s as [N, C/b, 1, b] tiled k times (k <= 32 divides HW), so every span holds b*k
floats. The graph is hardware specific (block size), so it is made when a session is created, on the machine
that runs it, never stored in a build. effzoo.ort_session.make_session checks it against the standard session on a probe
batch and falls back to the standard session (with a warning, and the reason in `info`) if they disagree.
Models without such patterns (lite0, quantized builds) get the standard session unchanged.

The pass is opt-in (`inference.layout_tuning`, default off): it measured 1.12x on b0 at batch 16 on a CPU
without VNNI but 1.07x on a VNNI CPU, short of the 1.1x on both kinds that would make it the default, and it
makes b7's session start 10.7 s instead of 1.4 s. It depends on ONNX Runtime internals (the
com.microsoft.nchwc Reorder ops, QuickGeluFusion), so it runs only on the ORT version it was checked on.
"""
from __future__ import annotations

import functools
import os
import tempfile

import numpy as np

from effzoo.common import LOG, ZooError
from effzoo.ort_session import open_session

CHECKED_ORT_VERSION = "1.32.0"  # the layout pass was written and checked against this ONNX Runtime
QUICKGELU_DOMAIN = "com.microsoft"
NCHWC_DOMAIN = "com.microsoft.nchwc"


def _optimized_graph(model_bytes: bytes, disabled: list[str]):
    """ORT's fully optimized graph of a model on this machine (as an onnx ModelProto)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="effzoo-ort-") as d:
        path = os.path.join(d, "optimized.onnx")
        open_session(model_bytes, optimized_path=path, disabled_optimizers=disabled)
        return onnx.load(path)


@functools.lru_cache(maxsize=1)
def nchwc_block_size() -> int:
    """The NCHWc channel block ORT's CPU provider uses on this machine (0 when it uses none).

    Read off ORT's own output: a 16 -> 8 channel 1x1 conv has its weight padded to the block size.
    """
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((8, 16, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    opt = _optimized_graph(m.SerializeToString(), [])
    inits = {i.name: list(i.dims) for i in opt.graph.initializer}
    for n in opt.graph.node:
        if n.domain == NCHWC_DOMAIN and n.op_type == "Conv":
            return int(inits[n.input[1]][0])
    return 0


def spatial_mean_to_gap(model) -> int:
    """Replace ReduceMean over axes (2, 3) with keepdims by GlobalAveragePool, in place; returns the count.

    The same arithmetic, but the layout pass knows GlobalAveragePool and keeps it blocked.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    done = 0
    for idx, n in enumerate(list(g.node)):
        if n.op_type != "ReduceMean" or n.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        axes = attrs.get("axes")
        if axes is None and len(n.input) > 1:
            axes = consts.get(n.input[1])
            axes = None if axes is None else axes.tolist()
        if attrs.get("keepdims", 1) != 1 or axes is None or sorted(int(a) for a in axes) not in ([2, 3], [-2, -1]):
            continue
        g.node.remove(n)
        g.node.insert(idx, helper.make_node("GlobalAveragePool", [n.input[0]], list(n.output), name=n.name))
        done += 1
    if done:
        used = {i for n in g.node for i in n.input}
        for init in [i for i in g.initializer if i.name not in used]:
            g.initializer.remove(init)
    return done


def _spatial_sizes(model) -> dict[str, tuple[int, int]]:
    """(channels, H*W) of every 4-D tensor whose channel and spatial sizes shape inference knows."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        d = v.type.tensor_type.shape.dim
        if len(d) == 4 and all(x.HasField("dim_value") for x in d[1:]):
            out[v.name] = (d[1].dim_value, d[2].dim_value * d[3].dim_value)
    return out


class _BlockedRewrite:
    """One pass over ORT's optimized graph: which nodes to replace by what (see the module doc)."""

    def __init__(self, opt, sizes: dict[str, tuple[int, int]], block: int):
        self.opt, self.sizes, self.block = opt, sizes, block
        self.nodes = list(opt.graph.node)   # one wrapper per node for the whole pass: replacements keyed by id()
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in opt.graph.output}
        self.replace: dict[int, list] = {}   # id(node) -> nodes to put in its place ([] = drop)
        self.inits: list = []
        self.counts = {"silu_blocked": 0, "se_mul_blocked": 0}

    def sole_consumer(self, name):
        c = self.consumers.get(name, [])
        return c[0] if len(c) == 1 and name not in self.graph_outputs else None

    def silu(self, n) -> None:
        """Sigmoid + Mul of the same tensor: QuickGelu, which runs on the blocked tensor."""
        from onnx import helper

        mul = self.sole_consumer(n.output[0])
        if (mul is not None and mul.op_type == "Mul" and mul.domain == "" and id(mul) not in self.replace
                and sorted(mul.input) == sorted([n.input[0], n.output[0]])):
            self.replace[id(n)] = []
            self.replace[id(mul)] = [helper.make_node("QuickGelu", [n.input[0]], [mul.output[0]], alpha=1.0,
                                                      domain=QUICKGELU_DOMAIN,
                                                      name=f"silu_blocked_{self.counts['silu_blocked']}")]
            self.counts["silu_blocked"] += 1

    def se_gate(self, n):
        """(x's and the gate's ReorderOutput, the ReorderInput after the Mul, channels, pixels) of an SE Mul
        between two reorders that the blocked layout can take, else None."""
        ros = [self.producer.get(i) for i in n.input]
        if any(r is None or r.op_type != "ReorderOutput" or r.domain != NCHWC_DOMAIN or id(r) in self.replace
               or self.sole_consumer(r.output[0]) is not n for r in ros):
            return None
        reorder_in = self.sole_consumer(n.output[0])
        if reorder_in is None or reorder_in.op_type != "ReorderInput" or reorder_in.domain != NCHWC_DOMAIN:
            return None
        if any(a.name == "channels_last" and a.i for r in ros + [reorder_in] for a in r.attribute):
            return None
        shapes = [self.sizes.get(r.output[0]) for r in ros]
        if None in shapes:
            return None
        (cx, hwx), (cs, hws) = shapes
        if hwx == 1:   # put the [N,C,1,1] gate second
            ros, (cx, hwx), (cs, hws) = ros[::-1], shapes[1], shapes[0]
        if cx != cs or hws != 1 or hwx == 1 or cx % self.block:
            return None
        return ros, reorder_in, cx, hwx

    def se_mul(self, n) -> None:
        """The SE gate's Mul on the blocked tensors, through Reshape and Tile."""
        from onnx import helper, numpy_helper

        found = self.se_gate(n)
        if found is None:
            return
        ros, reorder_in, cx, hwx = found
        block, cb = self.block, cx // self.block
        k = max(d for d in range(1, 33) if hwx % d == 0)   # spans of up to 32 pixels x block
        tag = f"se_blocked_{self.counts['se_mul_blocked']}"
        self.inits += [numpy_helper.from_array(np.array([0, cb, -1, block * k], np.int64), f"{tag}_xshape"),
                       numpy_helper.from_array(np.array([0, cb, 1, block], np.int64), f"{tag}_sshape"),
                       numpy_helper.from_array(np.array([1, 1, 1, k], np.int64), f"{tag}_repeats")]
        x_blocked, s_blocked = ros[0].input[0], ros[1].input[0]
        for r in ros:
            self.replace[id(r)] = []
        self.replace[id(n)] = []
        self.replace[id(reorder_in)] = [
            helper.make_node("Reshape", [x_blocked, f"{tag}_xshape"], [f"{tag}_x"], name=f"{tag}_reshape_x"),
            helper.make_node("Reshape", [s_blocked, f"{tag}_sshape"], [f"{tag}_s1"], name=f"{tag}_reshape_s"),
            helper.make_node("Tile", [f"{tag}_s1", f"{tag}_repeats"], [f"{tag}_s"], name=f"{tag}_tile"),
            helper.make_node("Mul", [f"{tag}_x", f"{tag}_s"], [f"{tag}_y"], name=f"{tag}_mul"),
            helper.make_node("Shape", [x_blocked], [f"{tag}_shape"], name=f"{tag}_shape"),
            helper.make_node("Reshape", [f"{tag}_y", f"{tag}_shape"], [reorder_in.output[0]],
                             name=f"{tag}_reshape_y")]
        self.counts["se_mul_blocked"] += 1


def _topological(nodes: list, ready: set) -> list:
    """The nodes in an order where each runs after its inputs' producers (replacements can sit before them)."""
    ordered = []
    while nodes:
        rest = []
        for n in nodes:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(nodes):
            raise RuntimeError(f"layout rewrite left a cycle at {rest[0].name}")
        nodes = rest
    return ordered


def _rewrite_blocked(opt, sizes: dict[str, tuple[int, int]], block: int) -> dict:
    """Rewrite ORT's optimized graph in place (see the module doc); returns the rewrite counts."""
    from onnx import helper

    rw = _BlockedRewrite(opt, sizes, block)
    for n in rw.nodes:
        if id(n) in rw.replace:
            continue
        if n.op_type == "Sigmoid" and n.domain == "":
            rw.silu(n)
        elif n.op_type == "Mul" and n.domain == "" and len(n.input) == 2:
            rw.se_mul(n)
    counts = rw.counts
    if not any(counts.values()):
        return counts
    g = opt.graph
    nodes = [m for n in rw.nodes for m in rw.replace.get(id(n), [n])]
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {i.name for i in rw.inits} | {""}
    ordered = _topological(nodes, ready)
    del g.node[:]
    g.node.extend(ordered)
    g.initializer.extend(rw.inits)
    if not any(o.domain == QUICKGELU_DOMAIN for o in opt.opset_import):
        opt.opset_import.append(helper.make_opsetid(QUICKGELU_DOMAIN, 1))
    return counts


def tuned_model(model_path: str):
    """(ModelProto ready to run with graph optimization off, rewrite counts), or (None, reason)."""
    import onnx

    block = nchwc_block_size()
    if block == 0:
        return None, "ONNX Runtime uses no blocked layout on this CPU"
    model = onnx.load(model_path)
    if not any(n.op_type == "Sigmoid" for n in model.graph.node):
        return None, "no SiLU or SE gate in the graph"
    if any(len(i.dims) == 4 and i.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
           for i in model.graph.initializer):
        return None, "not a float32 graph"
    gap = spatial_mean_to_gap(model)
    sizes = _spatial_sizes(model)
    opt = _optimized_graph(model.SerializeToString(), ["QuickGeluFusion"])
    counts = _rewrite_blocked(opt, sizes, block)
    if not any(counts.values()):
        return None, "no SiLU or SE gate on blocked tensors"
    return opt, {"block": block, "spatial_mean_to_gap": gap, **counts}


def make_session(model_path: str, threads: int, tuning: bool = False, providers: list[str] | None = None,
                 probe_batch: int = 2):
    """(session, info) for a build. With `tuning` on the CPU provider, the layout pass is applied when it
    finds work, after its outputs matched the standard session's on a seeded probe batch."""
    import onnxruntime as ort

    if tuning and ort.__version__ != CHECKED_ORT_VERSION:
        raise ZooError(f"inference.layout_tuning: the layout pass rewrites ONNX Runtime's internal graph and was "
                       f"checked on onnxruntime {CHECKED_ORT_VERSION}, not the installed {ort.__version__}; set "
                       f"inference.layout_tuning: false (the standard session), or install onnxruntime=="
                       f"{CHECKED_ORT_VERSION}")
    providers = providers or ["CPUExecutionProvider"]
    standard = open_session(model_path, threads, providers=providers, log_quiet=False)
    if not tuning or providers != ["CPUExecutionProvider"]:
        return standard, {"layout_tuning": "off"}
    try:
        tuned, detail = tuned_model(model_path)
        if tuned is None:
            return standard, {"layout_tuning": f"off: {detail}"}
        session = open_session(tuned, threads, "none", providers)
    except Exception as e:  # an ORT or onnx version this pass does not understand: say so, run standard
        LOG.warning("%s: layout tuning failed (%s); using the standard ONNX Runtime session", model_path, e)
        return standard, {"layout_tuning": f"off: failed ({type(e).__name__})"}
    inp = standard.get_inputs()[0]
    shape = [probe_batch] + [int(d) for d in inp.shape[1:]]
    rng = np.random.default_rng(0)
    if inp.type == "tensor(uint8)":
        x = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    names = [o.name for o in standard.get_outputs()]
    ref, got = standard.run(names, {inp.name: x}), session.run(names, {inp.name: x})
    err = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
    scale = max(float(np.abs(a).max()) for a in ref)
    if not err <= 1e-4 * max(1.0, scale):
        LOG.warning("%s: layout-tuned graph differs from the standard session by %.3g (output scale %.3g); "
                    "using the standard session", model_path, err, scale)
        return standard, {"layout_tuning": f"off: probe mismatch {err:.3g}", **detail}
    del standard
    LOG.info("%s: layout tuning on (%s; probe max |diff| %.2g)", model_path, detail, err)
    return session, {"layout_tuning": "on", "probe_max_abs_diff": err, **detail}
