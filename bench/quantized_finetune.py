"""End-to-end tuning of an int8 build with its activations quantized in the loop (measured, not adopted): the
default build (GPTQ rounding, bias correction, nothing promoted, ONNX Runtime) run as a PyTorch module that
computes what its QDQ graph computes (activations fake-quantized, straight-through gradients), its biases (and,
with --weight-lr, its weights on their int8 grid) tuned by Adam to the fp32 softmax on the fold's range images
(KL loss), then written back into the QDQ graph. Scored on the fold's held-out images as bench/weight_rounding.py
does: KL(fp32 || int8) of the softmax, expected agreement and count agreement.

The folds of bench/int8_budget.py (run it first).

usage: python bench/quantized_finetune.py [--workdir bench-out/int8-budget] [--fold 0]
           [--builds tf_efficientnet_lite1:percentile:vnni ...] [--steps 40] [--lr 1e-4] [--weight-lr 1e-5]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _workflow import REPO
from activation_error_sources import default_graph, fold_arguments, print_held_out
from weight_rounding import fold_build

sys.path.insert(0, str(REPO))
import onnx  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402
from effzoo.int8_search import trial_runner  # noqa: E402
from effzoo.steps.build_int8 import calibration_images  # noqa: E402


def _straight_through_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _per_axis(v, ndim: int, axis: int):
    """A per-channel scale or zero point (tensor or array) shaped to broadcast along `axis` of an ndim array."""
    if v.ndim == 0 or ndim <= 1:
        return v
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


class QDQModule(torch.nn.Module):
    """A QDQ ONNX graph as a PyTorch module (the lite graphs' ops, and Sigmoid for B0..B8's gates; any other op is
    an error naming its node). Activations are fake-quantized with round half to even and clamping, as
    QuantizeLinear does; conv and Gemm biases are float parameters; optionally every int8 weight is a float
    parameter rounded onto its grid in the forward pass."""

    def __init__(self, model: onnx.ModelProto, tune_weights: bool = False):
        super().__init__()
        self.model = model
        self.const = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
        self.biases = torch.nn.ParameterDict()
        self.weights = torch.nn.ParameterDict()
        self.bias_of: dict[str, tuple[str, str]] = {}            # node -> (parameter, bias tensor)
        self.weight_of: dict[str, tuple[str, onnx.NodeProto, int]] = {}  # DQ output -> (parameter, DQ node, bound)
        dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
        for n in model.graph.node:
            if n.op_type in ("Conv", "Gemm") and len(n.input) > 2:
                b = n.input[2]
                key = f"b{len(self.biases)}"
                self.biases[key] = torch.nn.Parameter(self._dequantized(dq[b]) if b in dq else self.const[b].float())
                self.bias_of[n.name] = (key, b)
            if tune_weights and n.op_type == "DequantizeLinear" and self.const.get(n.input[0]) is not None \
                    and self.const[n.input[0]].dtype == torch.int8:
                key = f"w{len(self.weights)}"
                self.weights[key] = torch.nn.Parameter(self._dequantized(n))
                # the grid a tuned weight stays on: [-64, 64] for a 7-bit layer, else [-127, 127]
                bound = 127 if int(self.const[n.input[0]].abs().max()) > 64 else 64
                self.weight_of[n.output[0]] = (key, n, bound)

    @staticmethod
    def _axis(node) -> int:
        return next((a.i for a in node.attribute if a.name == "axis"), 1)

    def _dequantized(self, node) -> torch.Tensor:
        x, s, z = (self.const[i] for i in node.input[:3])
        axis = self._axis(node)
        return ((x.double() - _per_axis(z, x.ndim, axis).double()) * _per_axis(s, x.ndim, axis).double()).float()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        v: dict[str, torch.Tensor] = {self.model.graph.input[0].name: image}
        for n in self.model.graph.node:
            def arg(i, n=n):
                return v[n.input[i]] if n.input[i] in v else self.const[n.input[i]]
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            op = n.op_type
            if op == "DequantizeLinear" and n.output[0] in self.weight_of:
                key, node, bound = self.weight_of[n.output[0]]
                w = self.weights[key]
                s = _per_axis(self.const[node.input[1]].float(), w.ndim, self._axis(node))
                out = torch.clamp(_straight_through_round(w / s), -bound, bound) * s
            elif op == "DequantizeLinear":
                out = self._dequantized(n) if n.input[0] in self.const else v[n.input[0]]
            elif op == "QuantizeLinear":   # the value stays float, on the quantized grid
                zp = self.const[n.input[2]]
                lo, hi = (0.0, 255.0) if zp.dtype == torch.uint8 else (-128.0, 127.0)
                s, z = self.const[n.input[1]].float(), zp.float()
                out = (torch.clamp(_straight_through_round(arg(0) / s + z), lo, hi) - z) * s
            elif op == "Conv":
                x, p = arg(0), list(attrs.get("pads", [0, 0, 0, 0]))
                if p[0] != p[2] or p[1] != p[3]:
                    x, p = F.pad(x, (p[1], p[3], p[0], p[2])), [0, 0, 0, 0]
                bias = self.biases[self.bias_of[n.name][0]] if n.name in self.bias_of else None
                out = F.conv2d(x, arg(1), bias, attrs.get("strides", [1, 1]), (p[0], p[1]),
                               attrs.get("dilations", [1, 1]), attrs.get("group", 1))
            elif op == "Gemm":
                if attrs.get("transA", 0) or not attrs.get("transB", 0):
                    raise NotImplementedError(f"{n.name}: Gemm other than A B^T")
                bias = self.biases[self.bias_of[n.name][0]] if n.name in self.bias_of else None
                out = F.linear(arg(0), arg(1), bias)
            elif op in ("Add", "Mul"):
                out = arg(0) + arg(1) if op == "Add" else arg(0) * arg(1)
            elif op == "Sigmoid":
                out = torch.sigmoid(arg(0))
            elif op == "Cast":
                out = arg(0).float()
            elif op == "Transpose":
                out = arg(0).permute(*attrs["perm"])
            elif op == "ReduceMean":
                axes = attrs.get("axes") or [int(i) for i in arg(1)]
                out = arg(0).mean(dim=tuple(axes), keepdim=bool(attrs.get("keepdims", 1)))
            elif op == "GlobalAveragePool":
                out = arg(0).mean(dim=(2, 3), keepdim=True)
            elif op == "Reshape":
                out = arg(0).reshape(*[int(i) for i in arg(1)])
            elif op == "Flatten":
                out = arg(0).flatten(attrs.get("axis", 1))
            elif op == "Clip":
                out = torch.clamp(arg(0), float(arg(1)), float(arg(2)))
            elif op == "Softmax":
                out = torch.softmax(arg(0), attrs.get("axis", -1))
            else:
                raise NotImplementedError(f"{n.name}: op {op}")
            v[n.output[0]] = out
        return v[self.model.graph.output[0].name]

    def to_onnx(self) -> onnx.ModelProto:
        """The QDQ graph with the tuned biases (int32 on their own scales) and weights (on their int8 grid)."""
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        inits = {i.name: i for i in m.graph.initializer}
        dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
        for key, b in self.bias_of.values():
            value = self.biases[key].detach().double().numpy()
            if b in dq:
                scale = numpy_helper.to_array(inits[dq[b].input[1]]).astype(np.float64)
                kept = numpy_helper.to_array(inits[dq[b].input[0]])   # a zero scale (an all-zero channel) stays
                q = np.where(scale > 0, np.round(value / np.where(scale > 0, scale, 1.0)), kept)
                new = numpy_helper.from_array(q.astype(np.int32), dq[b].input[0])
            else:
                new = numpy_helper.from_array(value.astype(np.float32), b)
            inits[new.name].CopyFrom(new)
        for key, node, bound in self.weight_of.values():
            w = self.weights[key].detach().double().numpy()
            s = _per_axis(numpy_helper.to_array(inits[node.input[1]]).astype(np.float64), w.ndim, self._axis(node))
            q = np.clip(np.round(w / s), -bound, bound).astype(np.int8)
            inits[node.input[0]].CopyFrom(numpy_helper.from_array(q, node.input[0]))
        return m


def tuned(graph: onnx.ModelProto, images: np.ndarray, reference: np.ndarray, steps: int, lr: float,
          weight_lr: float, batch: int = 16, seed: int = 0) -> onnx.ModelProto:
    """The graph after `steps` Adam steps on random batches of the images toward the reference logits."""
    module = QDQModule(graph, tune_weights=weight_lr > 0)
    groups = [{"params": list(module.biases.parameters()), "lr": lr}]
    if weight_lr > 0:
        groups.append({"params": list(module.weights.parameters()), "lr": weight_lr})
    opt = torch.optim.Adam(groups)
    x, ref = torch.from_numpy(images), torch.from_numpy(reference)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(x), min(batch, len(x)), replace=False))
        loss = F.kl_div(F.log_softmax(module(x[idx]), -1), F.log_softmax(ref[idx], -1), log_target=True,
                        reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return module.to_onnx()


def main():
    ap = fold_arguments(__doc__)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-4, help="Adam step of the biases")
    ap.add_argument("--weight-lr", type=float, nargs="*", default=[1e-5],
                    help="Adam steps of the weights, one tuned build each (the biases-only build is always made)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    fold = Path(a.workdir) / f"fold{a.fold}"
    for spec in a.builds:
        variant, method, target = spec.split(":")
        f = fold_build(fold, variant, method, target, 32)
        default = default_graph(f)
        images = calibration_images(f.calibration["files"], str(fold / f.calibration["source_datalist"]))
        fp32 = trial_runner("onnxruntime", False, 2)(f.prepped)
        reference = np.concatenate([fp32(images[i:i + 16]) for i in range(0, len(images), 16)])
        graphs = {"default": default}
        for weight_lr in [0.0, *a.weight_lr]:
            t = time.monotonic()
            g = tuned(default, images, reference, a.steps, a.lr, weight_lr)
            name = "biases" + (f" and weights (lr {weight_lr:g})" if weight_lr else "")
            graphs[f"{name} tuned, {a.steps} steps (+{time.monotonic() - t:.0f} s)"] = g
        print(f"{variant} int8_{method} {target} policy, fold {a.fold}: tuned on {len(images)} range images")
        print_held_out(f, graphs, 56)


if __name__ == "__main__":
    main()
