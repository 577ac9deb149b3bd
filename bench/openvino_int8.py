"""int8 on OpenVINO, two ways, side by side on ../shared/imagenet-sample-500 (one process, interleaved timing):
(a) the project's builds: its calibrated QDQ graph converted to OpenVINO IR (ov_int8_* quant modes), and
(b) NNCF's post-training quantization (nncf.quantize, MIXED preset, fast bias correction) of the project's
    OpenVINO fp32 build, on the same calibration images (calibration.json's files).
Prints top-1, top-5, top-1 agreement with the fp32 build and images/s (batch 16, 2 threads, latency mode) for
both, with ONNX Runtime fp32/int8, OpenVINO fp32 and PyTorch eager as references, and the CPU flags.

--folds DIR: the peer with accuracy control, on the two folds of bench/int8_budget.py (run it first): for each fold
and variant, NNCF's quantize_with_accuracy_control of the OpenVINO fp32 build, with the same range images
(calibration.json's files), the same validation split and the same budget (top-1 agreement with fp32 on the split,
max_drop = 1 - split_min_agreement, absolute), beside NNCF's default quantize and the project's OpenVINO and ONNX
Runtime int8 builds of that fold: top-1 change and agreement with fp32 on the held-out half (both folds pooled),
build seconds, and images/s over the runtime's fp32 in one interleaved run per variant (fold 0's models).

usage: python bench/openvino_int8.py [--variant tf_efficientnet_lite0] [--workdir bench-out/sample]
       (runs the workflow on the sample in the workdir first if its metrics are missing; efficientnet_b0 runs
        with random weights: speed only)
       python bench/openvino_int8.py --folds bench-out/int8-budget [--variants tf_efficientnet_lite0 ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from _workflow import REPO, timing_args

sys.path.insert(0, str(REPO))
from effzoo import (
    runtime,  # noqa: E402
    speed,  # noqa: E402
)
from effzoo.cpu_target import cpu_flags  # noqa: E402
from effzoo.shard_io import iter_datalist_rows, iter_shards, read_datalist  # noqa: E402
from effzoo.steps import benchmark  # noqa: E402

MODES = ["fp32", "int8_max", "int8_percentile", "int8_kl_divergence", "ov_fp32", "ov_int8_max",
         "ov_int8_percentile", "ov_int8_kl_divergence"]


def run_workflow(work: Path, variant: str) -> None:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg.update(dataset="imagenet-sample-500", run_variants=[variant], run_quant=MODES)
    cfg["datasets"]["imagenet-sample-500"]["root"] = str(REPO.parent / "shared" / "imagenet-sample-500")
    if variant == "efficientnet_b0":
        cfg["variants"][variant]["weights"] = "random"
    cfg["benchmark"] = {"enabled": False}
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
                    str(work / "config.yaml"), "--cores", "2", f"metrics/{variant}.json"], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})


def nncf_model(work: Path, variant: str, out: Path) -> tuple[str, float]:
    """NNCF int8 IR of the OpenVINO fp32 build, calibrated on calibration.json's images; (path, seconds)."""
    try:
        import nncf
    except ImportError:
        raise SystemExit("NNCF is not a project dependency (the project's own int8 builds measured better): "
                         "pip install nncf==3.4.0 to run this comparison") from None
    import openvino as ov

    cal = json.loads((work / f"calib/{variant}/calibration.json").read_text())
    datalist = work / cal["source_datalist"]
    rows = {r[2]: i for i, r in enumerate(read_datalist(str(datalist)))}
    chosen = [rows[f] for f in cal["files"]]
    t0 = time.monotonic()
    data = nncf.Dataset([b for b, _ in iter_datalist_rows(str(datalist), chosen, 1)])
    model = ov.Core().read_model(str(work / f"vacc/{variant}-ov_fp32/model.xml"))
    q = nncf.quantize(model, data, preset=nncf.QuantizationPreset.MIXED, subset_size=len(chosen),
                      fast_bias_correction=True)
    ov.save_model(q, str(out), compress_to_fp16=False)
    return str(out), time.monotonic() - t0


def nncf_accuracy_control(fold: Path, variant: str, out: Path) -> tuple[str, float, float]:
    """NNCF quantize_with_accuracy_control of the fold's OpenVINO fp32 build: the fold's range images, its
    validation split with the fp32 top-1 as labels, top-1 agreement as the metric and max_drop = 1 - the split
    budget; (IR path, seconds, the budget)."""
    import nncf
    import openvino as ov

    cal = json.loads((fold / f"calib/{variant}/calibration.json").read_text())
    budget = json.loads((fold / f"vacc/{variant}-ov_int8_max_vnni/build.json").read_text())["options"].get(
        "split_min_agreement", 0.99)
    datalist = str(fold / cal["source_datalist"])
    rows = {r[2]: i for i, r in enumerate(read_datalist(datalist))}
    split = cal["validation"]
    t0 = time.monotonic()
    calibration = nncf.Dataset([b for b, _ in iter_datalist_rows(datalist, [rows[f] for f in cal["files"]], 1)])
    images = [b for b, _ in iter_datalist_rows(datalist, [rows[f] for f in split["files"]], 1)]
    validation = nncf.Dataset(list(zip(images, split["fp32_top1"])))

    def agreement(compiled, items):
        logits = compiled.output("logits")
        hits = [float(np.argmax(compiled(x)[logits]) == top) for x, top in items]
        return float(np.mean(hits)), hits

    model = ov.Core().read_model(str(fold / f"vacc/{variant}-ov_fp32/model.xml"))
    q = nncf.quantize_with_accuracy_control(model, calibration, validation, agreement, max_drop=1 - budget,
                                            drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.MIXED,
                                            subset_size=len(cal["files"]))
    ov.save_model(q, str(out), compress_to_fp16=False)
    return str(out), time.monotonic() - t0, budget


def nncf_default(fold: Path, variant: str, out: Path) -> tuple[str, float]:
    """NNCF's default quantize of the fold's OpenVINO fp32 build on the fold's range images."""
    import nncf
    import openvino as ov

    cal = json.loads((fold / f"calib/{variant}/calibration.json").read_text())
    datalist = str(fold / cal["source_datalist"])
    rows = {r[2]: i for i, r in enumerate(read_datalist(datalist))}
    t0 = time.monotonic()
    data = nncf.Dataset([b for b, _ in iter_datalist_rows(datalist, [rows[f] for f in cal["files"]], 1)])
    model = ov.Core().read_model(str(fold / f"vacc/{variant}-ov_fp32/model.xml"))
    q = nncf.quantize(model, data, preset=nncf.QuantizationPreset.MIXED, subset_size=len(cal["files"]),
                      fast_bias_correction=True)
    ov.save_model(q, str(out), compress_to_fp16=False)
    return str(out), time.monotonic() - t0


def held_out_shards(fold: Path, variant: str) -> list[str]:
    """The shards of the fold's evaluated (held-out) half at the variant's geometry."""
    cfg = yaml.safe_load((fold / "config.yaml").read_text())
    size = json.loads((fold / f"vacc/{variant}-fp32/build.json").read_text())["preprocess"]["input_size"][1]
    return sorted(str(p) for p in (fold / "npz" / cfg["dataset"]).glob(f"{size}-*/shard-*.npz"))


def folds_report(root: Path, variants: list[str], a) -> None:
    """The accuracy-control peer beside the project's int8 builds on bench/int8_budget.py's folds."""
    folds = [root / "fold0", root / "fold1"]
    flags = sorted(cpu_flags() & {"avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16"})
    print(f"CPU flags {flags}; held-out halves of imagenet-sample-500, both folds pooled; speed: fold 0's models, "
          f"batch {a.batch}, 2 threads, {a.rounds} interleaved rounds")
    for v in variants:
        models, build_s, budgets = {}, {}, set()
        for k, fold in enumerate(folds):
            path, secs, budget = nncf_accuracy_control(fold, v, fold / f"nncf-ac-{v}.xml")
            models.setdefault("nncf accuracy control", []).append(path)
            build_s.setdefault("nncf accuracy control", []).append(secs)
            budgets.add(budget)
            path, secs = nncf_default(fold, v, fold / f"nncf-{v}.xml")
            models.setdefault("nncf default", []).append(path)
            build_s.setdefault("nncf default", []).append(secs)
            for q in ("ov_fp32", "fp32", "ov_int8_percentile_vnni", "ov_int8_mse_vnni", "int8_percentile_vnni",
                      "int8_mse_vnni"):
                d = fold / f"vacc/{v}-{q}"
                if (d / "build.json").exists():
                    models.setdefault(q, []).append(str(d / ("model.xml" if (d / "model.xml").exists()
                                                             else "model.onnx")))
                    build_s.setdefault(q, []).append(json.loads((d / "build.json").read_text())["build_s"])
        acc = {}
        for name, paths in models.items():
            tops, labels = zip(*(evaluate(p, held_out_shards(f, v)) for p, f in zip(paths, folds)))
            acc[name] = (np.concatenate(tops), np.concatenate(labels))
        fp32 = {"onnxruntime": acc["fp32"][0][:, 0], "openvino": acc["ov_fp32"][0][:, 0]}
        runners = {n: runtime.open_build(p[0], 2)[0] for n, p in models.items()}
        size = json.loads((folds[0] / f"vacc/{v}-fp32/build.json").read_text())["preprocess"]["input_size"][1]
        x = np.random.default_rng(0).integers(0, 256, (a.batch, size, size, 3), dtype=np.uint8)
        res = speed.measure(runners, x, a.batch, a.iterations, 2, a.rounds)
        print(f"\n{v} (split budget {sorted(budgets)}): | build | top-1 change (pt) | agreement with its runtime's "
              f"fp32 | build s (fold 0, 1) | img/s | vs its runtime's fp32 |")
        for name, (top, labels) in acc.items():
            rt = "onnxruntime" if name in ("fp32", "int8_percentile_vnni", "int8_mse_vnni") else "openvino"
            ref = fp32[rt]
            ref_top1 = (ref == labels).mean()
            ips = res[name]["throughput_ips"]
            base = res["fp32" if rt == "onnxruntime" else "ov_fp32"]["throughput_ips"]
            print(f"| {name} | {100 * ((top[:, 0] == labels).mean() - ref_top1):+.1f} | "
                  f"{100 * (top[:, 0] == ref).mean():.1f}% of {len(ref)} | "
                  f"{', '.join(f'{s:.0f}' for s in build_s[name])} | {ips:.1f} | {ips / base:.2f}x |")


def evaluate(model: str, shards: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(top-5 ids, labels) over the shards."""
    run, _ = runtime.open_build(model, 2)
    tops, labels = [], []
    for images, lab, _ in iter_shards(shards, 32):
        probs = run(images)[1]
        tops.append(np.argsort(-probs, axis=1, kind="stable")[:, :5])
        labels.append(lab)
    return np.concatenate(tops), np.concatenate(labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    timing_args(ap)
    ap.add_argument("--workdir", default="bench-out/sample")
    ap.add_argument("--folds", help="bench/int8_budget.py's workdir: the accuracy-control comparison on its folds")
    ap.add_argument("--variants", nargs="+", default=["tf_efficientnet_lite0", "tf_efficientnet_lite1",
                                                       "tf_efficientnet_lite2"])
    a = ap.parse_args()
    if a.folds:
        folds_report((REPO / a.folds).resolve(), a.variants, a)
        return
    work = (REPO / a.workdir).resolve()
    if not (work / f"metrics/{a.variant}.json").exists():
        run_workflow(work, a.variant)
    nncf_path, nncf_s = nncf_model(work, a.variant, work / f"nncf-{a.variant}.xml")
    models = {q: str(work / f"vacc/{a.variant}-{q}" / ("model.xml" if q.startswith("ov_") else "model.onnx"))
              for q in MODES}
    models["nncf_int8 (OpenVINO)"] = nncf_path
    build = json.loads((work / f"vacc/{a.variant}-fp32/build.json").read_text())
    shards = sorted(str(p) for p in (work / "npz/imagenet-sample-500").glob(
        f"{build['preprocess']['input_size'][1]}-*/shard-*.npz"))
    acc = {q: evaluate(m, shards) for q, m in models.items()}
    ref = acc["fp32"][0][:, 0]
    runners = {"torch eager": benchmark.torch_runner(build["tag"], 2, build["preprocess"])[0]}
    runners.update({q: runtime.open_build(m, 2)[0] for q, m in models.items()})
    size = build["preprocess"]["input_size"][1]
    x = np.random.default_rng(0).integers(0, 256, (a.batch, size, size, 3), dtype=np.uint8)
    res = speed.measure(runners, x, a.batch, a.iterations, 2, a.rounds)
    base = res["torch eager"]["throughput_ips"]
    flags = sorted(cpu_flags() & {"avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16"})
    print(f"\n{a.variant} on imagenet-sample-500 ({len(ref)} images), batch {a.batch}, 2 threads, {a.rounds} "
          f"interleaved rounds; CPU flags {flags}; NNCF quantization took {nncf_s:.1f} s")
    print(f"{'build':26s} {'top-1':>6s} {'top-5':>6s} {'agree fp32':>10s} {'img/s':>7s} {'vs eager':>8s}")
    print(f"{'torch eager':26s} {'':>6s} {'':>6s} {'':>10s} {base:7.1f} {1:7.2f}x")
    for q in models:
        top, labels = acc[q]
        ips = res[q]["throughput_ips"]
        print(f"{q:26s} {(top[:, 0] == labels).mean():6.3f} {(top == labels[:, None]).any(1).mean():6.3f} "
              f"{(top[:, 0] == ref).mean():10.3f} {ips:7.1f} {ips / base:7.2f}x")


if __name__ == "__main__":
    main()
