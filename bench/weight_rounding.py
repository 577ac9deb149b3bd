"""int8 weight rounding, GPTQ against nearest, on images held out from calibration: the folds of
bench/int8_budget.py (run it first), one int8 method, both CPU policies, ONNX Runtime.

For each fold, variant and policy: the fold's calibrated model and statistics, the method's ranges, bias
correction, nothing promoted; once with nearest rounding and once with GPTQ (effzoo/weight_rounding.py on
`rounding_images` range images). Prints the held-out mean KL(fp32 || int8) of the softmax, the expected agreement
(effzoo/int8_trials.py split_signals) and the count agreement, and the rounding's cost. A vnni-policy build runs
unfused in float on a CPU without VNNI (the same integer arithmetic), as the int8 search does.

usage: python bench/weight_rounding.py [--workdir bench-out/int8-budget] [--method percentile]
                                       [--variants tf_efficientnet_lite0 ...] [--rounding-images 32]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _workflow import REPO

sys.path.insert(0, str(REPO))
import onnx  # noqa: E402
from effzoo.build_options import BuildOptions  # noqa: E402
from effzoo.cpu_target import covers, cpu_flags, cpu_kind  # noqa: E402
from effzoo.graph_edits import edge_nodes  # noqa: E402
from effzoo.int8_probes import rounded_by_output_error, weight_noise  # noqa: E402
from effzoo.int8_trials import split_signals, trial_runner  # noqa: E402
from effzoo.qdq_graph import bias_corrected, float_deltas, weight_layers  # noqa: E402
from effzoo.ranges import compute_ranges, full_range_tensors  # noqa: E402
from effzoo.shard_io import iter_datalist_rows, read_datalist  # noqa: E402
from effzoo.steps.build_int8 import (calibration_images, cpu_requirement,  # noqa: E402
                                     layers_to_exclude, quantize_model, reduced_weight_overrides,
                                     resolve_reduce_range, spread)

LITES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


def held_out(fold: Path, calibration: dict) -> np.ndarray:
    """The images of the half the fold scores, at the calibration source's geometry."""
    source = Path(calibration["source_datalist"])          # npz/<half>/<geometry>/datalist.tsv
    other = next(p for p in (fold / "npz").iterdir() if p.is_dir() and p.name != source.parts[1])
    datalist = str(other / source.parts[2] / "datalist.tsv")
    return np.concatenate([b for b, _ in iter_datalist_rows(datalist, list(range(len(read_datalist(datalist)))), 16)])


@dataclass
class Fold:
    """One fold's variant at one int8 method and CPU policy, as its build starts: the calibrated float model, the
    quantized layers, the nearest-rounded QDQ graph, and the range images the build measures on."""
    fold: Path
    calibration: dict
    prepped: onnx.ModelProto
    layers: list
    policy: str
    nearest: onnx.ModelProto
    probe: np.ndarray            # sensitivity_images range images (weight noise, bias correction)
    hessian_images: np.ndarray   # rounding_images range images (GPTQ)


def fold_build(fold: Path, variant: str, method: str, target: str, rounding_images: int,
               prepped: onnx.ModelProto | None = None, stats: dict | None = None) -> Fold:
    """The fold's calibration, quantized as the fold's build of this method and target was (its options); or
    another float model of the same function with its own statistics (`prepped`, `stats`)."""
    cal_dir = fold / "calib" / variant
    calibration = json.loads((cal_dir / "calibration.json").read_text())
    given = json.loads((fold / f"vacc/{variant}-int8_{method}_{target}/build.json").read_text())["options"]
    options = BuildOptions.parse(given, f"int8_{method}_{target}")
    if prepped is None:
        prepped = onnx.load(str(cal_dir / "prepped.onnx"))
        with np.load(cal_dir / "stats.npz") as arrs:
            stats = dict(arrs)
    ranges = compute_ranges(stats, method, percentile=options.percentile, levels=options.levels,
                            candidates=options.candidates,
                            keep_full=full_range_tensors(prepped) if options.keep_bounded_ranges else set())
    exclude = edge_nodes(prepped) + layers_to_exclude(prepped, options.exclude_layers)
    layers = weight_layers(prepped, set(exclude))
    saturating = [(la.name, la.weight, la.axis) for la in layers if la.saturating]
    policy = resolve_reduce_range(options.reduce_range, options.target)
    datalist = str(fold / calibration["source_datalist"])
    with tempfile.TemporaryDirectory() as td:
        onnx.save(prepped, str(Path(td) / "prepped.onnx"))
        quantize_model(str(Path(td) / "prepped.onnx"), ranges, Path(td) / "q.onnx", options, exclude,
                        reduced_weight_overrides(saturating) if policy == "saturating" else {}, policy == "all")
        nearest = onnx.load(str(Path(td) / "q.onnx"))
    return Fold(fold, calibration, prepped, layers, policy, nearest,
                calibration_images(spread(calibration["files"], options.sensitivity_images), datalist),
                calibration_images(spread(calibration["files"], rounding_images), datalist))


def held_out_signals(f: Fold, graphs: dict[str, onnx.ModelProto]) -> dict[str, dict]:
    """split_signals of each QDQ graph against fp32 on the fold's held-out images, ONNX Runtime (emulated, unfused,
    where this CPU lacks the policy's kernels)."""
    images = held_out(f.fold, f.calibration)
    opener = trial_runner("onnxruntime", not covers(cpu_kind(), cpu_requirement(f.policy)[0]), 2)

    def logits(run):
        return np.concatenate([run(images[i:i + 16]) for i in range(0, len(images), 16)])
    ref = logits(trial_runner("onnxruntime", False, 2)(f.prepped))
    return {name: {**split_signals(logits(opener(g)), ref), "images": len(images)} for name, g in graphs.items()}


def bias_corrected_on_float_inputs(f: Fold, graph: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with the build's bias correction (the mean output change of its weights, on the probe images)."""
    noise = weight_noise(f.prepped, float_deltas(graph, f.prepped, f.layers), f.probe, 2)
    return bias_corrected(graph, {n: v[1] for n, v in noise.items()})[0]


def compare(fold: Path, variant: str, method: str, target: str, rounding_images: int) -> dict:
    f = fold_build(fold, variant, method, target, rounding_images)
    t = time.monotonic()
    rounded, _, record, _ = rounded_by_output_error(f.nearest, None, f.prepped, f.layers, [], f.policy,
                                                 f.hessian_images, 2)
    rounding_s = time.monotonic() - t
    signals = held_out_signals(f, {name: bias_corrected_on_float_inputs(f, graph)
                                   for name, graph in (("nearest", f.nearest), ("gptq", rounded))})
    return {"images": signals["gptq"]["images"], "emulated": not covers(cpu_kind(), cpu_requirement(f.policy)[0]),
            "rounding_s": rounding_s, "output_error_vs_nearest": record["output_error_vs_nearest"], **signals}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(REPO / "bench-out" / "int8-budget"))
    ap.add_argument("--method", default="percentile")
    ap.add_argument("--variants", nargs="+", default=list(LITES))
    ap.add_argument("--rounding-images", type=int, default=32)
    a = ap.parse_args()
    work = Path(a.workdir).resolve()
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")) or f in ("avx_vnni", "avx2"))
    print(f"CPU: {cpu_kind()} kind, flags {' '.join(flags)}")
    print("held-out: KL / expected agreement / count agreement, nearest -> GPTQ (bias correction on, nothing "
          "promoted, ONNX Runtime)")
    cuts, means = [], {"nearest": [], "gptq": []}
    for variant in a.variants:
        for target in ("vnni", "avx512"):
            for fold in (0, 1):
                r = compare(work / f"fold{fold}", variant, a.method, target, a.rounding_images)
                n, g = r["nearest"], r["gptq"]
                cuts.append(1 - g["kl"] / n["kl"])
                for k in means:
                    means[k].append((r[k]["expected_agreement"], r[k]["agreement"]))
                print(f"  {variant} {target:6s} fold {fold}: {n['kl']:.5f} / {100 * n['expected_agreement']:.2f}% / "
                      f"{100 * n['agreement']:.1f}% -> {g['kl']:.5f} / {100 * g['expected_agreement']:.2f}% / "
                      f"{100 * g['agreement']:.1f}%  (KL cut {100 * cuts[-1]:.0f}%; layer output error "
                      f"{r['output_error_vs_nearest']:.2f}x; rounding {r['rounding_s']:.1f} s; {r['images']} images"
                      f"{'; emulated' if r['emulated'] else ''})")
    for k, v in means.items():
        e, c = np.mean(v, axis=0)
        print(f"{k}: mean expected agreement {100 * e:.2f}%, mean count agreement {100 * c:.2f}%")
    print(f"KL cut: {100 * min(cuts):.0f}-{100 * max(cuts):.0f}%")


if __name__ == "__main__":
    main()
